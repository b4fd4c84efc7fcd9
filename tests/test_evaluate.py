"""Evaluation: each metric against hand-computed values, and the report files for each task."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

import imgcls
from imgcls.cli import main
from imgcls.evaluate import (
    binary_metrics,
    evaluate,
    expected_calibration_error,
    multiclass_metrics,
    multilabel_metrics,
    reliability_bins,
)
from imgfactory import broken_files, image_folder

# four images, three classes; true classes 0, 1, 2, 2
PROBS = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.5, 0.1, 0.4], [0.1, 0.3, 0.6]])
Y = np.array([0, 1, 2, 2])


def test_multiclass_metrics_by_hand() -> None:
    m = multiclass_metrics(PROBS, Y, ["a", "b", "c"])
    assert m["top1"] == 0.75  # image 3 is predicted a
    assert m["top5"] == 1.0
    # recalls: a 1/1, b 1/1, c 1/2 -> balanced accuracy 2.5 / 3
    assert m["balanced_accuracy"] == pytest.approx(2.5 / 3)
    # precision a 1/2, b 1, c 1; recall a 1, b 1, c 1/2 -> F1 2/3, 1, 2/3
    assert [round(r["f1"], 4) for r in m["per_class"]] == [0.6667, 1.0, 0.6667]
    assert [r["support"] for r in m["per_class"]] == [1, 1, 2]
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((2 / 3 * 1 + 1 * 1 + 2 / 3 * 2) / 4)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    nll = -(math.log(0.7) + math.log(0.6) + math.log(0.4) + math.log(0.6)) / 4
    assert m["nll"] == pytest.approx(nll)
    assert m["log_likelihood"] == pytest.approx(-4 * nll)


def test_macro_f1_leaves_out_a_class_neither_in_the_labels_nor_predicted() -> None:
    """A review's new class with no test image counted as F1 0: macro_f1 0.8993 beside top1 0.9887."""
    four = np.concatenate([PROBS, np.zeros((4, 1))], axis=1)  # a fourth class, 'unclear': no image, never predicted
    m = multiclass_metrics(four, Y, ["a", "b", "c", "unclear"])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)  # as with three classes
    assert m["macro_f1_classes"] == 3 and m["per_class"][3] == {
        "class": "unclear", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0,
    }  # fmt: skip
    assert m["weighted_f1"] == pytest.approx((2 / 3 * 1 + 1 * 1 + 2 / 3 * 2) / 4)
    wrong = four.copy()
    wrong[3] = [0.1, 0.1, 0.1, 0.7]  # predicted without an image of it: a mistake, F1 0, counted
    m = multiclass_metrics(wrong, Y, ["a", "b", "c", "unclear"])
    assert m["macro_f1_classes"] == 4 and m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0 + 0) / 4)  # c missed too
    only = binary_metrics(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([0, 0]), ["blank", "animal"], 1, 0.5)
    assert only["macro_f1"] == 1.0 and only["macro_f1_classes"] == 1  # no animal there, none predicted
    y = np.array([[1, 0, 0], [0, 1, 0]])
    labels = multilabel_metrics(np.array([[0.9, 0.1, 0.1], [0.2, 0.8, 0.1]]), y, ["sky", "tree", "snow"], [0.5] * 3)
    assert labels["macro_f1"] == 1.0 and labels["macro_f1_classes"] == 2


def test_expected_calibration_error_by_hand() -> None:
    conf = np.array([0.7, 0.6, 0.5, 0.6])
    correct = np.array([1, 1, 0, 1])
    # 15 bins of width 1/15: 0.5 -> bin 7, 0.6 -> bin 8 (two images), 0.7 -> bin 10
    # |0 - .5| * 1/4 + |1 - .6| * 2/4 + |1 - .7| * 1/4 = .125 + .2 + .075
    assert expected_calibration_error(conf, correct) == pytest.approx(0.4)
    bins = reliability_bins(conf, correct)
    assert sum(b["count"] for b in bins) == 4
    assert next(b for b in bins if b["count"] == 2)["accuracy"] == 1.0
    assert multiclass_metrics(PROBS, Y, ["a", "b", "c"])["ece"] == pytest.approx(0.4)


def test_binary_metrics_by_hand() -> None:
    # class 1 is positive; p(positive) 0.9, 0.4, 0.6, 0.2 for truths 1, 1, 0, 0
    p = np.array([0.9, 0.4, 0.6, 0.2])
    probs = np.stack([1 - p, p], axis=1)
    y = np.array([1, 1, 0, 0])
    m = binary_metrics(probs, y, ["blank", "animal"], positive=1, threshold=0.5)
    assert m["accuracy"] == m["top1"] == 0.5
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    # pairs (pos, neg): (.9,.6) (.9,.2) (.4,.6) (.4,.2): 3 of 4 ranked right
    assert m["roc_auc"] == pytest.approx(0.75)
    # ranking .9(+) .6(-) .4(+) .2(-): AP = 1 * 1/2 + 2/3 * 1/2
    assert m["average_precision"] == pytest.approx(0.5 + 1 / 3)
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    low = binary_metrics(probs, y, ["blank", "animal"], positive=1, threshold=0.3)
    assert low["recall"] == 1.0  # a lower threshold keeps every animal


