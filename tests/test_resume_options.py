"""``train --resume``'s option check (imgcls.engine.resume.apply_resume_options): what a refusal
and a change say, numbers written as a person writes them."""

from __future__ import annotations

import pytest

from imgcls.api import make_run_config
from imgcls.engine.resume import apply_resume_options
from imgcls.errors import UserError


def test_a_refusal_writes_numbers_sensibly() -> None:
    """It said 'the run has 0.0007071067811865476' (the square-root scaled rate, raw)."""
    cfg = make_run_config(data="d", out="r", lr=0.5**0.5 / 1000, arch="lenet")
    with pytest.raises(UserError) as e:
        apply_resume_options(cfg, {"lr": 0.001, "arch": "resnet18"}, {})
    said = str(e.value)
    assert "--lr (the run has 0.0007071, given 0.001)" in said
    assert "--arch (the run has 'lenet', given 'resnet18')" in said  # names stay quoted
    # two rates that agree to four digits are shown with the digits that tell them apart
    with pytest.raises(UserError) as e:
        apply_resume_options(cfg, {"lr": 0.0007071}, {})
    assert "--lr (the run has 0.00070711, given 0.0007071)" in str(e.value)


def test_a_change_writes_numbers_sensibly() -> None:
    cfg = make_run_config(data="d", out="r", epochs=8)
    cfg.train.checkpoint_minutes = 10 / 3
    changes = apply_resume_options(cfg, {"epochs": 10, "checkpoint_minutes": 2.5}, {})
    assert changes == ["checkpoint-minutes 3.333 -> 2.5", "epochs 8 -> 10"]
