"""Tasks: how logits become probabilities, which loss is minimised, how a decision is made.

- ``multiclass``: K logits, softmax, cross-entropy (= NLL of a categorical distribution, with
  optional label smoothing); the decision is the arg-max (or ``unknown`` below a threshold).
- ``binary``: one logit for the positive class, sigmoid, binary cross-entropy (= NLL of a
  Bernoulli); the decision is p >= threshold (0.5 unless tuned).
- ``multilabel``: K independent logits, sigmoid each, binary cross-entropy summed over labels;
  one threshold per label, tuned on validation data and saved with the model.

Calibration: a network trained to minimise cross-entropy (more so with label smoothing) gives
probabilities that are too confident or too timid. One scalar, the temperature T, fitted on the
validation set by minimising the NLL of softmax(z / T) (sigmoid for binary), fixes most of it
(Guo et al., 2017, "On Calibration of Modern Neural Networks"). Dividing by T > 0 keeps the
arg-max, and for binary the sign of the logit, so decisions at 0.5 do not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from imgcls import probability as P
from imgcls.errors import UserError

TASKS = ("multiclass", "binary", "multilabel")


@dataclass
class Task:
    name: str
    class_names: list[str]
    positive: int = 1  # binary: index (in class_names) of the positive class
    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None  # multiclass, binary: per-class loss weights
    pos_weight: torch.Tensor | None = None  # multilabel: per-label weight of a positive (neg / pos)
    thresholds: list[float] = field(default_factory=list)
    temperature: float = 1.0  # logits are divided by it before softmax / sigmoid (calibration)
    calibration: dict[str, Any] | None = None  # how the temperature was fitted (TemperatureFit.record)

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise UserError(f"unknown task {self.name!r}; choose one of: {', '.join(TASKS)}")
        if self.name == "binary" and len(self.class_names) != 2:
            raise UserError(
                f"a binary task needs exactly 2 classes, the data has {len(self.class_names)} "
                f"({', '.join(self.class_names[:5])})"
            )
        if self.name != "multilabel" and len(self.class_names) < 2:
            raise UserError(f"only one class ({', '.join(self.class_names)}): a classifier needs at least 2")
        if not self.thresholds:
            n = 1 if self.name == "binary" else len(self.class_names)
            self.thresholds = [0.5] * n if self.name != "multiclass" else []

    @property
    def num_outputs(self) -> int:
        """Size of the model's head: 1 logit for binary, one per class otherwise."""
        return 1 if self.name == "binary" else len(self.class_names)

    @property
    def positive_name(self) -> str:
        return self.class_names[self.positive]

    def targets(self, raw: np.ndarray) -> torch.Tensor:
        """Table targets -> what the loss takes: class indices (multiclass), 0/1 floats of the
        positive class (binary), multi-hot floats (multilabel)."""
        t = torch.from_numpy(np.asarray(raw))
        if self.name == "multiclass":
            return t.long()
        if self.name == "binary":
            return (t == self.positive).float()
        return t.float()

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of the batch (soft targets from mixup allowed)."""
        logits = logits.float()
        if self.name == "multiclass":
            return F.cross_entropy(logits, target, weight=self._weights(logits), label_smoothing=self.label_smoothing)
        if self.name == "binary":
            pos_weight = None
            if self.class_weights is not None:
                # weight positives by w_pos / w_neg: the same balance as class weights
                w = self.class_weights.to(logits.device)
                pos_weight = (w[self.positive] / w[1 - self.positive]).reshape(1)
            return F.binary_cross_entropy_with_logits(
                logits.reshape(-1), target.reshape(-1).float(), pos_weight=pos_weight
            )
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=pos_weight, reduction="none")
        return loss.sum(dim=1).mean()

    def _weights(self, logits: torch.Tensor) -> torch.Tensor | None:
        return None if self.class_weights is None else self.class_weights.to(logits.device)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities (N, K); for binary the two columns are (1 - p, p) in class
        order (:func:`imgcls.probability.class_probabilities`)."""
        logits = logits if logits.dtype == torch.float64 else logits.float()
        return P.class_probabilities(logits, self.name, temperature=self.temperature, positive=self.positive)

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """Decisions from probabilities: class indices (N,) or a multi-hot matrix (N, K)
        (:func:`imgcls.probability.decide`)."""
        return P.decide(probs, self.name, thresholds=self.thresholds, positive=self.positive)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"task": self.name}
        if self.name == "binary":
            out["positive_class"] = self.positive_name
        if self.thresholds:
            out["thresholds"] = [float(t) for t in self.thresholds]
        if self.temperature != 1.0:
            out["temperature"] = round(float(self.temperature), 5)
        if self.calibration is not None:
            out["calibration"] = self.calibration
        return out


