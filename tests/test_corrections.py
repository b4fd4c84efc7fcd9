"""``--corrections``: a review's decisions applied to the data (imgcls.data.corrections), and a
corrections file read as a manifest."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from imgcls.cli import main
from imgcls.data.corrections import apply_corrections, parse_box
from imgcls.data.sources import load_source
from imgcls.errors import UserError
from imgfactory import idx_dataset, image_folder


def write(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_relabel_reject_accept_and_new_classes(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data", ("cat", "dog"), 4)
    table = load_source(str(data))
    cat0, cat1, dog0, dog1 = (str(data / c / f"{c}_{i:03d}.jpg") for c in ("cat", "dog") for i in (0, 1))
    fixes = write(tmp_path / "c.csv", [
        ["path", "label", "action"],
        ["data/cat/cat_000.jpg", "dog", "relabel"],  # relative to the file's folder
        [cat1, "cat", "reject"],
        [dog0, "fox", "relabel"],  # a class the data did not have
        [dog0, "dog", "accept"],  # ... then taken back: the last decision counts
        [dog1, "dog", "reject"],
        [str(tmp_path / "elsewhere.jpg"), "dog", "accept"],
    ])  # fmt: skip
    fixed, done = apply_corrections(table, fixes)
    labels = {p: fixed.label_names(i)[0] for i, p in enumerate(fixed.paths)}
    assert labels[cat0] == "dog" and labels[dog0] == "dog"
    assert cat1 not in labels and dog1 not in labels and len(fixed) == len(table) - 2
    assert {p for p, why in fixed.skipped if "left out by the review" in why} == {cat1, dog1}
    assert (done.relabelled, done.rejected, done.accepted, len(done.unknown)) == (1, 2, 1, 1)
    assert done.describe() == "1 relabelled, 2 left out, 1 confirmed; 1 of its images are not in the data"
    fixes = write(tmp_path / "d.csv", [["path", "label", "action"], [cat0, "fox", "relabel"]])
    fixed, _ = apply_corrections(table, fixes)
    assert fixed.class_names == ["cat", "dog", "fox"] and fixed.label_names(fixed.paths.index(cat0)) == ["fox"]
    # a row added by hand with its label and no action is a relabel, as training reads it; any case
    fixes = write(tmp_path / "e.csv", [["path", "label", "action"], [cat0, "fox", ""], [dog0, "", "Reject"]])
    fixed, done = apply_corrections(table, fixes)
    assert fixed.label_names(fixed.paths.index(cat0)) == ["fox"] and dog0 not in fixed.paths
    assert (done.relabelled, done.rejected) == (1, 1)


def test_crops_of_one_image_are_corrected_one_by_one(tmp_path: Path) -> None:
    from dataclasses import replace

    data = image_folder(tmp_path / "data", ("cat", "dog"), 1)
    one = load_source(str(data))
    table = replace(one.subset([0, 0, 1]), boxes=np.array([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3], [np.nan] * 4]))
    cat = table.paths[0]
    fixed, done = apply_corrections(table, write(tmp_path / "c.csv", [
        ["path", "label", "action", "box"], [cat, "dog", "relabel", "0.5 0.5 0.3 0.3"],
    ]))  # fmt: skip
    assert [fixed.label_names(i)[0] for i in range(3)] == ["cat", "dog", "dog"] and done.relabelled == 1
    fixed, done = apply_corrections(
        table, write(tmp_path / "d.csv", [["path", "label", "action"], [cat, "", "reject"]])
    )
    assert len(fixed) == 1 and done.rejected == 2  # no box: every crop of the image
    assert parse_box("[0.5, 0.5, 0.3, 0.3]") == "0.5000 0.5000 0.3000 0.3000" and parse_box("a b") == "?"


def test_the_last_decision_counts_across_crops_and_the_whole_image(tmp_path: Path) -> None:
    """A crop decided after its whole image, and the whole image after a crop: the later one
    counts (the rows were applied in first-insertion order, and a reject was never undone)."""
    from dataclasses import replace

    data = image_folder(tmp_path / "data", ("cat", "dog"), 1)
    one = load_source(str(data))
    table = replace(one.subset([0, 0]), boxes=np.array([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3]]))
    cat, a = table.paths[0], "0.1 0.1 0.2 0.2"
    header = ["path", "label", "action", "box"]
    # a crop relabelled, the whole image rejected, then that crop accepted again: the crop stays
    fixed, done = apply_corrections(table, write(tmp_path / "c.csv", [
        header, [cat, "dog", "relabel", a], [cat, "", "reject", ""], [cat, "cat", "accept", a],
    ]))  # fmt: skip
    assert len(fixed) == 1 and fixed.label_names(0) == ["cat"] and (done.rejected, done.accepted) == (1, 1)
    # a crop relabelled after the whole image was relabelled: the crop's label
    fixed, _ = apply_corrections(table, write(tmp_path / "d.csv", [
        header, [cat, "fox", "relabel", a], [cat, "dog", "relabel", ""], [cat, "fox", "relabel", a],
    ]))  # fmt: skip
    assert [fixed.label_names(i)[0] for i in range(2)] == ["fox", "dog"]
    # the whole image rejected after a crop was relabelled: every crop is out
    fixed, done = apply_corrections(table, write(tmp_path / "e.csv", [
        header, [cat, "dog", "relabel", a], [cat, "", "reject", ""],
    ]))  # fmt: skip
    assert len(fixed) == 0 and done.rejected == 2


def test_accepting_a_models_guess_gives_the_image_that_label(tmp_path: Path) -> None:
    """An accepted prediction row confirms the model's label (the one the page showed), so an
    image the data files under another class takes it; an accept of the data's own label changes nothing."""
    data = image_folder(tmp_path / "data", ("cat", "dog"), 2)
    table = load_source(str(data))
    cat0, cat1 = (str(data / "cat" / f"cat_{i:03d}.jpg") for i in (0, 1))
    fixed, done = apply_corrections(table, write(tmp_path / "c.csv", [
        ["path", "label", "action"], [cat0, "dog", "accept"], [cat1, "cat", "accept"],
    ]))  # fmt: skip
    labels = {p: fixed.label_names(i)[0] for i, p in enumerate(fixed.paths)}
    assert labels[cat0] == "dog" and labels[cat1] == "cat" and (done.relabelled, done.accepted) == (1, 1)


