"""Configuration: every option's range is checked before any work (imgcls.config)."""

from __future__ import annotations

import pytest

from imgcls.api import make_run_config
from imgcls.config import check_config, parse_duration
from imgcls.errors import UserError

BAD = {
    "epochs": 0, "batch_size": 0, "val_split": 1.0, "max_val": 0, "image_size": 4, "max_skipped": 1.5,
    "det_threshold": -0.1, "crop_margin": 3.0, "mixup": -1.0, "cutmix": -0.5, "workers": -1, "cache_max_gb": 0.0,
    "crop_pct": 0.1, "drop_rate": 1.0, "head_epochs": -1, "lr": 0.0, "weight_decay": -0.1, "momentum": 1.0,
    "warmup": 1.0, "backbone_lr_mult": -1.0, "clip_grad": 0.0, "accumulate": 0, "label_smoothing": 1.0,
    "ema": 1.0, "early_stopping": -1, "checkpoint_minutes": 0.0, "threads": 0, "binary_threshold": "always",
    "device": "tpu", "cache": "ssd", "interpolation": "lanczos3", "resize_mode": "stretch", "augment": "wild",
    "freeze": "head", "task": "regression", "precision": "int8", "balance": "oversample", "tta": "rotate",
}  # fmt: skip


@pytest.mark.parametrize("option", sorted(BAD))
def test_every_option_out_of_range_is_refused_naming_it(option: str) -> None:
    cfg = make_run_config(data="photos", **{option: BAD[option]})
    with pytest.raises(UserError, match=f"--{option.replace('_', '-')} must be"):
        check_config(cfg)


def test_good_values_pass() -> None:
    check_config(make_run_config(data="photos"))
    check_config(make_run_config(data="photos", device="cuda:1", binary_threshold="f1", crop_pct=0.9, mixup=0.2,
                                 interpolation="bicubic", time_budget="1h30m", cache="memory"))  # fmt: skip
    with pytest.raises(UserError, match="cannot read the duration"):
        check_config(make_run_config(data="photos", time_budget="soon"))
    assert parse_duration("2d") == 2 * 86400
