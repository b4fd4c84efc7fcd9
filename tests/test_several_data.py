"""``imgcls train --data A --data B``: several data specs as one table (classes by name, columns
joined, an image in two specs once, groups kept apart across specs), the start line's count per
spec, a labels file's crop boxes, and evaluate on the model's own specs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from imgcls.cli import main
from imgcls.data.sources import load_sources
from imgcls.data.splits import make_splits
from imgcls.errors import UserError
from imgfactory import class_image, image_folder


def _labels(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...] = ("path", "label")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _new_images(folder: Path, k: int, n: int, seed: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = folder / f"new_{k}_{i}.png"
        class_image(k, rng, (24, 24)).save(p)
        out.append(p)
    return out


def test_specs_are_one_table_with_classes_by_name_and_each_rows_spec(tmp_path: Path) -> None:
    old = image_folder(tmp_path / "old", ("cat", "dog"), 4, size=(24, 24))
    fox = _new_images(tmp_path / "pool", 2, 3)
    dog = _new_images(tmp_path / "pool", 1, 2, seed=6)
    labels = _labels(tmp_path / "labels.csv", [(str(p), "fox") for p in fox] + [(str(p), "dog") for p in dog])
    table = load_sources([str(old), str(labels)])
    assert table.class_names == ["cat", "dog", "fox"]  # the first spec's order, then the new class
    assert len(table) == 8 + 5
    assert [table.label_names(i)[0] for i in range(8, 13)] == ["fox"] * 3 + ["dog"] * 2
    assert table.origin_counts(np.arange(len(table))) == [(str(old), 8), (str(labels), 5)]
    assert table.origin_counts(np.arange(8, 10)) == [(str(old), 0), (str(labels), 2)]
    assert load_sources([str(old)]).origin is None  # one spec: read as before


def test_an_image_in_two_specs_counts_once_and_a_conflict_is_left_out(tmp_path: Path) -> None:
    old = image_folder(tmp_path / "old", ("cat", "dog"), 3, size=(24, 24))
    cat0, dog0 = sorted((old / "cat").iterdir())[0], sorted((old / "dog").iterdir())[0]
    labels = _labels(tmp_path / "labels.csv", [(str(cat0), "cat"), (str(dog0), "cat")])
    table = load_sources([str(old), str(labels)])
    assert len(table) == 6 - 1  # cat0 once; dog0 nowhere (labelled dog and cat)
    assert str(dog0.resolve()) not in table.paths
    why = dict(table.skipped)
    assert why[str(cat0.resolve())].startswith("listed again (first in ")
    assert why[str(dog0.resolve())] == f"labelled dog in {old} and cat in {labels}"


def test_groups_are_kept_apart_across_specs(tmp_path: Path) -> None:
    """A site in the old data and in the new labels is one group: never on both sides."""
    rows_a, rows_b = [], []
    rng = np.random.default_rng(0)
    for site in range(6):
        for k in range(2):
            for i in range(3):
                p = tmp_path / "img" / f"s{site}_{k}_{i}.png"
                p.parent.mkdir(exist_ok=True)
                class_image(k, rng, (16, 16)).save(p)
                (rows_a if i < 2 else rows_b).append((str(p), ["cat", "dog"][k], f"site{site}"))
    a = _labels(tmp_path / "a.csv", rows_a, ("path", "label", "location"))
    b = _labels(tmp_path / "b.csv", rows_b, ("path", "label", "location"))
    table = load_sources([str(a), str(b)])
    for seed in range(5):
        s = make_splits(table, val_split=0.3, split_by="auto", seed=seed)
        train_sites = {table.columns["location"][i] for i in s.train}
        val_sites = {table.columns["location"][i] for i in s.val}
        assert val_sites and not train_sites & val_sites
        assert {int(table.origin[i]) for i in s.val} == {0, 1}  # both specs on the validation side


def test_a_labels_file_names_crops_and_training_keeps_them(tmp_path: Path) -> None:
    from imgcls.data.sources.detections import crop_table, read_detections

    frame = tmp_path / "f.png"
    class_image(0, np.random.default_rng(0), (64, 64)).save(frame)
    labels = _labels(tmp_path / "labels.csv", [(str(frame), "cat", "accept", "0.1000 0.1000 0.3000 0.3000"),
                                               (str(frame), "dog", "relabel", "0.5 0.5 0.4 0.4"),
                                               (str(frame), "dog", "relabel", "1 2 x"),
                                               (str(frame), "dog", "relabel", "2 3 10 12")],
                     ("path", "label", "action", "box"))  # fmt: skip
    table = load_sources([str(labels)])
    assert len(table) == 2 and table.boxes is not None
    assert np.allclose(table.boxes, [[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.4, 0.4]])
    assert [why for p, why in table.skipped] == ["box '1 2 x' is not a crop box: x y w h, each a share of the "
                                                 "image (0 to 1)", "box '2 3 10 12' is not a crop box: x y w h, "
                                                 "each a share of the image (0 to 1)"]  # fmt: skip
    # a box column of something else in a plain manifest (pixel boxes, as many exports write) is metadata
    other = _labels(tmp_path / "px.csv", [(str(frame), "cat", "2 3 10 12")], ("path", "label", "box"))
    plain = load_sources([str(other)])
    assert plain.boxes is None and plain.columns["box"] == ["2 3 10 12"]
    # mostly crop boxes: a crop file, and the odd one out is skipped with the reason (not read as a whole image)
    mixed = _labels(tmp_path / "mixed.csv", [(str(frame), "cat", "0.1 0.1 0.3 0.3"), (str(frame), "dog", "0.5 0.5 0.4 0.4"),
                                             (str(frame), "dog", "2 3 10 12")], ("path", "label", "box"))  # fmt: skip
    table = load_sources([str(mixed)])
    assert table.boxes is not None and len(table) == 2 and "is not a crop box" in table.skipped[0][1]
    md = tmp_path / "md.json"
    md.write_text('{"images": [], "detection_categories": {"1": "animal"}}')
    cropped = crop_table(table, read_detections(md, None))  # the frame is not in md.json: its crops stay
    assert len(cropped) == 2 and np.allclose(cropped.boxes, table.boxes)


def test_idx_data_cannot_be_combined(tmp_path: Path) -> None:
    from imgcls.errors import UserError

    idx = tmp_path / "idx"
    idx.mkdir()
    import gzip
    import struct

    with gzip.open(idx / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 2, 4, 4) + bytes(32))
    with gzip.open(idx / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, 2) + bytes([0, 1]))
    other = image_folder(tmp_path / "old", ("cat", "dog"), 2, size=(16, 16))
    with pytest.raises(UserError, match="cannot be combined with other --data specs"):
        load_sources([str(idx), str(other)])


def test_train_on_two_specs_counts_each_and_evaluate_reads_both(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    old = image_folder(tmp_path / "old", ("cat", "dog"), 6, size=(24, 24))
    fox = _new_images(tmp_path / "pool", 2, 6)
    labels = _labels(tmp_path / "labels.csv", [(str(p), "fox") for p in fox])
    run = tmp_path / "run"
    assert main(["train", "--data", str(old), "--data", str(labels), "--arch", "lenet", "--epochs", "1",
                 "--image-size", "16", "--pretrained", "none", "--no-export-onnx", "--batch-size", "8",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(run)]) == 0  # fmt: skip
    out = capsys.readouterr()
    said = out.out + out.err
    start = next(line for line in said.splitlines() if line.startswith("data:"))
    assert "3 classes" in start and "fox (6)" in start
    counts = next(line for line in said.splitlines() if line.startswith("from "))
    assert f"{old}: 12" in counts and f"{labels}: 6" in counts
    assert "evaluate it: imgcls evaluate --model" in said and "--data" not in said.split("evaluate it:")[1]
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["more_data"] == [str(labels.resolve())]
    assert main(["evaluate", "--model", str(run / "model"), "--out", str(tmp_path / "rep")]) == 0
    import json

    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["num_images"] == len([1 for line in (run / "splits.csv").read_text().splitlines() if ",val" in line])
    assert metrics["num_images"] >= 3  # validation rows of both specs (fox is only in labels.csv)


def test_a_model_continued_on_new_labels_keeps_each_classes_row_by_name(tmp_path: Path) -> None:
    """--pretrained MODEL_DIR with the classes in another order and a new one: each class the
    model had keeps its classifier row (by name, not by position); the new class starts fresh."""
    import torch

    from imgcls.artifacts import save_model
    from imgcls.models.factory import build_model, preprocess_config

    torch.manual_seed(0)
    old, _ = build_model("lenet", num_classes=3)
    save_model(old, tmp_path / "m", label_names=["cat", "dog", "fox"], preprocess=preprocess_config(old),
               task={"name": "multiclass"}, provenance={})  # fmt: skip
    was = old.state_dict()
    head = next(k for k in was if k.endswith("weight") and was[k].shape[0] == 3)
    new, report = build_model("lenet", num_classes=4, pretrained=tmp_path / "m",
                              class_names=["fox", "cat", "badger", "dog"])  # fmt: skip
    now = new.state_dict()
    for i, r in ((0, 2), (1, 0), (3, 1)):
        assert torch.equal(now[head][i], was[head][r])
    assert not any(torch.equal(now[head][2], was[head][r]) for r in range(3))
    assert "matched by class name: 3 of 4" in report.describe()
    same, _ = build_model("lenet", num_classes=3, pretrained=tmp_path / "m", class_names=["cat", "dog", "fox"])
    assert torch.equal(same.state_dict()[head], was[head])


def test_data_options_given_twice_resume_and_the_api(tmp_path: Path) -> None:
    """A spec given twice is one line; --resume refuses a dropped spec; imgcls.train(data=) and a
    flat YAML list replace every spec of a config file."""
    import yaml

    from imgcls.api import make_run_config

    old = image_folder(tmp_path / "old", ("cat", "dog"), 4, size=(16, 16))
    labels = _labels(tmp_path / "labels.csv", [(str(p), "fox") for p in _new_images(tmp_path / "pool", 2, 3)])
    assert main(["train", "--data", str(old), "--data", f"{old}/", "--out", str(tmp_path / "x")]) == 2
    common = ["--arch", "lenet", "--epochs", "1", "--image-size", "16", "--pretrained", "none", "--no-export-onnx",
              "--batch-size", "8", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", "--data", str(old), "--data", str(labels), *common, "--out", str(run)]) == 0
    assert main(["train", "--data", str(old), *common, "--epochs", "2", "--out", str(run), "--resume"]) == 2
    assert main(["train", "--data", str(old), "--data", str(labels), *common, "--epochs", "2", "--out", str(run),
                 "--resume"]) == 0  # fmt: skip
    cfg = make_run_config(run / "config.yaml", data=str(labels))
    assert cfg.data.data == str(labels) and cfg.data.more_data == []
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump({"data": [str(old), str(labels)], "epochs": 1}))
    cfg = make_run_config(flat)
    assert cfg.data.data == str(old) and cfg.data.more_data == [str(labels)]
    both = tmp_path / "both.yaml"  # a list and more_data in one file: refused, not one of them dropped
    both.write_text(yaml.safe_dump({"data": [str(old)], "more_data": [str(labels)], "epochs": 1}))
    with pytest.raises(UserError, match="data is a list of specs and more_data is given too"):
        make_run_config(both)
    with pytest.raises(UserError, match="data is a list of specs and more_data is given too"):
        make_run_config(None, data=[str(old)], more_data=[str(labels)])
    assert make_run_config(both, data=[str(labels)]).data.more_data == []  # the API's data replaces both


def test_an_audits_retraining_hint_names_every_spec(tmp_path: Path) -> None:
    from imgcls.audit import data_args
    from imgcls.config import DataConfig

    a, b = image_folder(tmp_path / "a", ("cat",), 1, size=(8, 8)), tmp_path / "b.csv"
    b.write_text("path,label\n")
    args = data_args(DataConfig(data=str(a), more_data=[str(b)]))
    assert args == ["--data", str(a.resolve()), "--data", str(b.resolve())]


def test_a_binary_models_one_output_follows_its_positive_class(tmp_path: Path) -> None:
    """A binary model's single logit is the positive class's log-odds: kept for the same positive
    class, negated when the other class is positive now, fresh for other classes; a multi-class
    model sharing no class with the new data gives no rows by position."""
    import torch

    from imgcls.artifacts import save_model
    from imgcls.models.factory import build_model, preprocess_config

    torch.manual_seed(0)
    old, _ = build_model("lenet", num_classes=1)
    save_model(old, tmp_path / "m", label_names=["cat", "dog"], preprocess=preprocess_config(old),
               task={"name": "binary", "positive_class": "dog"}, provenance={})  # fmt: skip
    was = old.state_dict()
    head = [k for k in was if was[k].shape[:1] == (1,) and k.startswith(("fc", "classifier", "head"))] or [
        k for k in was if was[k].shape[0] == 1]  # fmt: skip
    same, _ = build_model("lenet", num_classes=1, pretrained=tmp_path / "m", class_names=["cat", "dog"])
    flipped, said = build_model("lenet", num_classes=1, pretrained=tmp_path / "m", class_names=["cat", "dog"],
                                positive="cat")  # fmt: skip
    other, _ = build_model("lenet", num_classes=1, pretrained=tmp_path / "m", class_names=["fox", "owl"])
    for k in head:
        assert torch.equal(same.state_dict()[k], was[k])
        assert torch.equal(flipped.state_dict()[k], -was[k])
        assert not torch.equal(other.state_dict()[k], was[k])
    assert "negated: cat is the positive class now" in said.describe()
    multi, _ = build_model("lenet", num_classes=3)
    save_model(multi, tmp_path / "k", label_names=["a", "b", "c"], preprocess=preprocess_config(multi),
               task={"name": "multiclass"}, provenance={})  # fmt: skip
    _, said = build_model("lenet", num_classes=3, pretrained=tmp_path / "k", class_names=["x", "y", "z"])
    assert "no class in common" in said.describe()