def infer_task(requested: str | None, num_classes: int, multilabel: bool) -> str:
    """'auto' picks multilabel for multi-label data, binary for two classes, else multiclass."""
    if requested and requested != "auto":
        if requested not in TASKS:
            raise UserError(f"unknown task {requested!r}; choose one of: {', '.join(TASKS)}")
        if multilabel and requested != "multilabel":
            raise UserError(f"the data is multi-label (rows with several labels): --task {requested} cannot use it")
        return requested
    if multilabel:
        return "multilabel"
    return "binary" if num_classes == 2 else "multiclass"


def tune_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per-label thresholds maximising F1 on validation data (multi-label); 0.5 for a label with
    no positive example."""
    thresholds = []
    for k in range(probs.shape[1]):
        y = targets[:, k].astype(bool)
        if not y.any():
            thresholds.append(0.5)
            continue
        candidates = np.unique(np.concatenate([probs[:, k], [0.5]]))
        best, best_f1 = 0.5, -1.0
        for t in candidates:
            pred = probs[:, k] >= t
            tp = float((pred & y).sum())
            f1 = 2 * tp / (pred.sum() + y.sum()) if (pred.sum() + y.sum()) else 0.0
            if f1 > best_f1 + 1e-12:
                best, best_f1 = float(t), f1
        thresholds.append(best)
    return thresholds


def tune_binary_threshold(p_positive: np.ndarray, is_positive: np.ndarray, metric: str) -> float:
    """The decision threshold on the positive class's probability that maximises ``metric``
    (``f1`` or ``balanced`` accuracy) on validation data; 0.5 when a class is missing. Ties go
    to the threshold nearest 0.5."""
    y = np.asarray(is_positive, bool)
    p = np.asarray(p_positive, np.float64)
    if y.all() or not y.any():
        return 0.5
    best, best_score = 0.5, -1.0
    for t in sorted(np.unique(np.concatenate([p, [0.5]])), key=lambda v: abs(v - 0.5)):
        pred = p >= t
        tp = float((pred & y).sum())
        if metric == "f1":
            score = 2 * tp / (pred.sum() + y.sum())
        elif metric == "balanced":
            score = (tp / y.sum() + float((~pred & ~y).sum()) / (~y).sum()) / 2
        else:
            raise ValueError(f"unknown threshold metric {metric!r}")
        if score > best_score + 1e-12:
            best, best_score = float(t), score
    return best


#: The range a fitted temperature may take. Over-confident networks fit T above 1 (Guo et al.
#: 2017); label smoothing leaves networks too timid, fitted below 1 (the digits demo: about 0.4).
#: A decade either side of 1 holds both with room to spare; a fit that wants
#: more is not calibrating a network's confidence but making one up for logits with almost no
#: scale (a near-chance network made logits x20 from 72 images) or no information, so it stops at
#: the bound and says so.
TEMPERATURE_RANGE = (0.1, 10.0)
#: fewer validation images than this, and a fit is said not to be trusted
CALIBRATION_IMAGES = 100
#: nor when the 95% interval of T spans more than this factor (a fit resting on a few mistakes)
CALIBRATION_SPREAD = 2.0
#: mistakes on at most this share of the validation images are few (see :attr:`TemperatureFit.notes`)
FEW_MISTAKES = 0.1


def fit_temperature(task: str, logits: np.ndarray, targets: np.ndarray, positive: int = 1) -> float | None:
    """The temperature T minimising the mean NLL of the validation labels (multiclass: class
    indices and (N, K) logits; binary: class indices and (N,) or (N, 1) logits of ``positive``).
    With test-time augmentation, pass the mean logits of the views, as prediction computes them.
    A golden-section search over log T in :data:`TEMPERATURE_RANGE` (:func:`calibrate` says when
    the fit ends at a bound).

    None when the logits separate the labels (every label the strict arg-max; binary: every
    logit on its label's side of 0): then the NLL falls all the way as T goes to 0, there is no
    finite fit, and the search's end would make the model claim certainty (a small validation
    split that the network gets all right is the usual case)."""
    if task not in ("multiclass", "binary"):
        raise ValueError(f"temperature scaling applies to multiclass and binary tasks, not {task}")
    z, y = _as_classes(task, logits, targets, positive)
    if len(y) and bool(np.all(z[np.arange(len(y)), y] > _others_max(z, y))):
        return None

    def nll(log_t: float) -> float:
        return float(_per_image(z, y, math.exp(log_t))[0].mean())

    lo, hi = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    best = (lo + hi) / 2
    return float(math.exp(best)) if nll(best) < nll(0.0) else 1.0


def _as_classes(task: str, logits: np.ndarray, targets: np.ndarray, positive: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) float64 logits and class indices; a binary logit z as the two-class softmax of
    (0, z), which is its sigmoid, with label 1 for the positive class."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(targets)
    if task == "binary":
        z = z.reshape(-1)
        return np.stack([np.zeros_like(z), z], axis=1), (y == positive).astype(np.int64)
    return z, y.astype(np.int64)


def _others_max(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    others = z.copy()
    others[np.arange(len(y)), y] = -np.inf
    return others.max(axis=1)


def _per_image(z: np.ndarray, y: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image at temperature ``t``: the NLL, and its first and second derivatives in log T
    (with s = z / T and p = softmax(s): s_y - E_p[s], and Var_p[s] minus the first); exact from
    log-probabilities for any logit size."""
    s = z / t
    top = s.max(axis=1, keepdims=True)
    e = np.exp(s - top)
    norm = e.sum(axis=1)
    p = e / norm[:, None]
    s_y = s[np.arange(len(y)), y]
    mean = (p * s).sum(axis=1)
    grad = s_y - mean
    return top[:, 0] + np.log(norm) - s_y, grad, (p * (s - mean[:, None]) ** 2).sum(axis=1) - grad


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and how far to trust it: the images and mistakes it rests on, the
    95% interval of T (a sandwich estimate of log T's standard error, robust to the model being
    wrong: the spread of the per-image gradients over the curvature), and whether the search
    stopped at an end of :data:`TEMPERATURE_RANGE`."""

    temperature: float
    images: int
    errors: int
    interval: tuple[float, float]
    at_bound: bool

    @property
    def doubts(self) -> list[str]:
        """Why the fit is not to be trusted, one clause each (empty: no reason known)."""
        out = []
        lo, hi = TEMPERATURE_RANGE
        if self.at_bound and self.temperature < 1:
            out.append(f"the fit reached the lowest temperature allowed, {lo:g} (logits x{1 / lo:g}): the network's "
                       "logits have almost no scale (a network near chance, or trained too little)")  # fmt: skip
        elif self.at_bound:
            out.append(f"the fit reached the highest temperature allowed, {hi:g} (logits /{hi:g}): the "
                       "network's confidence says almost nothing about when it is right")  # fmt: skip
        if self.images < CALIBRATION_IMAGES:
            out.append(f"only {self.images} validation images (a fit wants at least {CALIBRATION_IMAGES})")
        return out

    @property
    def notes(self) -> list[str]:
        """What else to know: a wide interval. Not a reason to distrust it where the fit itself
        is sound: the interval says how far its size may be off, and one that lies wholly on one
        side of 1 still says which way the network errs. Its cause is named only where it is
        known: few mistakes (at most :data:`FEW_MISTAKES` of the images: a confident mistake is
        what bounds T from below, and a few of them bound it loosely); with more (a network near
        chance got 236 of 271 wrong) the logits themselves say little, and the note says only
        that the images fix T's size loosely."""
        low, high = self.interval
        if self.at_bound or self.doubts or high <= CALIBRATION_SPREAD * low:
            return []
        side = (" (all of it below 1: the network is too timid)" if high < 1 else
                " (all of it above 1: the network is too sure)" if low > 1 else "")  # fmt: skip
        why = ("the fit rests on few mistakes, so its size is uncertain" if self.errors <= FEW_MISTAKES * self.images
               else "the validation images fix its size only loosely")  # fmt: skip
        return [f"its 95% interval is {low:.3g} to {high:.3g}{side}, with {self.errors} of {self.images} validation "
                f"images wrong: {why}"]  # fmt: skip

    @property
    def trusted(self) -> bool:
        return not self.doubts

    def record(self) -> dict[str, Any]:
        """What the model directory keeps (``config.json``'s ``calibration``)."""
        return {
            "temperature": round(self.temperature, 5), "images": self.images, "errors": self.errors,
            # at a bound the optimum lies outside the range: no interval around it
            "interval95": None if self.at_bound else [round(v, 5) if math.isfinite(v) else None for v in self.interval],
            "range": list(TEMPERATURE_RANGE), "at_bound": self.at_bound, "trusted": self.trusted,
            "doubts": self.doubts, "notes": self.notes,
        }  # fmt: skip


