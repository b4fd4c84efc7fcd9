"""The compare's folder and its runs: the shared split, and each configuration trained as an
ordinary run (``engine.fit``) in ``DIR/runs/NAME``.

The split is drawn once, from the data as training reads it (detection crops and corrections
applied), with the common seed, and written once to ``DIR/splits.csv``; each run receives it
through training's public table hook (every row's split given, so the run draws nothing), and
its own ``splits.csv`` is the same file. A compare that is continued reads ``DIR/splits.csv``
again instead of drawing, and refuses data that changed since.

A run killed part-way resumes from its last checkpoint (``fit(resume=True)``, the options it
started with); one killed before its first checkpoint is started again: its folder, the
compare's own, is replaced. Nothing in ``DIR`` that the compare did not write is removed: a
folder that is not empty and not a compare's is refused.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgcls.config import RunConfig
from imgcls.data.table import DataTable
from imgcls.errors import UserError

MARK = ".imgcls-compare"  # in DIR: the folder is a compare's, continued by the next compare into it
Listing = list[tuple[str, str, str]]  # (path, box, split) of every row: data.splits.read_splits_csv


def claim(folder: Path) -> bool:
    """Make ``folder`` the compare's: a new or empty folder is taken, a compare's own is continued
    (True), anything else refused."""
    from imgcls.io import atomic_write_text, check_writable

    check_writable(folder, folder=True)
    continued = (folder / MARK).is_file()
    if folder.is_dir() and any(folder.iterdir()) and not continued:
        raise UserError(f"--out {folder} is not empty and not a compare's folder: choose another --out (a compare "
                        "continues only in its own folder)")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    if not continued:
        atomic_write_text(folder / MARK, "imgcls compare: run the same command again to continue this comparison\n")
    return continued


def shared_split(cfg: RunConfig, folder: Path, say: Callable[[str], Any]) -> tuple[DataTable, Listing]:
    """The table every run trains on and its split: ``DIR/splits.csv`` where a compare drew it
    before, else drawn now (training's own rule: the data's splits kept, validation carved out
    stratified or grouped, with the common seed) and written."""
    from imgcls.data.dataset import load_table
    from imgcls.data.sources.detections import detection_crops
    from imgcls.data.splits import make_splits, read_splits_csv, split_lookup, splits_csv
    from imgcls.io import atomic_write_text

    table = load_table(cfg, detection_crops)
    path = folder / "splits.csv"
    if path.is_file():
        listing = read_splits_csv(path)
        missing = sum(1 for s in split_lookup(table, listing) if s is None)
        if missing or len(listing) != len(table):
            raise UserError(f"the data changed since this compare drew its split ({path}: {len(listing)} rows, the "
                            f"data now {len(table)}, {missing} not listed): compare it in another --out")  # fmt: skip
        return table, listing
    d = cfg.data
    splits = make_splits(table, val_split=d.val_split, split_by=d.split_by, seed=cfg.train.seed, max_val=d.max_val)
    atomic_write_text(path, splits_csv(table, splits))
    listing = read_splits_csv(path)
    test = f", {len(splits.test)} test" if len(splits.test) else ""
    say(f"split: {len(splits.train)} train, {len(splits.val)} validation{test} images, the same for every "
        f"configuration ({path})")  # fmt: skip
    return table, listing


def split_hook(listing: Listing) -> Callable[[RunConfig, DataTable], DataTable]:
    """Training's table hook: the run's rows (detection crops as training makes them) with the
    compare's split given to every row, so the run trains and validates on exactly it."""
    from imgcls.data.sources.detections import detection_crops
    from imgcls.data.splits import split_lookup

    def hook(cfg: RunConfig, table: DataTable) -> DataTable:
        table = detection_crops(cfg, table)
        # a row the listing lacks is one the corrections leave out (applied after this hook)
        split: list[str | None] = [s or "train" for s in split_lookup(table, listing)]
        return dataclasses.replace(table, split=split)

    return hook


def rows_in(table: DataTable, listing: Listing, split: str) -> Any:
    import numpy as np

    from imgcls.data.splits import split_lookup

    return np.array([i for i, s in enumerate(split_lookup(table, listing)) if s == split], dtype=np.int64)


def run_state(run: Path) -> str:
    """``new`` (no run yet), ``resume`` (a checkpoint to continue from) or ``restart`` (a run that
    stopped before its first checkpoint)."""
    if not run.is_dir() or not any(run.iterdir()):
        return "new"
    return "resume" if (run / "checkpoint" / "state.pt").is_file() else "restart"


def train_run(
    cfg: RunConfig, requested: dict[str, Any], hook: Callable[[RunConfig, DataTable], DataTable],
    say: Callable[[str], Any],
) -> float:  # fmt: skip
    """Train (or continue) the run of ``cfg`` (``cfg.train.out``) as ``imgcls train`` would, with
    its exports and curves; the seconds it took: this session's wall time, plus the recorded
    epochs of the sessions before a resume (a complete run is not trained again)."""
    from imgcls.api import export_quietly, quantize_quietly, run_config
    from imgcls.artifacts import read_history
    from imgcls.engine.fit import fit
    from imgcls.predict import exported_onnx
    from imgcls.report.plots import plot_curves

    run = Path(str(cfg.train.out))
    state = run_state(run)
    earlier = 0.0
    if state == "resume":
        earlier = sum(float(h.get("seconds", 0.0)) for h in read_history(run))
        say(f"continuing {run} from its last checkpoint")
    elif state == "restart":
        say(f"{run} stopped before its first checkpoint: starting it again")
        shutil.rmtree(run)
    started = time.monotonic()
    fit(cfg, resume=state == "resume", table_hook=hook, requested=requested)
    saved = run_config(run)
    if (saved.train.export_onnx or saved.train.export_int8) and exported_onnx(run / "model") is None:
        export_quietly(run / "model")
    if saved.train.export_int8 and exported_onnx(run / "model") is not None:
        quantize_quietly(run / "model")
    history = read_history(run)
    if history:
        plot_curves(history, run / "curves.png")
    return earlier + time.monotonic() - started
