"""After the last epoch (imgcls.engine.finish): what the closing lines say about the test-time
flip and the temperature, and what the model directory records."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import imgcls
from imgcls.engine.finish import calibration_lines, chance_line, near_chance, tta_line
from imgcls.engine.fit import describe_best
from imgcls.tasks import TemperatureFit
from imgfactory import image_folder


def test_a_tta_tie_says_why_it_is_kept_or_left_off() -> None:
    tied = {"none": {"val_top1": 0.9, "val_nll": 0.31}, "flip": {"val_top1": 0.9, "val_nll": 0.27}}
    line = tta_line("val_top1", tied, "flip", 40)
    assert line == (
        "test-time flip: kept: val_top1 0.9000 either way on 40 images, and the NLL is lower with it "
        "(0.2700 against 0.3100); predict looks at each image twice"
    )
    worse = {"none": {"val_top1": 0.9, "val_nll": 0.27}, "flip": {"val_top1": 0.9, "val_nll": 0.31}}
    assert tta_line("val_top1", worse, "none", 40) == (
        "test-time flip: left off: val_top1 0.9000 either way on 40 images, and the NLL is not lower with it "
        "(0.3100 against 0.2700)"
    )
    better = {"none": {"val_top1": 0.9, "val_nll": 0.3}, "flip": {"val_top1": 0.925, "val_nll": 0.3}}
    assert tta_line("val_top1", better, "flip", 40) == (
        "test-time flip: kept (val_top1 0.9250 with it, 0.9000 without, on 40 images)"
    )
    # figures that differ past the fourth decimal are shown with the digits that tell them apart
    close = {"none": {"val_mAP": 0.912301, "val_nll": 0.3}, "flip": {"val_mAP": 0.912344, "val_nll": 0.3}}
    assert "val_mAP 0.912344 with it, 0.912301 without" in tta_line("val_mAP", close, "flip", 40)


def test_the_best_line_names_which_val_top1_is_with_the_flip() -> None:
    """The epoch line said val_top1 0.9779 and the closing line 0.9815 for the same model."""
    tr = SimpleNamespace(
        pos=SimpleNamespace(best={"epoch": 15, "metric": "val_top1", "value": 0.9779}, total_steps=150),
        steps_per_epoch=10, tta="flip", task=SimpleNamespace(temperature=0.424),
    )  # fmt: skip
    line = describe_best(tr, {"val_top1": 0.9815, "val_nll": 0.0546})  # type: ignore[arg-type]
    assert line == (
        "epoch 15 of 15, val_top1 0.9815, val_nll 0.0546 (with test-time flip, temperature 0.424; "
        "val_top1 0.9779 without the flip, as on epoch 15's line)"
    )
    tr.tta = "none"
    assert describe_best(tr, {"val_top1": 0.9779, "val_nll": 0.06}) == (  # type: ignore[arg-type]
        "epoch 15 of 15, val_top1 0.9779, val_nll 0.0600 (temperature 0.424)"
    )


def test_an_untrusted_temperature_is_said() -> None:
    fit = TemperatureFit(0.1, 72, 50, (0.1, 0.1), True)
    lines = calibration_lines(fit, 2.3026, 2.2975)
    assert lines[0] == "calibration: temperature 0.100 fitted on 72 validation images (NLL 2.3026 -> 2.2975)"
    assert lines[1].startswith("calibration: warning: not to be trusted: the fit reached the lowest temperature")
    assert "only 72 validation images" in lines[1] and len(lines) == 2
    good = TemperatureFit(0.42, 5000, 300, (0.4, 0.44), False)
    assert calibration_lines(good, 0.2, 0.1) == [
        "calibration: temperature 0.420 fitted on 5000 validation images (NLL 0.2000 -> 0.1000)"
    ]


def test_a_wide_interval_rests_on_few_mistakes_only_where_they_are_few() -> None:
    """The new-user's budget run c: 'with 236 of 271 validation images wrong: the fit rests on few
    mistakes'."""
    (few,) = TemperatureFit(0.408, 271, 1, (0.244, 0.682), False).notes
    assert few == (
        "its 95% interval is 0.244 to 0.682 (all of it below 1: the network is too timid), with 1 of 271 "
        "validation images wrong: the fit rests on few mistakes, so its size is uncertain"
    )
    (many,) = TemperatureFit(2.5, 271, 236, (1.25, 8.0), False).notes
    assert many == (
        "its 95% interval is 1.25 to 8 (all of it above 1: the network is too sure), with 236 of 271 validation "
        "images wrong: the validation images fix its size only loosely"
    )
    assert "few mistakes" in TemperatureFit(1.5, 300, 30, (1.0, 2.5), False).notes[0]  # a tenth: still few
    assert "few mistakes" not in TemperatureFit(1.5, 300, 31, (1.0, 2.5), False).notes[0]


