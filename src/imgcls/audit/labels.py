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
    how: str  # "4-fold cross-validation" / "the model's held-out split"


def fold_of(table: DataTable, folds: int, seed: int = 0) -> np.ndarray:
    """The fold of every row: stratified by class, grouped by location (else sequence) when the
    data has one, so that no group is split between folds."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    keys = table.stratify_key()
    group_column = next((c for c in ("location", "sequence") if len(set(table.columns.get(c, [])) - {""}) >= folds),
                        None)  # fmt: skip
    out = np.zeros(len(table), dtype=np.int64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes rarer than the folds: still split
        if group_column is not None:
            groups = [g or f"\0{i}" for i, g in enumerate(table.columns[group_column])]
            splits = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(keys, keys, groups)
        else:
            splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(keys, keys)
        for k, (_, held) in enumerate(splits):
            out[held] = k
    return out


def cross_validated(cfg: RunConfig, table: DataTable, *, folds: int = 4, work: Path, show: Any = print) -> OutOfSample:
    """K models, each trained as ``cfg`` says on all folds but one, predict the fold they never
    saw (see the module docstring)."""
    from imgcls.engine.fit import fit
    from imgcls.evaluate.run import collect_probabilities
    from imgcls.predict import Classifier

    if folds < 2:
        raise UserError(f"--folds must be at least 2, not {folds}")
    fold = fold_of(table, folds, cfg.train.seed)
    names = list(table.class_names)
    probs = np.zeros((len(table), len(names)))
    done = np.zeros(len(table), dtype=bool)
    skipped: list[tuple[str, str]] = []
    for k in range(folds):
        held = np.flatnonzero(fold == k)
        split: list[str | None] = ["test" if f == k else "train" for f in fold]
        run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out=str(work / f"fold-{k}")))
        # the fold trains on the audit's own rows (crops and corrections already applied)
        run_cfg = dataclasses.replace(run_cfg, data=dataclasses.replace(cfg.data, val_data=None, corrections=None))
        show(f"fold {k + 1}/{folds}: training on {len(table) - len(held)} images, predicting {len(held)}")
        run = fit(run_cfg, table_hook=_with_split(table, split))
        clf = Classifier.load(run / "model", backend="torch")
        p, ok, bad = collect_probabilities(clf, table, held)
        probs[ok] = in_order(p, clf.label_names, names)
        done[ok] = True
        skipped += bad
    rows = np.flatnonzero(done)
    return OutOfSample(rows, probs[rows], names, skipped, f"{folds}-fold cross-validation")


def _with_split(table: DataTable, split: list[str | None]) -> Any:
    """A table hook that trains on ``table``, every row on its fold's side: held out (test) or
    trained on."""

    def hook(_cfg: RunConfig, _loaded: DataTable) -> DataTable:
        return dataclasses.replace(table, split=split)

    return hook


def from_model(model: str | Path, table: DataTable) -> OutOfSample:
    """A given model's probabilities of its own held-out images (its run's validation split)."""
    from imgcls.evaluate.run import choose_rows, collect_probabilities
    from imgcls.predict import Classifier

    clf = Classifier.load(model, backend="torch")
    run = Path(clf.info.provenance["run"]) if clf.info.provenance.get("run") else None
    rows, split = choose_rows(table, "val", run)
    missing = sorted(set(n for i in rows for n in table.label_names(int(i))) - set(clf.label_names))
    if missing:
        raise UserError(f"the data has classes the model does not know ({', '.join(missing[:5])})")
    probs, ok, skipped = collect_probabilities(clf, table, rows)
    names = list(table.class_names)
    return OutOfSample(ok, in_order(probs, clf.label_names, names), names, skipped, f"the model's {split} split")


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
