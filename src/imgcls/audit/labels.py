"""Likely label errors: out-of-sample probabilities, then confident learning.

Every image needs a prediction from a model that did not train on it. Two ways to get one:

- **cross-validation** (the default): the images are cut into K folds (stratified by class, and
  grouped by location or sequence where the data has them, so near-identical frames of one site
  stay together); K models are trained with the run's settings, each on the other K-1 folds, and
  predict the fold they never saw;
- **a given model** (``--model``): its own held-out images (the run's validation split).

cleanlab's confident learning (Northcutt et al. 2021, "Confident Learning: Estimating
Uncertainty in Dataset Labels") then finds the images whose given label the probabilities
contradict — pruned by the noise rate it estimates per pair of classes — and ranks them by their
label quality (the probability of the given label, ``self_confidence``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.config import RunConfig
from imgcls.data.table import DataTable
from imgcls.errors import UserError


@dataclass
class OutOfSample:
    """Probabilities (N, K) of the rows ``rows`` of a table, each from a model that never saw it,
    in the order of ``label_names``; and the rows no model could read."""

    rows: np.ndarray
    probs: np.ndarray
    label_names: list[str]
    skipped: list[tuple[str, str]]
    how: str  # "4-fold cross-validation" / "the model's validation split"
    fold: np.ndarray | None = None  # per row of ``rows``: the fold whose model gave it (cross-validation)
    unread: np.ndarray | None = None  # the rows tried that could not be read (``skipped`` names their files)


def fold_of(table: DataTable, folds: int, seed: int = 0, split_by: str | None = "auto") -> np.ndarray:
    """The fold of every row: stratified by class, and grouped as training's split is grouped
    (:func:`imgcls.data.splits.group_keys`, asked for ``folds`` groups: with fewer locations than
    folds, ``auto`` falls back to sequences, then to images), so that no site, burst or picture
    (the crops of one image) is in two folds. A column named by ``--split-by`` (or a run's
    ``config.yaml``, which records the column ``auto`` chose for a single split) with fewer groups
    than folds falls back the same way, with a warning."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    from imgcls.console import info
    from imgcls.data.splits import group_keys

    keys = table.stratify_key()
    grouping = group_keys(table, split_by, groups=folds)
    if grouping is not None and grouping.count < folds and split_by not in (None, "", "none", "auto"):
        fallback = group_keys(table, "auto", groups=folds)
        by = fallback.column if fallback else "nothing (stratified by class)"
        info(f"warning: --split-by {split_by}: {grouping.count} groups for {folds} folds; the folds are grouped by "
             f"{by}, as --split-by auto does")  # fmt: skip
        grouping = fallback
    have = grouping.count if grouping is not None else len(table)
    if have < folds:
        what = f"{grouping.column} groups (each stays in one fold)" if grouping is not None else "images"
        raise UserError(f"--folds {folds}: the data has {have} {what}; lower --folds")
    out = np.zeros(len(table), dtype=np.int64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes rarer than the folds: still split
        if grouping is not None:
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            splits = splitter.split(keys, keys, grouping.keys)
        else:
            splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(keys, keys)
        for k, (_, held) in enumerate(splits):
            out[held] = k
    return out


def cross_validated(
    cfg: RunConfig, table: DataTable, *, folds: int = 4, work: Path, show: Any = print, split_by: str | None = "auto"
) -> OutOfSample:
    """K models, each trained as ``cfg`` says on all folds but one, predict the fold they never
    saw (see the module docstring). ``split_by`` is the grouping asked for (``--split-by``, before
    ``load_table`` resolved it for a single split); ``work`` holds one run per fold, replaced when
    an earlier audit left them (:func:`clear_folds`)."""
    from imgcls.engine.fit import fit
    from imgcls.evaluate.run import collect_probabilities
    from imgcls.predict import Classifier

    if folds < 2:
        raise UserError(f"--folds must be at least 2, not {folds}")
    fold = fold_of(table, folds, cfg.train.seed, split_by)
    clear_folds(work, show)
    names = list(table.class_names)
    probs = np.zeros((len(table), len(names)))
    done = np.zeros(len(table), dtype=bool)
    skipped: list[tuple[str, str]] = []
    # each fold trains on the audit's own rows (crops and corrections already applied), its
    # validation rows carved out by the same grouping rule
    data = dataclasses.replace(cfg.data, val_data=None, corrections=None, split_by=split_by)
    for k in range(folds):
        held = np.flatnonzero(fold == k)
        split: list[str | None] = ["test" if f == k else "train" for f in fold]
        run_cfg = dataclasses.replace(cfg, data=data, train=dataclasses.replace(cfg.train, out=str(work / f"fold-{k}")))
        show(f"fold {k + 1}/{folds}: training on {len(table) - len(held)} images, predicting {len(held)}")
        run = fit(run_cfg, table_hook=_with_split(table, split))
        clf = Classifier.load(run / "model", backend="torch")
        p, ok, bad = collect_probabilities(clf, table, held)
        probs[ok] = in_order(p, clf.label_names, names)
        done[ok] = True
        skipped += bad
    rows = np.flatnonzero(done)
    return OutOfSample(rows, probs[rows], names, skipped, f"{folds}-fold cross-validation", fold[rows],
                       np.flatnonzero(~done))  # fmt: skip


MARK = ".imgcls-audit"  # in the folds folder: its fold-N runs are the audit's own


def clear_folds(work: Path, show: Any = print) -> None:
    """Make room for this audit's fold runs (training refuses a run folder that is not empty): an
    earlier audit into the same folder left its own, ``work/fold-N``, which are removed — those of
    a folds folder the audit marked, or runs (``config.yaml``) of an unmarked one. Anything else
    there is refused before any training: nothing the audit did not write is deleted."""
    import re
    import shutil

    from imgcls.io import atomic_write_text

    runs = [d for d in sorted(work.iterdir()) if re.fullmatch(r"fold-\d+", d.name)] if work.is_dir() else []
    marked = (work / MARK).is_file()
    foreign = [
        d for d in runs if not d.is_dir() or (not marked and any(d.iterdir()) and not (d / "config.yaml").is_file())
    ]
    if foreign:
        raise UserError(f"{foreign[0]} is not an audit's fold run; move it away or choose another --out")
    if runs:
        show(f"replacing the {len(runs)} fold runs an earlier audit left in {work}")
    for d in runs:
        shutil.rmtree(d)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        work / MARK, "imgcls audit: the fold-N runs here are replaced by the next audit into this folder\n"
    )


