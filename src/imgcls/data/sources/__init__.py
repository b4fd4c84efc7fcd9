"""Data sources, detected from the ``--data SPEC``: one reader per kind.

- a folder of class sub-folders, or one holding ``train/ val/ test/`` class-folder trees;
- a folder of MNIST-format IDX files;
- a ``.csv`` manifest;
- a ``.json`` in COCO Camera Traps format;
- a Camera Trap Data Package (Camtrap DP: its folder or its ``datapackage.json``);

and, on top of any of them, MegaDetector detections (:mod:`imgcls.data.sources.detections`):
a row per detection crop, for training, evaluation and prediction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imgcls.data.sources.camtrapdp import is_camtrapdp, read_camtrapdp
from imgcls.data.sources.coco import is_coco_camera_traps, load_json, read_coco
from imgcls.data.sources.folder import read_folder
from imgcls.data.sources.idx import is_idx_dir, read_idx
from imgcls.data.sources.manifest import read_manifest
from imgcls.data.table import LISTED_AGAIN, DataTable, make_targets
from imgcls.errors import UserError

__all__ = ["is_class_folders", "load_source", "load_sources"]


def is_class_folders(path: Path) -> bool:
    """A folder :func:`load_source` reads as class folders (not a Camtrap DP package, not IDX
    files): every folder in it can become a class."""
    return path.is_dir() and not is_camtrapdp(path) and not is_idx_dir(path)


def load_source(spec: str | Path, *, multilabel: bool | None = None, image_root: str | Path | None = None) -> DataTable:
    """Index the labelled images named by ``spec`` (see the module docstring).

    ``multilabel``: force (True) or forbid (False) multi-label reading of CSV / COCO sources;
    None infers it from the data. ``image_root``: base folder for relative paths in CSV / JSON
    files (default: the file's own folder).
    """
    path = Path(spec).expanduser()
    root = Path(image_root).expanduser() if image_root else None
    if not path.exists():
        raise UserError(f"data not found: {spec}")
    if is_camtrapdp(path):
        return read_camtrapdp(path, multilabel=multilabel, image_root=root)
    if path.is_dir():
        return read_folder(path) if is_class_folders(path) else read_idx(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_manifest(path, multilabel=multilabel, image_root=root)
    if suffix == ".json":
        data = load_json(path)
        if is_coco_camera_traps(data):
            return read_coco(path, multilabel=multilabel, image_root=root, data=data)
        raise UserError(f"{path}: a JSON file that is not COCO Camera Traps (images/annotations/categories)")
    raise UserError(
        f"{spec}: not a data source (expected a folder, a .csv manifest, COCO Camera Traps .json, a Camtrap DP package)"
    )


def load_sources(
    specs: list[str], *, multilabel: bool | None = None, image_root: str | Path | None = None
) -> DataTable:
    """The rows of several data specs as one table (``train --data old/ --data labels.csv``):
    classes matched by name (the first spec's order, then each new name as it comes), columns
    joined (a spec without one gives its rows ""), splits a spec brings kept, crop boxes kept.
    Each row records its spec (``DataTable.origin``). An image (with its crop box) in two specs
    counts once: with the same labels the later row is skipped as listed again; with different
    labels both are skipped, naming both specs (neither label can be trusted; relabelling is what
    ``--corrections`` is for). One spec is read as :func:`load_source` reads it."""
    if len(specs) == 1:
        return load_source(specs[0], multilabel=multilabel, image_root=image_root)
    tables = [load_source(s, multilabel=multilabel, image_root=image_root) for s in specs]
    if any(t.multilabel for t in tables) and not all(t.multilabel for t in tables):
        tables = [load_source(s, multilabel=True, image_root=image_root) for s in specs]
    held = [s for s, t in zip(specs, tables, strict=True) if t.pixels is not None]
    if held:
        raise UserError(f"{held[0]}: images held in a data file (IDX) cannot be combined with other --data specs; "
                        "write them out as image files (a folder or a CSV of paths) to combine them")  # fmt: skip
    names: list[str] = []
    for t in tables:
        names += [n for n in t.class_names if n not in names]
    kept, skipped = _once_across(tables, [str(s) for s in specs])
    if not kept:
        raise UserError(f"no usable rows in {', '.join(specs)}")
    multi = tables[0].multilabel
    labels = [tables[k].label_names(i) for k, i in kept]
    names_of_columns = dict.fromkeys(c for t in tables for c in t.columns)
    columns = {c: [tables[k].columns[c][i] if c in tables[k].columns else "" for k, i in kept]
               for c in names_of_columns}  # fmt: skip
    boxed = any(t.boxes is not None for t in tables)
    split_given = any(t.split is not None for t in tables)
    splits = [t.split if t.split is not None else [None] * len(t) for t in tables]
    boxes = [t.boxes if t.boxes is not None else np.full((len(t), 4), np.nan) for t in tables]
    return DataTable(
        kind="several",
        root=tables[0].root,
        paths=[tables[k].paths[i] for k, i in kept],
        targets=make_targets(labels, names, multi),
        class_names=names,
        multilabel=multi,
        split=[splits[k][i] for k, i in kept] if split_given else None,
        columns=columns,
        boxes=np.array([boxes[k][i] for k, i in kept]) if boxed else None,
        crop_margin=tables[0].crop_margin,
        skipped=skipped,
        origin=np.array([k for k, _ in kept], dtype=np.int16),
        origins=[str(s) for s in specs],
    )


def _once_across(tables: list[DataTable], specs: list[str]) -> tuple[list[tuple[int, int]], list[tuple[str, str]]]:
    """(table, row) of every row kept, and the skips: each table's own, and an image (with its
    crop box) met again in a later spec: listed again with the same labels, else left out on
    both sides with both labels named."""
    whole = np.full(4, np.nan)
    rows: list[tuple[int, int]] = []  # (table, row) kept
    first: dict[tuple[str, str], int] = {}  # (real path, box) -> position in rows
    drop: set[int] = set()
    skipped: list[tuple[str, str]] = []
    for k, t in enumerate(tables):
        skipped += t.skipped
        for i, path in enumerate(t.paths):
            box = t.boxes[i] if t.boxes is not None else whole
            key = (os.path.realpath(path), " ".join(f"{v:.4f}" for v in box))
            j = first.setdefault(key, len(rows))
            rows.append((k, i))
            if j == len(rows) - 1:
                continue
            drop.add(len(rows) - 1)
            jk, ji = rows[j]
            was, now = tables[jk].label_names(ji), t.label_names(i)
            if sorted(was) == sorted(now):
                skipped.append((path, f"{LISTED_AGAIN} (first in {specs[jk]})"))
                continue
            drop.add(j)
            skipped.append((path, f"labelled {'; '.join(was) or '(none)'} in {specs[jk]} and "
                                  f"{'; '.join(now) or '(none)'} in {specs[k]}"))  # fmt: skip
    return [r for n, r in enumerate(rows) if n not in drop], skipped