def test_a_model_no_better_than_always_guessing_the_commonest_class_is_at_chance() -> None:
    """The new-user walk-through's budget runs b and c: val_top1 0.1033 and 0.1292 on the
    digits' 271 validation images (29 of the commonest class) ended on an ordinary 'best:' line."""
    names = [str(k) for k in range(10)]
    digits = np.array([0] * 29 + [k for k in range(1, 10) for _ in range(27)][:-1])  # 271 images
    for top1 in (0.1033, 0.1292, 0.19):
        c = near_chance(top1, digits, names)
        assert c is not None and c.chance == pytest.approx(29 / 271) and c.commonest == "0" and c.images == 271
    assert near_chance(0.2, digits, names) is None and near_chance(0.9668, digits, names) is None
    # the margin: a tenth of the guess's mistakes, or two standard errors of its top-1 on few images
    c = near_chance(0.1292, digits, names)
    assert c is not None and c.margin == pytest.approx(0.1 * (1 - 29 / 271))
    few = np.array([0, 1] * 10)  # 20 images, balanced: 0.5 +- 2 x 0.112
    assert near_chance(0.7, few, ["a", "b"]) is not None and near_chance(0.75, few, ["a", "b"]) is None
    skewed = np.array([0] * 950 + [1] * 50)  # the commonest class alone gives 0.95
    assert near_chance(0.95, skewed, ["a", "b"]) is not None and near_chance(0.97, skewed, ["a", "b"]) is None
    budgeted = chance_line(c, budget="30s", epochs=1.0, lr=7.07e-4)
    assert budgeted == (
        "warning: val_top1 0.1292 is at chance: always guessing '0' scores 0.1070 on these 271 validation "
        "images, a model that learned something 0.1963 or more; the 30s budget trained 1 epoch on this "
        "machine, too few: give it a longer --time-budget"
    )
    assert "the 30s budget trained 0.4 epochs on" in chance_line(c, budget="30s", epochs=0.36, lr=7.07e-4)
    assert chance_line(c, budget=None, epochs=2.0, lr=1e-7).endswith(
        "; 2 epochs at lr 1.00e-07 taught it too little: train more epochs (--epochs) or check the learning rate (--lr)"
    )


def test_a_near_chance_run_warns_and_records_its_calibration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A network that has barely moved from its initial weights, 30 validation images."""
    data = image_folder(tmp_path / "d", ("a", "b", "c"), 20, size=(32, 32), fmt="PNG")
    run = imgcls.train(data, out=tmp_path / "run", arch="lenet", pretrained="none", epochs=1, batch_size=8, lr=1e-7,
                       val_split=0.5, augment="none", cache_dir=tmp_path / "c", seed=0)  # fmt: skip
    err = capsys.readouterr().err
    assert "calibration: warning: not to be trusted:" in err and "only 30 validation images" in err
    saved = json.loads((run / "model" / "config.json").read_text())
    record = saved["calibration"]
    assert record["images"] == 30 and record["trusted"] is False and record["range"] == [0.1, 10.0]
    assert 0.1 <= saved.get("temperature", 1.0) <= 10.0
    warned = [x for x in err.splitlines() if x.startswith("warning: val_top1 ")]
    assert len(warned) == 1 and "is at chance" in warned[0] and "1 epoch at lr 1.00e-07" in warned[0], err
    chance = saved["provenance"]["near_chance"]  # the model directory records it
    assert chance["warning"] == warned[0] and chance["images"] == 30 and chance["chance"] == pytest.approx(1 / 3, 0.2)
