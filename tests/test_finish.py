"""After the last epoch (imgcls.engine.finish): what the closing lines say about the test-time
flip and the temperature, and what the model directory records."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import imgcls
from imgcls.engine.finish import calibration_lines, tta_line
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