def calibrate(task: str, logits: np.ndarray, targets: np.ndarray, positive: int = 1) -> TemperatureFit | None:
    """:func:`fit_temperature` with what says how far to trust it (:class:`TemperatureFit`);
    None where the logits separate the labels (no finite fit)."""
    t = fit_temperature(task, logits, targets, positive)
    if t is None:
        return None
    z, y = _as_classes(task, logits, targets, positive)
    _, grad, curve = _per_image(z, y, t)
    total = float(curve.sum())
    se = math.sqrt(float((grad**2).sum())) / total if total > 0 else math.inf
    spread = math.exp(1.96 * se) if se < 300 else math.inf
    at_bound = any(abs(math.log(t / b)) < 1e-3 for b in TEMPERATURE_RANGE)
    errors = int((z[np.arange(len(y)), y] <= _others_max(z, y)).sum()) if len(y) else 0
    return TemperatureFit(t, len(y), errors, (t / spread, t * spread), at_bound)


def quick_metrics(task: Task, probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """The per-epoch validation metrics (the full set is :mod:`imgcls.evaluate`'s job).

    ``probs`` (N, K) as :meth:`Task.probabilities` returns them; ``targets`` the table's class
    indices (N,) or multi-hot rows (N, K). ``nll`` is the mean negative log-likelihood.
    """
    out: dict[str, float] = {}
    if len(probs) == 0:
        return out
    y: np.ndarray
    if task.name == "multilabel":
        from sklearn.metrics import average_precision_score, f1_score

        y = targets.astype(np.uint8)
        has = y.sum(axis=0) > 0
        out["nll"] = float(P.nll(y.astype(np.float64), probs.astype(np.float64), kind="bernoulli"))
        if has.any():
            out["mAP"] = float(average_precision_score(y[:, has], probs[:, has], average="macro"))
        out["micro_f1"] = float(f1_score(y, task.predict(probs), average="micro", zero_division=0))
        return out
    y = targets.astype(np.int64)
    p64: np.ndarray = probs.astype(np.float64)
    out["nll"] = float(P.nll(y, p64, kind="categorical"))
    out["top1"] = float((task.predict(probs) == y).mean())
    if task.name == "multiclass" and probs.shape[1] > 5:
        top5 = np.argsort(-probs, axis=1)[:, :5]
        out["top5"] = float((top5 == y[:, None]).any(axis=1).mean())
    if task.name == "binary" and len(np.unique(y)) == 2:
        from sklearn.metrics import roc_auc_score

        out["roc_auc"] = float(roc_auc_score(y == task.positive, probs[:, task.positive]))
    return out


def monitor_metric(task: Task, requested: str = "auto") -> tuple[str, bool]:
    """(metric key, higher is better) used for best-model selection and early stopping."""
    if requested and requested != "auto":
        key = requested if requested.startswith("val_") else f"val_{requested}"
        return key, not key.endswith(("loss", "nll"))
    return ("val_mAP", True) if task.name == "multilabel" else ("val_top1", True)
