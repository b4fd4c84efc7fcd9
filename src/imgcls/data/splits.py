"""Train / validation / test splits.

Splits that come with the data (``train/ val/ test/`` folders, a ``split`` column, the IDX
``t10k`` files) are kept. Where there is no validation split, one is carved out of the training
rows: stratified by class (each class keeps its share), fixed by the seed; or grouped with
``split_by`` (``location``, ``sequence`` or any column) so that no group is on both sides — the
leak-free split for camera traps, where neighbouring frames of one site look alike — stratified
as far as the groups allow (scikit-learn's ``StratifiedGroupKFold``).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.data.table import DataTable
from imgcls.errors import UserError


@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def names(self, n: int) -> list[str]:
        out = [""] * n
        for name in ("train", "val", "test"):
            for i in getattr(self, name):
                out[int(i)] = name
        return out


def _stratified(keys: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Rows for the validation side: round(fraction * n) of every class, at random."""
    val: list[int] = []
    for k in np.unique(keys):
        rows = np.flatnonzero(keys == k)
        rng.shuffle(rows)
        take = round(len(rows) * fraction)
        # both sides see every class of 2+ images; a singleton stays in training
        take = min(max(take, 1), len(rows) - 1) if len(rows) >= 2 else 0
        val.extend(rows[:take].tolist())
    return np.array(sorted(val), dtype=np.int64)


def _grouped(keys: np.ndarray, groups: Sequence[str], fraction: float, seed: int, column: str) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    # rows without a group value are groups of their own
    labels = [g if g else f"\0row{i}" for i, g in enumerate(groups)]
    n_groups = len(set(labels))
    folds = max(2, round(1 / fraction))
    if n_groups < 2:
        raise UserError(f"--split-by {column}: only one group, cannot split without a leak")
    folds = min(folds, n_groups)
    codes = {g: i for i, g in enumerate(sorted(set(labels)))}
    group_ids = np.array([codes[g] for g in labels])
    # StratifiedGroupKFold wants every class to appear; rare classes only trigger a warning.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        _, val = next(splitter.split(np.zeros(len(keys)), keys, group_ids))
    return np.sort(val).astype(np.int64)


def _cap_groups(picked: np.ndarray, groups: Sequence[str], max_val: int, seed: int, column: str) -> np.ndarray:
    """At most ``max_val`` validation rows, by whole groups (a group is never cut in two): the
    drawn groups first, then the others, each in a seeded random order and kept while it fits.
    Where not even one group fits, the smallest is kept (with a warning): a leak-free split needs
    a whole group."""
    import logging

    members: dict[str, list[int]] = {}
    for row, g in enumerate(groups):
        members.setdefault(g if g else f"\0row{row}", []).append(row)
    rng = np.random.default_rng([seed, 104729])
    drawn = sorted({g if g else f"\0row{i}" for i in picked.tolist() for g in [groups[i]]})
    others = sorted(set(members) - set(drawn))
    rng.shuffle(drawn)
    rng.shuffle(others)
    kept: list[int] = []
    for g in [*drawn, *others]:
        if len(kept) + len(members[g]) <= max_val:
            kept += members[g]
    if not kept:
        smallest = min(members, key=lambda g: (len(members[g]), g))
        kept = members[smallest]
        logging.getLogger(__name__).warning(
            "--max-val %d: the smallest %s group has %d images; it is the validation split", max_val, column, len(kept)
        )
    return np.array(sorted(kept), dtype=np.int64)


AUTO_COLUMNS = ("location", "sequence")  # --split-by auto's order: the coarsest grouping first


@dataclass(frozen=True)
class Grouping:
    """The groups that must stay on one side of a split: ``column`` names where they come from
    (``image``: the detection crops of one image) and ``keys`` holds each row's group."""

    column: str
    keys: list[str]

    @property
    def count(self) -> int:
        return len(set(self.keys))


def group_keys(table: DataTable, requested: str | None, *, groups: int = 2) -> Grouping | None:
    """The one grouping rule, for training's split and the audit's folds alike (a validation
    split or a fold that shares a site, a burst or a picture with the rows trained on is not
    held out). ``requested`` is ``--split-by``:

    - ``auto``: location where it has at least ``groups`` groups (2 for a split, K for K folds),
      else sequence, else the image (detection crops), else none;
    - a column: that column, however many groups it has (an explicit choice is not replaced: the
      caller says when they are too few);
    - ``none``/None: no grouping.

    Whatever the choice, the crops of one image are one picture and never split: a row without a
    value in the column joins its image's group (else it is a group of its own), and ``none`` on
    crops groups by image."""
    crops = table.columns.get("image")
    chosen: str | None = None
    if requested not in (None, "", "none", "auto"):
        if requested not in table.columns:
            have = ", ".join(sorted(table.columns)) or "none"
            raise UserError(f"--split-by {requested}: the data has no such column (columns: {have})")
        chosen = requested
    elif requested == "auto":
        chosen = next((c for c in AUTO_COLUMNS if len({v for v in table.columns.get(c, []) if v}) >= groups), None)
    if chosen is None:
        return Grouping("image", list(crops)) if crops is not None else None
    values = table.columns[chosen]
    keys = [v if v else f"\0image:{crops[i]}" if crops is not None else f"\0row:{i}" for i, v in enumerate(values)]
    return Grouping(chosen, keys)