def test_images_inside_a_data_file_are_named_by_their_id(tmp_path: Path) -> None:
    table = load_source(str(idx_dataset(tmp_path / "idx", n_train=9, n_test=3)))
    first = table.paths[0]
    assert "#" in first
    fixed, done = apply_corrections(
        table, write(tmp_path / "c.csv", [["path", "label", "action"], [first, "", "reject"]])
    )
    assert done.rejected == 1 and first not in fixed.paths and len(fixed) == len(table) - 1


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["path", "label"], ["a.jpg", "cat"]], "needs 'path', 'label' and 'action' columns"),
        ([["path", "label", "action"], ["a.jpg", "cat", "delete"]], "line 2: unknown action 'delete'"),
        ([["path", "label", "action"], ["a.jpg", "", "relabel"]], "line 2: relabel with no label"),
        ([["path", "label", "action"], ["a.jpg", "", ""]], "line 2: no label and no action"),
        ([["path", "label", "action", "box"], ["a.jpg", "", "reject", "1 2"]], "is not four numbers"),
        ([["path", "label", "action"], ["data/cat/cat_000.jpg", "cat;dog", "relabel"]], "several labels for one image"),
    ],
)
def test_a_bad_corrections_file_is_one_line(tmp_path: Path, rows: list[list[str]], message: str) -> None:
    table = load_source(str(image_folder(tmp_path / "data", ("cat", "dog"), 1)))
    with pytest.raises(UserError, match=message):
        apply_corrections(table, write(tmp_path / "c.csv", rows))
    with pytest.raises(UserError, match="corrections file not found"):
        apply_corrections(table, tmp_path / "missing.csv")


def test_a_corrections_file_is_a_manifest_of_the_reviewed_images(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data", ("cat", "dog"), 2)
    fixes = write(tmp_path / "c.csv", [
        ["path", "label", "action"],
        ["data/cat/cat_000.jpg", "cat", "accept"],
        ["data/cat/cat_001.jpg", "dog", "relabel"],
        ["data/dog/dog_000.jpg", "dog", "reject"],
    ])  # fmt: skip
    table = load_source(str(fixes))
    assert [Path(p).name for p in table.paths] == ["cat_000.jpg", "cat_001.jpg"]
    assert [table.label_names(i)[0] for i in range(2)] == ["cat", "dog"] and "action" not in table.columns
    assert table.skipped == [(str((data / "dog" / "dog_000.jpg").resolve()), "left out by the review (c.csv)")]


def test_training_applies_the_corrections_and_keeps_them_in_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = image_folder(tmp_path / "data", ("cat", "dog"), 6)
    cat = sorted((data / "cat").iterdir())
    fixes = write(tmp_path / "corrections.csv", [
        ["path", "label", "action"], [str(cat[0]), "dog", "relabel"], [str(cat[1]), "cat", "reject"],
        [str(cat[2]), "cat", "accept"],
    ])  # fmt: skip
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), "--arch", "lenet", "--pretrained", "none", "--epochs", "1",
            "--image-size", "32", "--batch-size", "4", "--corrections", str(fixes), "--no-export-onnx",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().err
    assert "corrections: 1 relabelled, 1 left out, 1 confirmed" in said and "cat (4), dog (7)" in said
    assert "skipped 1 left out by the review" in said
    assert (out / "corrections.csv").read_text() == fixes.read_text()
    with open(out / "splits.csv", newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert cat[1].name not in rows and len(rows) == 11
    with open(out / "skipped.csv", newline="") as f:
        skipped = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert "left out by the review" in skipped[cat[1].name]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["provenance"]["corrections"] == str(fixes)
    report = tmp_path / "report"  # the run evaluated on its own data: with the labels it was trained with
    assert main(["evaluate", "--model", str(out / "model"), "--split", "all", "--out", str(report)]) == 0
    said = capsys.readouterr()
    assert "corrections: 1 relabelled, 1 left out, 1 confirmed" in said.err and re.search(
        r"on 11 images \(all\) by \w+ fp32, 1 skipped", said.out
    )
    with open(report / "predictions.csv", newline="") as f:
        truth = {Path(r["path"]).name: r["true"] for r in csv.DictReader(f)}
    assert truth[cat[0].name] == "dog" and cat[1].name not in truth
    assert main(["evaluate", "--model", str(out / "model"), "--data", str(data), "--split", "all",
                 "--out", str(tmp_path / "as-given")]) == 0  # fmt: skip
    assert re.search(r"on 12 images \(all\) by \w+ fp32, 0 skipped", capsys.readouterr().out)