def test_multilabel_metrics_by_hand() -> None:
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.8], [0.4, 0.3]])
    y = np.array([[1, 0], [1, 1], [0, 1], [1, 0]])
    m = multilabel_metrics(probs, y, ["sky", "tree"], [0.5, 0.5])
    # predictions [1,0] [1,1] [0,1] [0,0]: one miss (image 4, sky)
    assert m["subset_accuracy"] == 0.75
    assert m["hamming_loss"] == pytest.approx(1 / 8)
    # sky: tp 2 fn 1 fp 0 -> F1 .8; tree: tp 2 -> F1 1; micro: tp 4, fp 0, fn 1 -> 8/9
    assert m["macro_f1"] == pytest.approx(0.9)
    assert m["micro_f1"] == pytest.approx(8 / 9)
    # sky AP: ranking .9+ .6+ .4+ .1- = 1; tree AP: .8+ .7+ .3- .2- = 1
    assert m["mAP"] == pytest.approx(1.0)
    assert [r["average_precision"] for r in m["per_class"]] == [1.0, 1.0]


def test_evaluate_writes_the_report_and_agrees_with_predict(trained: dict, tmp_path: Path) -> None:
    data = image_folder(tmp_path / "d", ("cat", "dog", "fox"), 6, seed=5)
    broken_files(data / "dog")
    out = tmp_path / "report"
    assert main(["evaluate", "--model", str(trained["model"]), "--data", str(data), "--out", str(out)]) == 0
    for f in (
        "metrics.json",
        "per_class.csv",
        "report.html",
        "confusion_matrix.png",
        "reliability.png",
        "predictions.csv",
        "skipped.csv",
        "curves.png",
    ):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    for key in (
        "top1",
        "top5",
        "nll",
        "ece",
        "balanced_accuracy",
        "macro_f1",
        "per_class",
        "confusion_matrix",
        "num_images",
        "num_skipped",
    ):
        assert key in m
    assert m["num_images"] == 18 and m["num_skipped"] == 6
    preds = tmp_path / "p.csv"
    assert main(["predict", "--model", str(trained["model"]), str(data), "--out", str(preds)]) == 0
    with open(preds, newline="") as f:
        rows = [r for r in csv.DictReader(f) if not r["error"]]
    accuracy = np.mean([Path(r["path"]).parent.name == r["label"] for r in rows])
    assert m["top1"] == pytest.approx(accuracy)
    html = (out / "report.html").read_text()
    assert "Confusion matrix" in html and "data:image/png;base64," in html and "truncated.jpg" in html
    assert "http://" not in html and "https://" not in html  # self-contained


def test_evaluate_defaults_to_the_runs_validation_split(trained: dict) -> None:
    r = evaluate(trained["model"])
    with open(trained["run"] / "splits.csv", newline="") as f:
        val = {row["path"] for row in csv.DictReader(f) if row["split"] == "val"}
    assert r.split == "val" and set(r.paths) == val


