"""From a data SPEC to ready-to-train rows: index the source, split, decode once, count skips.

A bad file never stops a run: it is skipped and listed with its reason. The run stops with a
clear error only when nothing usable is left, or when the skipped share of all candidate files
exceeds ``max_skipped`` (default one half: most likely the wrong folder or a broken disk).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from imgcls.config import PreprocessConfig, RunConfig
from imgcls.console import info
from imgcls.data.image import MAX_PIXELS
from imgcls.data.loaders import PixelSource
from imgcls.data.sources import load_source, load_sources
from imgcls.data.splits import Splits, make_splits, splits_csv
from imgcls.data.store import DEFAULT_MAX_BYTES, build_store
from imgcls.data.table import DataTable, count_left_out, make_targets
from imgcls.data.transforms import square_size
from imgcls.errors import UserError

log = logging.getLogger(__name__)

TableHook = Callable[[RunConfig, DataTable], DataTable]


def load_table(cfg: RunConfig, table_hook: TableHook | None = None) -> DataTable:
    """The rows of ``--data`` (and ``--val-data``), through ``table_hook`` (detection crops);
    ``split_by`` resolved against the data's columns."""
    from imgcls.data.splits import resolve_split_by

    t, d = cfg.train, cfg.data
    table = load_sources([d.data, *d.more_data], multilabel=True if t.task == "multilabel" else None,
                         image_root=d.image_root)  # fmt: skip
    if d.val_data:
        from imgcls.data.dataset import concat_val

        table = concat_val(
            table, load_source(d.val_data, multilabel=table.multilabel, image_root=d.image_root), d.val_data
        )
    if table_hook is not None:  # e.g. detection crops (imgcls.cameratrap)
        table = table_hook(cfg, table)
    if d.corrections:  # after the crops: a decision may name one crop of an image
        from imgcls.data.corrections import apply_corrections

        table, applied = apply_corrections(table, d.corrections)
        info(f"corrections: {applied.describe()} ({d.corrections})")
    d.split_by = resolve_split_by(table, d.split_by) or "none"
    return table


def concat_val(train: DataTable, val: DataTable, name: str = "") -> DataTable:
    """Append a separate validation source to a training source (classes matched by name)."""
    if train.pixels is not None or val.pixels is not None:
        raise UserError("--val-data cannot be combined with in-memory (IDX) data")
    known = set(train.class_names)
    keep = []
    skipped = list(val.skipped)
    for i in range(len(val)):
        names = val.label_names(i)
        missing = [n for n in names if n not in known]
        if missing:
            skipped.append((val.paths[i], f"class {missing[0]!r} is not in the training data"))
        else:
            keep.append(i)
    labels = [val.label_names(i) for i in keep]
    v_targets = make_targets(labels, train.class_names, train.multilabel)
    columns = {
        k: list(col) + [val.columns.get(k, [""] * len(val))[i] for i in keep] for k, col in train.columns.items()
    }
    train_split = train.split if train.split is not None else ["train"] * len(train)
    split: list[str | None] = ["test" if s == "test" else "train" for s in train_split]
    split += ["val"] * len(keep)
    boxes = None
    if train.boxes is not None or val.boxes is not None:
        tb = train.boxes if train.boxes is not None else np.full((len(train), 4), np.nan)
        vb = val.boxes[keep] if val.boxes is not None else np.full((len(keep), 4), np.nan)
        boxes = np.concatenate([tb, vb])
    origin = None
    if train.origin is not None:  # the validation rows are one spec more
        origin = np.concatenate([train.origin, np.full(len(keep), len(train.origins), dtype=train.origin.dtype)])
    return replace(
        train,
        origin=origin,
        origins=[*train.origins, name or str(val.root)] if origin is not None else train.origins,
        paths=train.paths + [val.paths[i] for i in keep],
        targets=np.concatenate([train.targets, v_targets]),
        split=split,
        columns=columns,
        boxes=boxes,
        skipped=train.skipped + skipped,
    )


@dataclass
class TrainingData:
    table: DataTable  # the rows training uses (train + val)
    splits: Splits
    source: PixelSource
    skipped: list[tuple[str, str]]
    splits_csv: str  # every row of the source with its split, test rows included

    @property
    def candidates(self) -> int:
        return len(self.table) + len(self.table.skipped)


def check_skipped(skipped: int, total: int, max_skipped: float) -> None:
    if total and skipped >= total:
        raise UserError(f"none of the {total} files is usable (see skipped.csv for the reasons)")
    if total and skipped / total > max_skipped:
        raise UserError(
            f"{skipped} of {total} files ({100 * skipped / total:.0f}%) cannot be used, more than "
            f"--max-skipped {max_skipped:g}; see skipped.csv for the reasons"
        )