def resolve_split_by(table: DataTable, requested: str | None) -> str | None:
    """The column training's split groups by (:func:`group_keys`), None for none."""
    grouping = group_keys(table, requested)
    return grouping.column if grouping is not None else None


def make_splits(
    table: DataTable,
    *,
    val_split: float = 0.2,
    split_by: str | None = None,
    seed: int = 0,
    max_val: int | None = None,
) -> Splits:
    """Assign every row to train, val or test (see the module docstring). ``max_val`` caps
    the carved-out validation set (a share of a large set wastes training images)."""
    if not 0.0 <= val_split < 1.0:
        raise UserError(f"--val-split must be in [0, 1), not {val_split}")
    grouping = group_keys(table, split_by)
    n = len(table)
    given = table.split if table.split is not None else [None] * n
    test = np.array([i for i, s in enumerate(given) if s == "test"], dtype=np.int64)
    val = np.array([i for i, s in enumerate(given) if s == "val"], dtype=np.int64)
    train = np.array([i for i, s in enumerate(given) if s not in ("test", "val")], dtype=np.int64)
    if len(val) == 0 and val_split > 0 and len(train) > 1:
        if max_val:
            val_split = min(val_split, max_val / len(train))
        keys = table.stratify_key()[train]
        if grouping is not None:
            groups = [grouping.keys[i] for i in train]
            picked = _grouped(keys, groups, val_split, seed, grouping.column)
            if max_val and len(picked) > max_val:
                picked = _cap_groups(picked, groups, max_val, seed, grouping.column)
        else:
            picked = _stratified(keys, val_split, np.random.default_rng(seed))
        val = train[picked]
        train = np.setdiff1d(train, val)
    if len(train) == 0:
        raise UserError("no training images left after splitting")
    return Splits(train=train, val=val, test=test)


def splits_csv(table: DataTable, splits: Splits) -> str:
    """``path,split`` for every row, in the table's order; with detection crops a ``box`` column
    (``x y w h``, as a corrections file names a crop) tells the crops of one frame apart."""
    from imgcls.data.corrections import format_box
    from imgcls.io import csv_text

    boxed = table.boxes is not None
    names = splits.names(len(table))
    rows = ([p, names[i]] + ([format_box(table.boxes[i])] if boxed else []) for i, p in enumerate(table.paths))  # type: ignore[index]
    return csv_text(["path", "split"] + (["box"] if boxed else []), rows)


def read_splits_csv(path: Path) -> list[tuple[str, str, str]]:
    """``(path, box, split)`` of every row of a run's ``splits.csv`` (box "" for a whole image, and
    in listings written before crops had one); empty when the file is not there."""
    from imgcls.data.corrections import parse_box

    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["path"], parse_box(r.get("box") or ""), r.get("split") or "") for r in csv.DictReader(f)]


def split_lookup(table: DataTable, listing: list[tuple[str, str, str]]) -> list[str | None]:
    """Each row's split in ``listing`` (``read_splits_csv``), None where it is not listed, matched
    by :func:`split_keys`."""
    rows, listed = split_keys(table, listing)
    split_of = {k: s for k, (_, _, s) in zip(listed, listing, strict=True)}
    return [split_of.get(k) for k in rows]


def split_keys(
    table: DataTable, listing: list[tuple[str, str, str]]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The keys the rows of ``table`` and of ``listing`` (``read_splits_csv``) are matched by, the
    one rule for a run's ``splits.csv`` (evaluate's and the audit's run split, resume): (path, crop
    box) where the listing names boxes; else (path, position among the rows of that path), since a
    listing written before splits.csv had a box column tells a frame's crops apart only by their
    order (a whole image is position 0)."""
    from imgcls.data.corrections import format_box

    if table.boxes is not None and any(b for _, b, _ in listing):
        return ([(p, format_box(table.boxes[i])) for i, p in enumerate(table.paths)],
                [(p, b) for p, b, _ in listing])  # fmt: skip
    return _positions(table.paths), _positions([p for p, _, _ in listing])


def _positions(paths: list[str]) -> list[tuple[str, str]]:
    """(path, its position among the rows of that path: '0', '1'... for the crops of one frame)."""
    seen: Counter[str] = Counter()
    out = []
    for p in paths:
        out.append((p, str(seen[p])))
        seen[p] += 1
    return out