def test_binary_and_multilabel_reports(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "b", ("animal", "blank"), 10)
    run = imgcls.train(
        data,
        out=tmp_path / "rb",
        epochs=3,
        arch="lenet",
        image_size=32,
        batch_size=8,
        pretrained="none",
        positive="animal",
        cache_dir=tmp_path / "c",
    )
    r = evaluate(run / "model", data, split="all", out=tmp_path / "eb")
    m, pos = r.metrics, r.label_names.index("animal")
    p, y = r.probs[:, pos], r.targets == pos
    pred = p >= m["threshold"]
    tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
    assert m["positive_class"] == "animal" and m["threshold"] == 0.5
    assert m["precision"] == pytest.approx(tp / max(tp + fp, 1)) and m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["accuracy"] == pytest.approx(((pred == y).sum()) / len(y))
    # ROC-AUC: the chance that a random positive scores above a random negative (ties count half)
    pairs = p[y][:, None] - p[~y][None, :]
    assert m["roc_auc"] == pytest.approx(float((pairs > 0).mean() + 0.5 * (pairs == 0).mean()))
    assert 0 < m["average_precision"] <= 1 and m["num_images"] == 20
    assert (tmp_path / "eb" / "roc_pr.png").is_file()
    image_folder(tmp_path / "m", ("a", "b"), 8)
    lines = ["path,label"] + [
        f"m/{f.parent.name}/{f.name},{'sky;sea' if f.parent.name == 'a' else 'sea'}"
        for f in sorted((tmp_path / "m").rglob("*.jpg"))
    ]
    (tmp_path / "m.csv").write_text("\n".join(lines))
    run = imgcls.train(
        tmp_path / "m.csv",
        out=tmp_path / "rm",
        epochs=2,
        arch="lenet",
        image_size=32,
        batch_size=8,
        pretrained="none",
        cache_dir=tmp_path / "c",
    )
    r = evaluate(run / "model", tmp_path / "m.csv", split="all", out=tmp_path / "em")
    m = r.metrics
    assert r.label_names == ["sea", "sky"] and r.targets.shape == (16, 2)
    assert r.targets[:, 0].all() and r.targets[:, 1].sum() == 8  # every row has sea, half have sky
    th = np.array([c["threshold"] for c in m["per_class"]])
    pred = r.probs >= th
    assert m["subset_accuracy"] == pytest.approx((pred == r.targets).all(1).mean())
    assert m["hamming_loss"] == pytest.approx((pred != r.targets).mean())
    tp = (pred & (r.targets == 1)).sum()
    assert m["micro_f1"] == pytest.approx(2 * tp / (pred.sum() + r.targets.sum()))
    from sklearn.metrics import average_precision_score

    # 'sea' is on every image: its AP is 1 whatever the scores; the mean is over both labels
    assert m["per_class"][0]["average_precision"] == pytest.approx(1.0)
    ap_sky = average_precision_score(r.targets[:, 1], r.probs[:, 1])
    assert m["mAP"] == pytest.approx((1.0 + ap_sky) / 2)
    assert (tmp_path / "em" / "report.html").is_file()


def test_idx_test_split_and_onnx_model(tmp_path: Path) -> None:
    from imgfactory import idx_dataset

    data = idx_dataset(tmp_path / "idx", 60, 30)
    run = imgcls.train(
        data,
        out=tmp_path / "run",
        epochs=2,
        arch="lenet",
        batch_size=8,
        pretrained="none",
        cache_dir=tmp_path / "c",
    )
    a = evaluate(run / "model", data, split="test", precision="fp32")
    assert a.split == "test" and a.metrics["num_images"] == 30 and not a.selection_split
    assert main(["export", "--model", str(run / "model"), "--out", str(tmp_path / "m.onnx")]) == 0
    b = evaluate(tmp_path / "m.onnx", data, split="test")
    assert b.metrics["top1"] == a.metrics["top1"]
    assert b.metrics["nll"] == pytest.approx(a.metrics["nll"], abs=1e-4)


def test_evaluate_errors(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained["model"]),
                "--data",
                str(trained["data"]),
                "--split",
                "test",
            ]
        )
        == 2
    )
    assert "no 'test' split" in capsys.readouterr().err
    other = image_folder(tmp_path / "o", ("zebra", "yak"), 2)
    assert main(["evaluate", "--model", str(trained["model"]), "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert "none of the data's classes (yak, zebra) is one of the model's (cat, dog, fox)" in err


def test_evaluate_without_out_on_a_copied_run_writes_beside_the_copy(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model's config names the run it was trained in; a copy of the run is its own."""
    import shutil

    def listing(folder: Path) -> dict[str, int]:
        return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}

    copy = Path(shutil.copytree(trained["run"], tmp_path / "copy"))
    shutil.rmtree(copy / "eval-val", ignore_errors=True)
    before = listing(trained["run"])
    assert main(["evaluate", "--model", str(copy / "model")]) == 0
    assert f"report: {copy / 'eval-val' / 'report.html'}" in capsys.readouterr().out
    assert (copy / "eval-val" / "metrics.json").is_file() and listing(trained["run"]) == before
    assert main(["evaluate", "--model", str(copy / "model" / "model.onnx")]) == 0  # the file: its run too
    assert f"report: {copy / 'eval-val' / 'report.html'}" in capsys.readouterr().out


def test_skipped_and_left_out_are_said_alike_in_the_report_and_on_the_command_line(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row listed twice is left out on purpose, a broken file is not usable: the report card
    and the command's line count them the same way."""
    files = sorted((trained["data"] / "cat").glob("*.jpg"))[:3]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    rows = [f"{f},cat" for f in files] + [f"{files[0]},cat", f"{broken},cat"]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "report"
    argv = ["evaluate", "--model", str(trained["model"]), "--data", str(tmp_path / "m.csv"), "--split", "all"]
    assert main([*argv, "--out", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    said = "2 skipped (1 left out on purpose: no detection, rejected in a review, or listed twice)"
    assert line.endswith(said), line
    assert said in (out / "report.html").read_text()
    m = json.loads((out / "metrics.json").read_text())
    assert (m["num_images"], m["num_skipped"], m["num_left_out"]) == (3, 2, 1)