def prepare_training_data(
    spec: str | Path,
    cfg: PreprocessConfig,
    *,
    val_spec: str | Path | None = None,
    multilabel: bool | None = None,
    image_root: str | Path | None = None,
    val_split: float = 0.2,
    split_by: str | None = None,
    seed: int = 0,
    max_val: int | None = None,
    cache: str = "disk",
    cache_dir: str | Path | None = None,
    workers: int = 2,
    max_pixels: int | None = MAX_PIXELS,
    max_skipped: float = 0.5,
    progress: Callable[[int], None] | None = None,
    table: DataTable | None = None,
    cache_max_bytes: int = DEFAULT_MAX_BYTES,
) -> TrainingData:
    """Index, split and (unless ``cache='none'``) decode the training and validation rows."""
    if table is None:
        table = load_source(spec, multilabel=multilabel, image_root=image_root)
        if val_spec:
            table = concat_val(table, load_source(val_spec, multilabel=table.multilabel, image_root=image_root))
    splits = make_splits(table, val_split=val_split, split_by=split_by, seed=seed, max_val=max_val)
    listing = splits_csv(table, splits)
    table, splits = without_test(table, splits)  # decode only what training uses (train + val)
    skipped = list(table.skipped)
    store = None
    if cache != "none" or table.pixels is not None:
        store, bad = build_store(table, cfg, cache=cache, cache_dir=cache_dir, workers=workers, max_pixels=max_pixels,
                                 progress=progress, max_bytes=cache_max_bytes)  # fmt: skip
        skipped.extend(bad)
        chosen = count_left_out(table.skipped)  # blanks, rejections: not faults
        check_skipped(len(skipped) - chosen, len(table) + len(table.skipped) - chosen, max_skipped)
        ok = store.ok
        splits = Splits(train=splits.train[ok[splits.train]], val=splits.val[ok[splits.val]], test=splits.test)
        if len(splits.train) == 0:
            example = f": {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
            raise UserError(f"no usable training images ({len(skipped)} unusable{example})")
        check_every_class(table, np.concatenate([splits.train, splits.val]), skipped)
    source = PixelSource(table=table, store=store, cfg=cfg, size=square_size(cfg), workers=workers,
                         max_pixels=max_pixels)  # fmt: skip
    return TrainingData(table=table, splits=splits, source=source, skipped=skipped, splits_csv=listing)


def check_every_class(table: DataTable, usable: np.ndarray, skipped: list[tuple[str, str]]) -> None:
    """A class none of whose images can be used (a folder of unreadable files, or of a run's
    outputs) would be an output the network never sees an example of: a one-line error naming it
    and one of its files with the reason."""
    if table.multilabel or table.targets.ndim != 1:
        return
    k_all = len(table.class_names)
    listed, counts = np.bincount(table.targets, minlength=k_all), np.bincount(table.targets[usable], minlength=k_all)
    # a class with no row at all is the source's design (a camera-trap 'empty' category: blanks are left out)
    empty = [k for k in range(k_all) if listed[k] and counts[k] == 0]
    if not empty:
        return
    names = [table.class_names[k] for k in empty]
    said = ", ".join(names[:5]) + (f" ... ({len(names)} in all)" if len(names) > 5 else "")
    rows = np.flatnonzero(table.targets == empty[0])
    why = dict(skipped)
    example = next((f": {table.paths[i]}: {why[table.paths[i]]}" for i in rows if table.paths[i] in why), "")
    raise UserError(f"no usable image of class {said} ({len(rows)} listed{example}); fix or remove its files")


def mixed_framing(table: DataTable, rows: np.ndarray) -> str:
    """'blank (40 whole frames, 3 crops), ...': the classes whose ``rows`` are partly whole
    images and partly detection crops ("" for none). A network given such a class can learn the
    framing (a crop fills the square with one animal, a frame shows the whole scene) instead of
    what the image shows: a Camtrap DP package's blank frames beside crops labelled blank, or a
    species boxed in some images and not in others."""
    if table.boxes is None or not len(rows) or not table.num_classes:
        return ""
    crop = ~np.isnan(table.boxes[rows]).any(axis=1)
    targets = table.targets[rows]
    member = targets.astype(bool) if table.multilabel else targets[:, None] == np.arange(table.num_classes)
    crops, frames = member[crop].sum(axis=0), member[~crop].sum(axis=0)
    mixed = [
        f"{name} ({f} whole frame{'s' if f != 1 else ''}, {c} crop{'s' if c != 1 else ''})"
        for name, f, c in zip(table.class_names, frames.tolist(), crops.tolist(), strict=True)
        if f and c
    ]
    return ", ".join(mixed[:5]) + (f" ... ({len(mixed)} classes)" if len(mixed) > 5 else "")


def without_test(table: DataTable, splits: Splits) -> tuple[DataTable, Splits]:
    """The table of the training and validation rows only (the test split stays untouched), and
    the splits renumbered to it."""
    if not len(splits.test):
        return table, splits
    used = np.sort(np.concatenate([splits.train, splits.val]))
    remap = np.full(int(used.max()) + 1, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return table.subset(used), Splits(train=remap[splits.train], val=remap[splits.val], test=np.zeros(0, np.int64))