def _with_split(table: DataTable, split: list[str | None]) -> Any:
    """A table hook that trains on ``table``, every row on its fold's side: held out (test) or
    trained on."""

    def hook(_cfg: RunConfig, _loaded: DataTable) -> DataTable:
        return dataclasses.replace(table, split=split)

    return hook


#: how each split's probabilities are named ("out-of-sample probabilities from ...")
FROM_SPLIT = {"val": "the model's validation split", "test": "the test split",
              "train": "the model's training split", "all": "every image"}  # fmt: skip


def from_model(model: str | Path, table: DataTable, split: str | None = None) -> OutOfSample:
    """A given model's probabilities of the rows of ``split``: by default its own held-out images
    (its run's validation split, as the run's ``splits.csv`` lists them where the data has
    none); ``train`` and ``all`` include images it trained on, whose probabilities flatter the
    labels (a training image's label is rarely contradicted). The run is the one holding the model
    (a copied run is its own: :func:`~imgcls.artifacts.run_folder`)."""
    from imgcls.artifacts import run_folder
    from imgcls.evaluate.run import choose_rows, collect_probabilities
    from imgcls.predict import Classifier

    clf = Classifier.load(model, backend="torch")
    run = run_folder(model, clf.info)
    rows, chosen = choose_rows(table, split or "val", run)
    missing = sorted(set(n for i in rows for n in table.label_names(int(i))) - set(clf.label_names))
    if missing:
        raise UserError(f"the data has classes the model does not know ({', '.join(missing[:5])})")
    probs, ok, skipped = collect_probabilities(clf, table, rows)
    names = list(table.class_names)
    return OutOfSample(ok, in_order(probs, clf.label_names, names), names, skipped, FROM_SPLIT[chosen],
                       unread=np.setdiff1d(rows, ok))  # fmt: skip


def in_order(probs: np.ndarray, have: list[str], want: list[str]) -> np.ndarray:
    """Probability columns in the order of ``want``; a class the model never saw (all of its
    images in the fold it predicts) gets 0."""
    out = np.zeros((len(probs), len(want)))
    for k, name in enumerate(want):
        if name in have:
            out[:, k] = probs[:, have.index(name)]
    return out


