"""The audit's folds are grouped by training's own rule (imgcls.data.splits.group_keys): no site,
burst or picture — the detection crops of one image — in two folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgcls.audit.labels import OutOfSample, fold_of
from imgcls.data.splits import group_keys, make_splits
from imgcls.data.table import DataTable
from imgcls.errors import UserError


def crops_table(images: int = 40, locations: int = 0, sequences: int = 0) -> DataTable:
    """Two detection crops per image (one row each, the image's path twice), classes alternating
    per image; optionally ``locations`` sites and ``sequences`` bursts, assigned image by image."""
    paths = [f"/data/img{i:03d}.jpg" for i in range(images) for _ in range(2)]
    columns = {"image": list(paths)}
    if locations:
        columns["location"] = [f"site{(i // 2) % locations}" for i in range(len(paths))]
    if sequences:
        columns["sequence"] = [f"seq{(i // 2) % sequences}" for i in range(len(paths))]
    targets = np.array([(i // 2) % 3 for i in range(len(paths))], dtype=np.int64)
    boxes = np.array([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3]] * images)
    return DataTable("coco", Path("/data"), paths, targets, ["a", "b", "c"], columns=columns, boxes=boxes)


def folds_per(table: DataTable, fold: np.ndarray, column: str) -> dict[str, set[int]]:
    seen: dict[str, set[int]] = {}
    for value, k in zip(table.columns[column], fold.tolist(), strict=True):
        seen.setdefault(value, set()).add(k)
    return seen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_crops_of_one_image_are_in_one_fold(seed: int) -> None:
    table = crops_table(40)
    fold = fold_of(table, 4, seed)
    assert all(len(ks) == 1 for ks in folds_per(table, fold, "image").values())
    assert sorted(np.bincount(fold).tolist()) == [20, 20, 20, 20]  # 10 whole images a fold


def test_two_locations_for_four_folds_fall_back_to_sequences_then_images(capsys: pytest.CaptureFixture[str]) -> None:
    """Too few sites for the folds: ``auto`` falls back as training's split does (sequence, then
    image), never to rows; training itself (two groups enough) still groups by site."""
    table = crops_table(40, locations=2, sequences=8)
    fold = fold_of(table, 4, 0)
    assert all(len(ks) == 1 for ks in folds_per(table, fold, "sequence").values())
    assert len(set(fold.tolist())) == 4
    no_bursts = crops_table(40, locations=2)
    fold = fold_of(no_bursts, 4, 0)
    assert all(len(ks) == 1 for ks in folds_per(no_bursts, fold, "image").values())
    assert group_keys(table, "auto").column == "location"  # type: ignore[union-attr]
    assert group_keys(table, "auto", groups=4).column == "sequence"  # type: ignore[union-attr]
    assert group_keys(no_bursts, "auto", groups=4).column == "image"  # type: ignore[union-attr]
    with pytest.raises(UserError, match="--folds 5: the data has 4 image groups"):
        fold_of(crops_table(4), 5, 0)
    capsys.readouterr()
    fold = fold_of(table, 4, 0, split_by="location")  # as a run's config.yaml records 'auto''s choice
    assert all(len(ks) == 1 for ks in folds_per(table, fold, "sequence").values())
    assert "--split-by location: 2 groups for 4 folds; the folds are grouped by sequence" in capsys.readouterr().err


def test_training_split_keeps_crops_of_one_image_together_too() -> None:
    """One rule for both: a validation split never takes one crop of an image and trains on the
    other, not even with --split-by none (grouping by site off) or for a crop without a site."""
    table = crops_table(40, locations=5)
    table.columns["location"][:4] = ["", "", "", ""]  # two images without a site
    for split_by in ("auto", "none", "location"):
        s = make_splits(table, val_split=0.25, split_by=split_by, seed=0)
        val = {table.paths[i] for i in s.val}
        train = {table.paths[i] for i in s.train}
        assert val and not val & train, split_by
    fold = fold_of(table, 4, 0)
    assert all(len(ks) == 1 for ks in folds_per(table, fold, "image").values())


def test_splits_csv_tells_the_crops_of_one_frame_apart(tmp_path: Path) -> None:
    """A run's splits.csv names each crop by its box, and reading it back finds every row's side
    (by path alone, one row of a two-crop frame was as good as the other)."""
    from imgcls.data.splits import read_splits_csv, split_lookup, splits_csv

    table = crops_table(10)
    s = make_splits(table, val_split=0.3, seed=0)
    listing = tmp_path / "splits.csv"
    listing.write_text(splits_csv(table, s))
    rows = read_splits_csv(listing)
    assert [(p, b) for p, b, _ in rows[:2]] == [("/data/img000.jpg", "0.1000 0.1000 0.2000 0.2000"),
                                                ("/data/img000.jpg", "0.5000 0.5000 0.3000 0.3000")]  # fmt: skip
    assert split_lookup(table, rows) == s.names(len(table))
    reordered = DataTable("coco", Path("/data"), table.paths[::-1], table.targets[::-1], table.class_names,
                          boxes=table.boxes[::-1])  # type: ignore[index]  # fmt: skip
    assert split_lookup(reordered, rows) == s.names(len(table))[::-1]
    assert read_splits_csv(tmp_path / "none.csv") == []


def test_a_pair_of_multi_crop_images_is_listed_once(tmp_path: Path) -> None:
    """Two copies of one picture, with 2 and 3 detection crops: one pair of files (it was listed
    2 x 3 times, once per pair of crops)."""
    from PIL import Image

    from imgcls.audit.duplicates import duplicate_pairs, duplicate_rows, fingerprints

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    picture.save(a)
    picture.save(b)
    paths = [a, a, b, b, b]
    table = DataTable("coco", tmp_path, paths, np.array([0, 1, 0, 0, 1]), ["deer", "fox"],
                      columns={"image": list(paths)}, boxes=np.full((5, 4), 0.25))  # fmt: skip
    rows = duplicate_rows(table, ["train", "train", "val", "val", "val"], duplicate_pairs(fingerprints(table)))
    assert [(r["path_a"], r["path_b"], r["kind"], r["leak"]) for r in rows] == [(a, b, "exact", True)]
    assert (rows[0]["label_a"], rows[0]["label_b"]) == ("deer", "deer")  # the first crops'


def _oos(given: np.ndarray, top: np.ndarray, k: int = 4) -> tuple[DataTable, OutOfSample]:
    n = len(given)
    probs = np.full((n, k), 0.1 / (k - 1))
    probs[np.arange(n), top] = 0.9
    names = [f"c{j}" for j in range(k)]
    table = DataTable("folder", Path("/d"), [f"/d/{i}.png" for i in range(n)], given, names)
    return table, OutOfSample(np.arange(n), probs, names, [], "4-fold cross-validation", np.arange(n) % 4)


def test_trust_tells_a_weak_model_from_wrong_labels() -> None:
    """The top-1 against the labels is shown, per fold too; the warning comes when the models'
    unflagged mistakes are as many as the flags (the digits' figures, scaled to 1,000 rows), not
    merely because wrong labels lower the top-1, and not for a couple of misses."""
    from imgcls.audit.labels import trust

    given = np.arange(1000) % 4
    # 10 % wrong labels, a strong model (15 epochs): 126 rows disagree, 92 of them flagged
    top = given.copy()
    top[:126] = (given[:126] + 1) % 4
    t = trust(*_oos(given, top), [{"row": i} for i in range(92)])
    assert (t.top1, t.unflagged_misses, t.warning) == (0.874, 34, None) and len(t.fold_top1) == 4
    # ... a weaker one (2 epochs): 137 disagree, 92 flagged
    top[:137] = (given[:137] + 1) % 4
    assert trust(*_oos(given, top), [{"row": i} for i in range(92)]).warning is None
    # clean labels, a weak model (1 epoch): 89 rows disagree, 18 of them flagged
    top = given.copy()
    top[:89] = (given[:89] + 1) % 4
    t = trust(*_oos(given, top), [{"row": i} for i in range(18)])
    assert t.top1 == 0.911 and "71 labels wrong that the audit does not flag (7.1% of those checked" in str(t.warning)
    # two unflagged misses next to one flag: noise, no warning
    top = given.copy()
    top[:3] = (given[:3] + 1) % 4
    assert trust(*_oos(given, top), [{"row": 0}]).warning is None
    # a model that guesses the commonest class
    given = np.array([0] * 700 + [1, 2, 3] * 100)
    t = trust(*_oos(given, np.zeros(1000, dtype=np.int64)), [])
    assert t.commonest == 0.7 and "barely above always guessing 'c0' (0.700)" in (t.warning or "")
