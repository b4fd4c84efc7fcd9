"""The metrics of ``imgcls evaluate``, from probabilities and true labels.

- multi-class: top-1, top-5, balanced accuracy, per-class precision / recall / F1 / support,
  macro F1 (over the classes present: :func:`macro_f1`) and weighted F1, the confusion matrix,
  and the probabilistic view: mean negative log-likelihood (= cross-entropy), the
  log-likelihood of the whole set, expected calibration error (15 equal-width bins of the
  top-1 confidence);
- binary: accuracy, precision, recall and F1 at the saved threshold, ROC-AUC, average precision;
- multi-label: per-label and mean average precision, micro / macro F1 at the saved thresholds,
  subset accuracy, Hamming loss.

Decisions come from :func:`imgcls.probability.decide` (the model's own rule); scikit-learn
computes the classification metrics, torchmetrics the calibration error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from imgcls import probability as P
from imgcls.errors import UserError

ECE_BINS = 15


# -------------------------------------------------------------------------------------- metrics
def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-1 confidence: sum over equal-width bins of |accuracy - confidence| weighted
    by the bin's share of the images (Guo et al. 2017), via torchmetrics."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    if len(confidence) == 0:
        return float("nan")
    value = binary_calibration_error(
        torch.as_tensor(confidence, dtype=torch.float64),
        torch.as_tensor(correct.astype(np.int64)),
        n_bins=bins,
        norm="l1",
    )
    return float(value)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per bin: its range, the images in it, their mean confidence and accuracy."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        out.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": int(m.sum()),
                "confidence": float(confidence[m].mean()) if m.any() else float("nan"),
                "accuracy": float(correct[m].mean()) if m.any() else float("nan"),
            }
        )
    return out


def macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> tuple[float, int]:
    """The mean F1 over the classes present: those of the ``k`` classes that the evaluated labels
    or the decisions hold (scikit-learn's own choice without ``labels=``), and how many. A class
    with no image there and never predicted has no F1 (0/0): counted as 0, a class a review
    created, or one another split lacks, pulled the mean down for nothing the model did
    (0.8993 beside a top-1 of 0.9887); one predicted without an image of it is a mistake, F1 0,
    and counts. Class indices (N,), or multi-hot rows (N, k) for multi-label."""
    from sklearn.metrics import f1_score

    if y.ndim == 2:
        labels = [c for c in range(k) if y[:, c].any() or pred[:, c].any()]
    else:
        labels = [int(c) for c in np.union1d(y, pred)]
    labels = labels or list(range(k))  # nothing present at all (every multi-label row empty): as before
    return float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)), len(labels)


def per_class_table(y: np.ndarray, pred: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return [
        {
            "class": n,
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, n in enumerate(names)
    ]


def multiclass_metrics(probs: np.ndarray, y: np.ndarray, names: list[str]) -> dict[str, Any]:
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

    pred = P.decide(probs, "multiclass")
    k = probs.shape[1]
    order = np.argsort(-probs, axis=1)
    conf = probs.max(axis=1)
    correct = pred == y
    labels = list(range(k))
    return {
        "top1": float(correct.mean()),
        "top5": float((order[:, : min(5, k)] == y[:, None]).any(axis=1).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        **dict(zip(("macro_f1", "macro_f1_classes"), macro_f1(y, pred, k), strict=True)),
        "weighted_f1": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "nll": float(P.nll(y, probs, kind="categorical")),
        "log_likelihood": float(P.log_likelihood(y, probs, kind="categorical")),
        "ece": expected_calibration_error(conf, correct),
        "reliability": reliability_bins(conf, correct),
        "per_class": per_class_table(y, pred, names),
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def binary_metrics(
    probs: np.ndarray, y: np.ndarray, names: list[str], positive: int, threshold: float
) -> dict[str, Any]:
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    out = multiclass_metrics(probs, y, names)
    p_pos = probs[:, positive]
    is_pos = y == positive
    pred = P.decide(probs, "binary", thresholds=[threshold], positive=positive)
    pred_pos = pred == positive
    p, r, f, _ = precision_recall_fscore_support(is_pos, pred_pos, average="binary", zero_division=0)
    out.update(
        top1=float((pred == y).mean()),
        accuracy=float((pred == y).mean()),
        precision=float(p),
        recall=float(r),
        f1=float(f),
        threshold=threshold,
        positive_class=names[positive],
        per_class=per_class_table(y, pred, names),
        balanced_accuracy=float(balanced_accuracy_score(y, pred)),
        weighted_f1=float(f1_score(y, pred, labels=[0, 1], average="weighted", zero_division=0)),
    )
    out["macro_f1"], out["macro_f1_classes"] = macro_f1(y, pred, 2)
    from sklearn.metrics import confusion_matrix

    out["confusion_matrix"] = confusion_matrix(y, pred, labels=[0, 1]).tolist()
    both = is_pos.any() and (~is_pos).any()
    out["roc_auc"] = float(roc_auc_score(is_pos, p_pos)) if both else float("nan")
    out["average_precision"] = float(average_precision_score(is_pos, p_pos)) if is_pos.any() else float("nan")
    out.pop("top5", None)
    return out


def multilabel_metrics(probs: np.ndarray, y: np.ndarray, names: list[str], thresholds: list[float]) -> dict[str, Any]:
    from sklearn.metrics import (
        average_precision_score,
        f1_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    th = np.asarray(thresholds or [0.5] * len(names))
    pred = P.decide(probs, "multilabel", thresholds=th)
    ap = [
        float(average_precision_score(y[:, k], probs[:, k])) if y[:, k].any() else float("nan")
        for k in range(len(names))
    ]
    p, r, f, s = precision_recall_fscore_support(y, pred, zero_division=0)
    valid = [a for a in ap if not math.isnan(a)]
    return {
        "mAP": float(np.mean(valid)) if valid else float("nan"),
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        **dict(zip(("macro_f1", "macro_f1_classes"), macro_f1(y, pred, len(names)), strict=True)),
        "subset_accuracy": float((pred == y).all(axis=1).mean()),
        "hamming_loss": float(hamming_loss(y, pred)),
        "nll": float(P.nll(y.astype(np.float64), probs.astype(np.float64), kind="bernoulli")),
        "per_class": [
            {
                "class": n,
                "average_precision": ap[k],
                "precision": float(p[k]),
                "recall": float(r[k]),
                "f1": float(f[k]),
                "support": int(s[k]),
                "threshold": float(th[k]),
            }
            for k, n in enumerate(names)
        ],
    }


def group_accuracy(correct: np.ndarray, groups: list[str]) -> list[dict[str, Any]]:
    """Accuracy per group (e.g. per camera-trap location)."""
    out = []
    g = np.asarray(groups)
    for name in sorted(set(groups)):
        m = g == name
        out.append({"group": name, "images": int(m.sum()), "accuracy": float(correct[m].mean())})
    return out


def compute_metrics(
    task: str,
    probs: np.ndarray,
    targets: np.ndarray,
    names: list[str],
    *,
    positive: int = 1,
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    if len(probs) == 0:
        raise UserError("no image could be evaluated: every one was skipped (unreadable or unusable)")
    if task == "multilabel":
        return multilabel_metrics(probs, targets, names, thresholds or [])
    if task == "binary":
        return binary_metrics(probs, targets, names, positive, (thresholds or [0.5])[0])
    return multiclass_metrics(probs, targets, names)