def label_issues(table: DataTable, oos: OutOfSample) -> list[dict[str, Any]]:
    """The rows whose given label the out-of-sample probabilities contradict, most likely wrong
    first: path, given label, suggested label, the label's quality (the probability the models
    gave the given label), the suggestion's probability."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if len(oos.rows) == 0:
        return []
    if table.multilabel:
        labels = [list(np.flatnonzero(table.targets[i])) for i in oos.rows]
        flagged = find_label_issues(labels, oos.probs, multi_label=True, return_indices_ranked_by="self_confidence")
        return [_multilabel_issue(table, oos, j, labels[j]) for j in flagged]
    given = table.targets[oos.rows].astype(np.int64)
    present = np.unique(given)
    if len(present) < 2:
        return []
    flagged = find_label_issues(given, oos.probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(given, oos.probs)
    out = []
    for j in flagged:
        i, best = int(oos.rows[j]), int(np.argmax(oos.probs[j]))
        out.append({"path": table.paths[i], "row": i, "given": table.class_names[given[j]],
                    "suggested": table.class_names[best], "quality": round(float(quality[j]), 6),
                    "p_suggested": round(float(oos.probs[j, best]), 6)})  # fmt: skip
    return out


def _multilabel_issue(table: DataTable, oos: OutOfSample, j: int, given: list[int]) -> dict[str, Any]:
    i = int(oos.rows[j])
    suggested = [k for k in range(len(table.class_names)) if oos.probs[j, k] >= 0.5]
    quality = float(
        np.prod([oos.probs[j, k] if k in given else 1 - oos.probs[j, k] for k in range(oos.probs.shape[1])])
    )
    return {"path": table.paths[i], "row": i, "given": ";".join(table.class_names[k] for k in given),
            "suggested": ";".join(table.class_names[k] for k in suggested), "quality": round(quality, 6),
            "p_suggested": round(float(max((oos.probs[j, k] for k in suggested), default=0.0)), 6)}  # fmt: skip


@dataclass
class Trust:
    """How far an audit's label flags can be trusted (:func:`trust`)."""

    top1: float | None  # the probabilities' top class is a given label, share of the rows checked
    fold_top1: list[float]  # the same per fold (cross-validation)
    commonest: float  # the top-1 of always guessing the commonest class
    unflagged_misses: int  # rows whose top class is not their label, yet not flagged
    warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def trust(table: DataTable, oos: OutOfSample, issues: list[dict[str, Any]]) -> Trust:
    """The out-of-sample top-1 against the given labels, and a warning when the flags cannot be
    trusted.

    cleanlab flags the rows whose label the probabilities contradict with confidence; a weak model
    contradicts correct labels too, so the flags' precision falls with the model's accuracy
    (BENCHMARKS.md, "Data audit": 0.927 on the digits; 0.643 on Fashion-MNIST, whose out-of-sample
    model is 89 % accurate; fold models of 0.79 top-1 flagged 11 % of a clean set, all wrongly).
    The top-1 against the given labels cannot tell the two apart by itself, since wrong labels
    lower it as much as a weak model does. Measured on the digits (1,355 training images, 4 folds,
    smallnet): 15 epochs on labels 10 % flipped gave 0.876 and 122 flags, 93 % right; 2 epochs
    gave 0.863 and 125 flags, 91 % right; 1 epoch on clean labels gave 0.911 and 24 flags, all
    wrong. What tells them apart is the rows the models get wrong yet the audit does not flag, by
    its own account the models' mistakes: 46, 61 and 97 (under half the flags, half, four times).
    The models' mistakes end among the flags about one time in five there (8 of 36, 11 of 55, 24
    of 121) and one in two for the weak fold models of a clean set (11 % flagged of about 22 %
    missed), so with as many unflagged misses as flags, a quarter to all of the flags may be the
    models' mistakes: the warning comes then, when they are also at least :data:`MISSES` of the
    rows (a few are noise: wrong labels cleanlab leaves unflagged), or when the top-1 is barely
    above always guessing the commonest class."""
    n = len(oos.rows)
    if n == 0:
        return Trust(None, [], 0.0, 0)
    given = [set(table.label_names(int(i))) for i in oos.rows]
    top = [oos.label_names[k] for k in np.argmax(oos.probs, axis=1)]
    agree = np.array([t in g for t, g in zip(top, given, strict=True)])
    folds = [] if oos.fold is None else [round(float(agree[oos.fold == k].mean()), 4) for k in np.unique(oos.fold)]
    counts: dict[str, int] = {}
    for g in given:
        for name in g:
            counts[name] = counts.get(name, 0) + 1
    commonest = max(counts, key=lambda c: counts[c])
    flagged = {int(i["row"]) for i in issues}
    misses = int(sum(1 for j, i in enumerate(oos.rows) if not agree[j] and int(i) not in flagged))
    out = Trust(round(float(agree.mean()), 4), folds, round(counts[commonest] / n, 4), misses)
    top1 = float(agree.mean())
    if top1 < out.commonest + BETTER_THAN_GUESSING:
        out.warning = (f"out-of-sample top-1 {top1:.3f} is barely above always guessing {commonest!r} "
                       f"({out.commonest:.3f}): the models learned too little to judge the labels")  # fmt: skip
    elif misses >= max(len(flagged), MISSES * n):
        out.warning = (f"out-of-sample top-1 {top1:.3f}: the models get {misses} labels wrong that the audit does not "
                       f"flag ({misses / n:.1%} of those checked; {len(flagged)} flagged): models this weak contradict "
                       "correct labels too, so many flags may be their mistakes rather than wrong labels, and errors "
                       "go unflagged; train them longer or larger, then audit again")  # fmt: skip
    return out


BETTER_THAN_GUESSING = 0.05  # top-1 points above the commonest class's share
MISSES = 0.02  # share of the rows checked: unflagged mistakes below this are noise
