"""``imgcls demo``: the whole path on the embedded digits, and the folder it owns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

import imgcls
from imgcls.artifacts import read_info
from imgcls.cli import main
from imgcls.demo import MARKER, claim_folder, run_demo
from imgfactory import image_folder


def test_demo_end_to_end_and_it_replaces_only_its_own_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    run_demo(out, epochs=2)
    captured = capsys.readouterr()
    printed, said = captured.out, captured.err
    for section in ("1. The architecture registry", "4. Train", "5. Evaluate", "6. Predict", "7. Export"):
        assert section in printed
    assert (out / MARKER).is_file()
    n_test = sum(1 for _ in (out / "digits" / "test").rglob("*.png"))
    n_train = sum(1 for _ in (out / "digits" / "train").rglob("*.png"))
    assert n_test + n_train == 1797 and 300 < n_test < 600
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_test and all(r["label"] in [str(d) for d in range(10)] for r in rows)
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["num_images"] == n_test and metrics["top1"] > 0.3  # two epochs: far above 1 in 10
    assert (out / "report" / "report.html").is_file() and (out / "digits.onnx").is_file()
    # a mirrored 2, 3, 5 or 7 is not that digit: the demo trains without flips and predicts without
    # test-time flip, and says what it trains with
    cfg = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert (cfg["data"]["augment"], cfg["train"]["tta"]) == ("shift", "none")
    assert read_info(out / "run" / "model").tta == "none"
    assert "augment shift;" in said and "flips on" not in said and "test-time flip" not in said
    assert "--augment shift" in printed
    # the next demo starts from an empty folder of its own
    claim_folder(out)
    assert [p.name for p in out.iterdir()] == [MARKER]


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    assert main(["demo", "--out", str(home)]) == 2
    err = capsys.readouterr().err
    assert "was not made by 'imgcls demo'" in err and len(err.strip().splitlines()) == 1
    assert (home / "thesis.tex").read_text() == "years of work"
    assert [p.name for p in home.iterdir()] == ["thesis.tex"]
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    assert main(["demo", "--out", str(afile)]) == 2
    assert "not a folder" in capsys.readouterr().err and afile.read_text() == "keep"


def test_the_start_line_names_the_flips_when_they_are_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image_folder(tmp_path / "d", ("a", "b"), 8, size=(28, 28), fmt="PNG")
    opts = dict(arch="lenet", pretrained="none", epochs=1, batch_size=8, cache_dir=tmp_path / "c", calibrate=False)
    imgcls.train(data, out=tmp_path / "small", **opts)  # small images: the default 'small' augmentation flips
    assert "augment small (horizontal flips on);" in capsys.readouterr().err
    imgcls.train(data, out=tmp_path / "shift", augment="shift", **opts)  # the same shifts, no flips
    err = capsys.readouterr().err
    assert "augment shift;" in err and "flips on" not in err
