"""``imgcls suggest``: which unlabelled images to label next (active learning).

One streaming, resumable pass scores the pool (:mod:`~imgcls.suggest.score`: predict's inputs and
decoding, the model's calibrated probabilities and its embedding); the images the model trained or
validated on (its run's ``splits.csv``) and those already labelled (``--labelled``) are left out,
and under ``auto`` so are the pool's near-duplicates of those (the ones in the pool, whose
embeddings the pass has: a fourth copy of a labelled frame teaches nothing);
:mod:`~imgcls.suggest.rank` picks ``n`` in labelling order. The CSV lists them with the model's two
likeliest classes and why each was chosen; files that did not decode are listed in
``NAME.skipped.csv`` beside it, and the near-duplicates each pick stands for in
``NAME.duplicates.csv``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import UserError
from imgcls.suggest.events import event_ids, select_by
from imgcls.suggest.rank import STRATEGIES, UNCERTAINTIES, Pick, centred, uncertainty
from imgcls.suggest.score import Scorer, cache_dir, score_pool

__all__ = ["COLUMNS", "SuggestResult", "about_file", "suggest"]

COLUMNS = ["rank", "path", "guess", "p_guess", "guess2", "p_guess2", "uncertainty", "reason", "duplicates"]


@dataclass
class SuggestResult:
    out: Path
    rows: list[dict[str, Any]]
    pool: int  # images named by the inputs (with detections: their crops, and crops that failed)
    eligible: int  # of them: decoded, not trained on, not labelled (nor, under auto, a near-duplicate of one)
    in_training: int
    labelled: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    scored_now: int = 0
    near_known: int = 0  # left out as near-duplicates of images trained on or labelled (auto)
    blank: int = 0  # with detections: frames without a detection to crop, left out
    crops: bool = False  # the items are detection crops
    unlisted: int = 0  # with detections: frames the detections file does not list, skipped (not in ``pool``)
    labelled_named: int = 0  # pool items ``--labelled`` names, trained on or not


def check_options(n: int, strategy: str, measure: str, dedup: float, aggregate: str = "none", gap: float = 30) -> None:
    if aggregate not in ("none", "sequence"):
        raise UserError(f"unknown --aggregate {aggregate!r} (none or sequence)")
    if gap <= 0:
        raise UserError(f"--sequence-gap is the seconds between frames of one event: above 0 (got {gap:g})")
    if n < 1:
        raise UserError(f"--n must be at least 1 (got {n})")
    if strategy not in STRATEGIES:
        raise UserError(f"unknown --strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if measure not in UNCERTAINTIES:
        raise UserError(f"unknown --uncertainty {measure!r} (choose from {', '.join(UNCERTAINTIES)})")
    if not 0 < dedup <= 1:
        raise UserError(f"--dedup is a cosine similarity in (0, 1] (got {dedup})")


def _checked_out(inputs: list[str], labelled: list[str], out: str | Path) -> Path:
    """``--out``, checked before any work: the pool named right (a mistyped pool is a mistake to
    say, not an unreadable image), the file neither an input nor a list of labels."""
    from imgcls.io import check_writable
    from imgcls.predict.inputs import check_inputs, check_output_apart

    check_inputs(inputs)
    check_output_apart([*inputs, *labelled], out)  # never write over the pool's list or the labels
    out_path = check_writable(out)
    not_over_other_work(out_path)
    return out_path


def not_over_other_work(out: Path) -> None:
    """``--out`` may replace an earlier suggestions file, never another file (a labels file
    typed by mistake: a person's labels are not written over)."""
    if not out.exists():
        return
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give the suggestions CSV to write")
    try:
        with open(out, encoding="utf-8-sig") as f:
            header = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        header = ""
    if not header.startswith("rank,path,"):
        shown = header[:60] or "not a CSV"
        raise UserError(f"--out {out} exists and is not a suggestions file ({shown}): choose another --out, so as not "
                        "to write over it")  # fmt: skip


def _load(model: str | Path) -> Any:
    from imgcls.predict import Classifier

    if Path(str(model)).suffix.lower() == ".onnx":
        raise UserError("suggest needs a model directory (its embedding is read from the PyTorch model), not .onnx")
    if not Path(str(model)).is_dir():
        raise UserError(f"model not found: {model}")
    clf = Classifier.load(model, backend="torch")
    if clf.task == "multilabel":
        raise UserError("suggest ranks multi-class and binary models; a multi-label model is not supported yet")
    return clf


def _resolved(paths: Any) -> set[str]:
    """Each name resolved: a file's path, or a crop's (:func:`~imgcls.suggest.score.crop_key`)
    image path resolved with its box kept."""
    from imgcls.suggest.score import crop_key, split_key

    return {crop_key(str(Path(path).resolve()), box) for path, box in map(split_key, paths)}


def _resolved_one(name: str) -> str:
    return next(iter(_resolved([name])))


@dataclass
class PoolCrops:
    items: list[str]  # crop keys, in the pool's order
    margin: float
    skipped: list[tuple[str, str]]  # frames not in the detections file
    blank: int  # frames without a detection at or above the threshold


def pool_crops(clf: Any, inputs: list[str], detections: str | Path, threshold: float | None,
               categories: str | None, margin: float | None) -> PoolCrops:  # fmt: skip
    """The pool as detection crops (the model's crop settings unless given): one item per
    detection at or above the threshold, frames without one counted as blank."""
    from imgcls.data.sources.detections import crop_settings, parse_categories, read_detections
    from imgcls.data.table import format_box
    from imgcls.predict.inputs import iter_inputs
    from imgcls.suggest.score import crop_key

    trained = dict(clf.info.provenance.get("detection_crops") or {})
    threshold, margin = crop_settings(clf.info.provenance, threshold, margin)
    wanted = parse_categories(categories or str(trained.get("categories") or "animal"))
    dets = read_detections(detections, None)
    out = PoolCrops([], margin, [], 0)
    for path in dict.fromkeys(os.path.abspath(p) for p in iter_inputs(inputs)):
        kept = dets.above(path, threshold, wanted)
        if kept is None:
            out.skipped.append((path, f"not in the detections file {Path(detections).name}"))
        elif not kept:
            out.blank += 1
        out.items += [crop_key(path, format_box(d.bbox)) for d in kept or []]
    if not out.items:
        raise UserError(f"no detection at or above {threshold:g} ({', '.join(wanted)}) in {detections} for the pool")
    return out


def training_paths(clf: Any) -> set[str]:
    """Every file the model's run trained or validated on (its ``splits.csv``), resolved."""
    from imgcls.artifacts import run_folder
    from imgcls.console import info
    from imgcls.data.splits import read_splits_csv

    run = run_folder(clf.info.path, clf.info)
    if run is None or not (run / "splits.csv").is_file():
        info("note: the model's run (its splits.csv) was not found beside it: the images it trained on are not "
             "left out (name them with --labelled)")  # fmt: skip
        return set()
    from imgcls.suggest.score import crop_key

    return _resolved(crop_key(p, box) for p, box, _ in read_splits_csv(run / "splits.csv"))


def labelled_paths(labelled: list[str]) -> set[str]:
    """The files ``--labelled`` names: CSVs with a path column, lists, folders (as predict reads them)."""
    from imgcls.predict.inputs import LIST_SUFFIXES, iter_inputs, not_an_image_name

    for f in labelled:
        if not Path(f).exists():
            raise UserError(f"--labelled: {f} not found")
        if Path(f).is_file() and Path(f).suffix.lower() not in LIST_SUFFIXES and not_an_image_name(f):
            raise UserError(f"--labelled: {f} is not a labels CSV, a .txt list, a folder or an image")
    crops = {f: _crop_rows(Path(f)) for f in labelled if f.lower().endswith(".csv")}
    named = {k for keys in crops.values() for k in keys}
    return _resolved(iter_inputs([f for f in labelled if not crops.get(f)])) | named


def _crop_rows(path: Path) -> set[str]:
    """The crops a labels CSV with a ``box`` column names (``imgcls review --label`` over
    suggested crops), as resolved crop keys; empty for a CSV without one."""
    from imgcls.data.sources.manifest import PATH_COLUMNS, _pick, read_rows
    from imgcls.data.table import listed_path, parse_box
    from imgcls.suggest.score import crop_key

    header, rows, _ = read_rows(path)
    col, box = _pick(header, PATH_COLUMNS), _pick(header, ("box",))
    if col is None or box is None:
        return set()
    return {crop_key(listed_path(path.parent, r[col]), parse_box(r.get(box) or "")) for r in rows if r.get(col)}


def suggest(
    model: str | Path,
    inputs: list[str],
    *,
    n: int,
    out: str | Path,
    strategy: str = "auto",
    uncertainty_measure: str = "margin",
    dedup: float = 0.98,
    labelled: list[str] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    scorer: Scorer | None = None,
    chunk: int = 512,
    show_progress: bool = True,
    detections: str | Path | None = None,
    det_threshold: float | None = None,
    det_categories: str | None = None,
    crop_margin: float | None = None,
    aggregate: str = "none",
    gap: float = 30.0,
) -> SuggestResult:
    """Rank the pool ``inputs`` and write the ``n`` images to label first to ``out`` (see the
    module docstring). ``scorer`` replaces the model's (probabilities, embeddings) of a batch.
    With ``detections`` (MegaDetector results) an item is a detection crop at or above
    ``det_threshold`` of ``det_categories`` (default: the model's own crop settings), cut as
    training cuts it; frames without one are blank, left out. ``aggregate="sequence"``: ``n``
    events are chosen (:mod:`~imgcls.suggest.events`), each listed with all its items."""
    from imgcls.predict.inputs import iter_inputs

    check_options(n, strategy, uncertainty_measure, dedup, aggregate, gap)
    out_path = _checked_out(inputs, labelled or [], out)
    clf = _load(model)
    if next(iter_inputs(inputs), None) is None:
        raise UserError("the pool is empty: no image in " + " ".join(inputs))  # fmt: skip
    known = labelled_paths(labelled or [])
    crops = pool_crops(clf, inputs, detections, det_threshold, det_categories, crop_margin) if detections else None
    scores = score_pool(clf, inputs, cache_dir(out_path), scorer=scorer, batch_size=batch_size, workers=workers,
                        chunk=chunk, show_progress=show_progress, items=crops.items if crops else None,
                        margin=crops.margin if crops else None)  # fmt: skip
    scores.errors = (crops.skipped if crops else []) + scores.errors
    cent = centred(scores.emb)
    keep, in_training, is_labelled, near, named = _eligible(clf, scores, cent, known,
                                                            dedup if strategy == "auto" else None)  # fmt: skip
    rows_at = np.nonzero(keep)[0]
    shown, emb = scores.probs[rows_at], cent[rows_at]
    probs = at_threshold(clf, shown)  # what the ranking reads: a binary model's own decision boundary at 0.5
    names = list(clf.label_names)
    events = _events(scores.paths, rows_at, gap) if aggregate == "sequence" else None
    picks = select_by(probs, emb, names, n, events, strategy=strategy, measure=uncertainty_measure, dedup=dedup,
                      seed=seed)  # fmt: skip
    paths = [os.path.abspath(scores.paths[i]) for i in rows_at]  # the CSV is a list wherever it is read
    rows = _rows(picks, paths, probs, names, strategy if strategy in UNCERTAINTIES else uncertainty_measure, shown)
    _write(out_path, rows, picks, paths, emb, scores.errors, _columns(rows, picks, crops is not None, events))
    _write_about(out_path, {"model": str(Path(model).resolve()), "classes": names, "strategy": strategy, "n": n})
    unlisted = len(crops.skipped) if crops else 0  # frames, not crops: never scored
    return SuggestResult(out_path, rows, len(scores.paths) + len(scores.errors) - unlisted, len(rows_at), in_training,
                         is_labelled, scores.errors, scores.scored_now, near, blank=crops.blank if crops else 0,
                         crops=crops is not None, unlisted=unlisted, labelled_named=named)  # fmt: skip


def _events(paths: list[str], rows_at: np.ndarray, gap: float) -> list[str]:
    """The event of each eligible row, the events drawn over every scored item: a labelled frame
    in the middle of a burst does not cut it in two."""
    every = event_ids(paths, gap)
    return [every[i] for i in rows_at]


def _columns(rows: list[dict[str, Any]], picks: list[Pick], crops: bool, events: list[str] | None) -> list[str]:
    """The CSV's columns: for crops each row's crop key split into its image's path and its box
    (as a labels file names a crop); by event, each row's event."""
    from imgcls.suggest.score import split_key

    columns = list(COLUMNS)
    if events is not None:
        for r, p in zip(rows, picks, strict=True):
            r["sequence"] = events[p.index]
        columns.insert(2, "sequence")
    if crops:
        for r in rows:
            r["path"], r["box"] = split_key(r["path"])
        columns.insert(2, "box")
    return columns


def _eligible(
    clf: Any, scores: Any, cent: np.ndarray, known: set[str], dedup: float | None
) -> tuple[np.ndarray, int, int, int, int]:
    """Which scored rows may be suggested: not trained on, not labelled and (``dedup`` given: auto)
    no near-duplicate of a pool image that was (by the centred embeddings ``cent``); with the
    counts of each kind left out, and how many pool items the labelled files name at all."""
    from imgcls.suggest.rank import near_any
    from imgcls.suggest.score import split_key

    resolved = list(map(_resolved_one, scores.paths))
    trained = training_paths(clf)
    image = [split_key(r)[0] for r in resolved]  # a whole image trained on or labelled: each of its crops too
    in_training = np.array([r in trained or i in trained for r, i in zip(resolved, image, strict=True)], dtype=bool)
    named = np.array([r in known or i in known for r, i in zip(resolved, image, strict=True)], dtype=bool)
    is_labelled = named & ~in_training
    keep = ~(in_training | is_labelled)
    near = 0
    if dedup is not None and keep.any() and not keep.all():
        copies = near_any(cent[keep], cent[~keep], dedup)
        near = int(copies.sum())
        keep[np.nonzero(keep)[0][copies]] = False
    return keep, int(in_training.sum()), int(is_labelled.sum()), near, int(named.sum())


def at_threshold(clf: Any, probs: np.ndarray) -> np.ndarray:
    """A binary model's probabilities as the ranking reads them: the positive class's stretched
    piecewise linearly so that the model's decision threshold t sits at 0.5 (0 and 1 stay), so
    the guess is predict's label and the margin is measured from the boundary the model uses
    (1 - |p - t| / t below it, / (1 - t) above). Multi-class probabilities are returned as they are."""
    thresholds = list(getattr(clf.info, "thresholds", None) or [])
    if clf.task != "binary" or probs.shape[1] != 2 or not thresholds or thresholds[0] == 0.5:
        return probs
    t, pos = float(thresholds[0]), int(clf.info.positive_index)
    p = probs[:, pos].astype(np.float64)
    q = np.where(p < t, 0.5 * p / t, 0.5 + 0.5 * (p - t) / max(1.0 - t, 1e-12))
    out = np.empty_like(probs, dtype=np.float64)
    out[:, pos], out[:, 1 - pos] = q, 1.0 - q
    return out


def _rows(
    picks: list[Pick], paths: list[str], probs: np.ndarray, names: list[str], measure: str,
    shown: np.ndarray | None = None,
) -> list[dict]:  # fmt: skip
    """The CSV's rows: the guesses in the ranking's order (``probs``), the probabilities the model
    gave (``shown``: a binary model's own, not stretched to its threshold)."""
    u = uncertainty(probs, measure) if len(probs) else np.zeros(0)
    shown = probs if shown is None else shown
    rows = []
    for rank, pick in enumerate(picks, 1):
        order = np.argsort(-probs[pick.index], kind="stable")
        p = shown[pick.index]
        second = order[1] if len(order) > 1 else order[0]
        rows.append({
            "rank": rank, "path": paths[pick.index],
            "guess": names[order[0]], "p_guess": f"{p[order[0]]:.4f}",
            "guess2": names[second], "p_guess2": f"{p[second]:.4f}",
            "uncertainty": f"{u[pick.index]:.4f}", "reason": pick.reason, "duplicates": len(pick.duplicates),
        })  # fmt: skip
    return rows


def _write_about(out: Path, about: dict[str, Any]) -> None:
    from imgcls.io import atomic_write_text

    atomic_write_text(about_file(out), json.dumps(about, indent=1) + "\n")


def about_file(out: Path) -> Path:
    """``next.csv`` -> ``next.model.json``: the model that ranked the pool and its classes (what
    ``imgcls review --label next.csv`` offers on the number keys and names in its training hint)."""
    return out.with_name(f"{out.stem}.model.json")


def beside(out: Path, what: str) -> Path:
    """``next.csv`` -> ``next.skipped.csv`` (``what`` = skipped), in the same folder."""
    return out.with_name(f"{out.stem}.{what}{out.suffix or '.csv'}")


def _write(
    out: Path, rows: list[dict], picks: list[Pick], paths: list[str], emb: np.ndarray, errors: list[tuple[str, str]],
    columns: list[str] = COLUMNS,
) -> None:  # fmt: skip
    """The suggestions, and beside them the skipped files and the duplicates (each written
    atomically, and always: an empty list says there were none, never an older run's)."""
    from imgcls.io import atomic_write_csv

    atomic_write_csv(out, columns, rows)
    dups = [
        (paths[d], paths[p.index], f"{float(emb[d].astype(np.float32) @ emb[p.index].astype(np.float32)):.4f}")
        for p in picks
        for d in p.duplicates
    ]
    skipped = [(os.path.abspath(p), reason) for p, reason in errors]
    for what, header, listed in (("skipped", ["path", "reason"], skipped),
                                 ("duplicates", ["path", "same_as", "similarity"], dups)):  # fmt: skip
        atomic_write_csv(beside(out, what), header, listed)
