"""The probability core: from logits to probabilities to the likelihood of the labels.

A classifier f(θ, x) returns *logits* z. Softmax turns them into a categorical distribution over
K classes (multi-class); the sigmoid turns each one into an independent Bernoulli probability
(binary, multi-label). Training maximises the likelihood of the observed labels, which is the same
as minimising the negative log-likelihood (NLL); for one-hot / integer labels the NLL of an
example is exactly the cross-entropy between the label distribution and the prediction.

Every function accepts NumPy arrays or torch tensors and returns the same kind. NumPy is the
core: torch is never imported here (a tensor can only come from a program that imported it), so
prediction on ONNX Runtime and the evaluation metrics run without torch.

The same module turns a classifier's logits into its task's probabilities
(:func:`class_probabilities`: softmax, sigmoid, the binary task's two columns, the calibration
temperature) and probabilities into decisions (:func:`decide`: the arg-max, the binary threshold
on the positive class, the multi-label thresholds): the one implementation that training
(``tasks.Task``), prediction (``predict.Classifier``) and evaluation use.

Worked example (multi-class, three images, three classes):

>>> import numpy as np
>>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3], [1.2, 0.2, 3.1]])
>>> p = softmax(logits)
>>> np.round(p, 3)
array([[0.659, 0.242, 0.099],
       [0.109, 0.802, 0.089],
       [0.124, 0.046, 0.83 ]])
>>> y = np.array([0, 1, 2])                 # integer class labels
>>> round(float(likelihood(y, p)), 4)       # 0.659 * 0.802 * 0.830
0.439
>>> round(float(log_likelihood(y, p)), 4)   # log of the product = sum of the logs
-0.8232
>>> round(float(nll(y, p)), 4)              # mean negative log-likelihood per image
0.2744

Why the log: the likelihood of a data set is a product of one probability per example, so it
shrinks geometrically and underflows to exactly 0.0 in floating point long before a real data set
ends, while the sum of logs stays an ordinary number:

>>> q = np.full(2000, 0.5)                  # 2,000 labels, each given probability 0.5
>>> float(np.prod(q))                       # 0.5**2000 is below the smallest double: 0.0
0.0
>>> round(float(np.sum(np.log(q))), 2)      # 2000 * log(0.5): no trouble at all
-1386.29

Extreme logits are fine too, because softmax and its log are computed with the log-sum-exp trick
(subtract the largest logit before exponentiating):

>>> softmax(np.array([1000.0, 0.0]))
array([1., 0.])
>>> log_softmax(np.array([1000.0, 0.0]))
array([    0., -1000.])
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import numpy as np

if TYPE_CHECKING:
    import torch

ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")
Reduction = Literal["mean", "sum", "none"]
Kind = Literal["categorical", "bernoulli"]

#: Probabilities are clipped to [EPS, 1 - EPS] (in float64, whatever the input's precision)
#: before taking logs, so that a single exactly-zero or exactly-one probability gives a large but
#: finite loss (the same convention as scikit-learn's log_loss).
EPS = 1e-12


def _is_tensor(x: Any) -> bool:
    """A torch tensor (torch is only looked up, never imported: without it, nothing is one)."""
    torch_module = sys.modules.get("torch")
    return torch_module is not None and isinstance(x, torch_module.Tensor)


def _torch() -> Any:
    import torch

    return torch


def _as_float(x: Any) -> Any:
    """A floating-point tensor or array (integers become float64)."""
    if _is_tensor(x):
        return x if x.is_floating_point() else x.double()
    arr = np.asarray(x)
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)


def _numpy(x: Any) -> np.ndarray:
    if _is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _reduce(neg: Any, reduction: str) -> Any:
    if reduction == "none":
        return neg
    if reduction == "sum":
        return neg.sum()
    if reduction == "mean":
        return neg.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


def log_softmax(logits: ArrayT, axis: int = -1) -> ArrayT:
    """log softmax(z)_k = z_k - logsumexp(z), computed without overflow."""
    z = _as_float(logits)
    if _is_tensor(z):
        return cast(Any, _torch().log_softmax(z, dim=axis))
    shifted = z - np.max(z, axis=axis, keepdims=True)
    return cast(Any, shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True)))


def softmax(logits: ArrayT, axis: int = -1) -> ArrayT:
    """softmax(z)_k = exp(z_k) / sum_j exp(z_j): logits to a categorical distribution."""
    z = _as_float(logits)
    if _is_tensor(z):
        return cast(Any, _torch().softmax(z, dim=axis))
    return cast(Any, np.exp(log_softmax(z, axis=axis)))


def sigmoid(logits: ArrayT) -> ArrayT:
    """sigmoid(z) = 1 / (1 + exp(-z)): one logit to a Bernoulli probability, stable for any z."""
    z = _as_float(logits)
    if _is_tensor(z):
        return cast(Any, _torch().sigmoid(z))
    # exp of a non-positive number never overflows: use exp(-|z|) on both sides.
    e = np.exp(-np.abs(z))
    return cast(Any, np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)))


def _infer_kind(y_true: Any, y_prob: Any) -> Kind:
    """Integer labels of one dimension fewer than y_prob are categorical; same-shape labels are
    categorical when they are one-hot and each row of y_prob sums to one, else Bernoulli."""
    if y_true.ndim == y_prob.ndim - 1:
        return "categorical"
    if tuple(y_true.shape) != tuple(y_prob.shape):
        raise ValueError(
            f"y_true has shape {tuple(y_true.shape)} and y_prob {tuple(y_prob.shape)}: expected "
            "integer labels (N,) with probabilities (N, K), or two arrays of the same shape"
        )
    if y_prob.ndim == 1:
        return "bernoulli"
    yt, yp = _numpy(y_true), _numpy(y_prob)
    one_hot = bool(np.all((yt == 0) | (yt == 1)) and np.all(yt.sum(axis=-1) == 1))
    normalised = bool(np.allclose(yp.sum(axis=-1), 1.0, atol=1e-4))
    return "categorical" if one_hot and normalised else "bernoulli"


def _label_log_probs(y_true: Any, y_prob: Any, kind: Kind | None, eps: float) -> Any:
    """Per-example log-probability of the observed labels (one value per example)."""
    y_true = _torch().as_tensor(y_true, device=y_prob.device) if _is_tensor(y_prob) else np.asarray(y_true)
    kind = kind or _infer_kind(y_true, y_prob)
    # in float64: 1 - 1e-12 rounds to exactly 1.0 in float32, and log1p(-1) is -inf
    p = _as_float(y_prob)
    if _is_tensor(p):
        p = p.double().clamp(eps, 1 - eps)
        if kind == "categorical":
            idx = y_true.argmax(dim=-1) if y_true.ndim == p.ndim else y_true.long()
            return _torch().log(p.gather(-1, idx.unsqueeze(-1)).squeeze(-1))
        y = y_true.to(p.dtype)
        ll = y * _torch().log(p) + (1 - y) * _torch().log1p(-p)
        return ll.sum(dim=-1) if ll.ndim > 1 else ll
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    if kind == "categorical":
        idx = y_true.argmax(axis=-1) if y_true.ndim == p.ndim else y_true.astype(np.int64)
        return np.log(np.take_along_axis(p, idx[..., None], axis=-1)[..., 0])
    ll = y_true * np.log(p) + (1 - y_true) * np.log1p(-p)
    return ll.sum(axis=-1) if ll.ndim > 1 else ll


def log_likelihood(y_true: ArrayT, y_prob: ArrayT, *, kind: Kind | None = None, eps: float = EPS) -> ArrayT:
    """Log of the likelihood of the labels under the predicted probabilities (a scalar).

    y_true is either integer class labels ``(N,)`` with ``y_prob`` of shape ``(N, K)``
    (categorical: sum of log q[true class]), one-hot labels of the same shape as ``y_prob``
    (categorical as well), or binary label vectors of the same shape (Bernoulli:
    sum of y log q + (1 - y) log(1 - q)). ``kind`` overrides the automatic choice.

    >>> import numpy as np
    >>> y = np.array([[1, 0, 1], [0, 0, 1]])            # multi-label: binary vectors
    >>> q = np.array([[0.9, 0.2, 0.7], [0.1, 0.4, 0.8]])
    >>> round(float(log_likelihood(y, q)), 4)           # log(.9*.8*.7*.9*.6*.8)
    -1.5245
    """
    return cast(Any, _label_log_probs(y_true, y_prob, kind, eps).sum())


def likelihood(y_true: ArrayT, y_prob: ArrayT, *, kind: Kind | None = None, eps: float = EPS) -> ArrayT:
    """The likelihood itself: the product over examples of the probability of each label.

    For Bernoulli labels this is the product of q^y (1 - q)^(1 - y); for categorical labels the
    product of the predicted probability of each true class. It underflows to 0.0 for large
    data sets: use :func:`log_likelihood` for anything but small examples.

    >>> import numpy as np
    >>> round(float(likelihood(np.array([1, 0, 1]), np.array([0.9, 0.2, 0.6]))), 3)  # .9*.8*.6
    0.432
    """
    ll: Any = log_likelihood(y_true, y_prob, kind=kind, eps=eps)
    return cast(Any, ll.exp() if _is_tensor(ll) else np.exp(ll))


def nll(
    y_true: ArrayT,
    y_prob: ArrayT,
    *,
    reduction: Reduction = "mean",
    kind: Kind | None = None,
    eps: float = EPS,
) -> ArrayT:
    """Negative log-likelihood per example, averaged (``mean``), summed or returned (``none``).

    For categorical labels this equals ``torch.nn.functional.cross_entropy`` applied to the
    logits; for Bernoulli labels it equals ``binary_cross_entropy`` summed over the labels of
    each example.

    >>> import numpy as np
    >>> q = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    >>> np.round(nll(np.array([0, 2]), q, reduction="none"), 4)   # -log .7, -log .8
    array([0.3567, 0.2231])
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    return cast(Any, _reduce(-_label_log_probs(y_true, y_prob, kind, eps), reduction))


def cross_entropy(p: ArrayT, q: ArrayT, *, axis: int = -1, eps: float = EPS) -> ArrayT:
    """H(p, q) = -sum_k p_k log q_k for each distribution along ``axis``.

    With a one-hot ``p`` it is the NLL of the true class; with ``p == q`` it is the entropy of p,
    the smallest value H(p, .) can take (Gibbs' inequality).

    >>> import numpy as np
    >>> p = np.array([0.5, 0.5]); q = np.array([0.9, 0.1])
    >>> round(float(cross_entropy(p, q)), 4), round(float(cross_entropy(p, p)), 4)  # >= log 2
    (1.204, 0.6931)
    """
    qf = _as_float(q)
    if _is_tensor(qf):
        pt = _torch().as_tensor(p, dtype=qf.dtype, device=qf.device)
        return cast(Any, -(pt * qf.clamp_min(eps).log()).sum(dim=axis))
    return cast(Any, -(np.asarray(p) * np.log(np.clip(qf, eps, None))).sum(axis=axis))


def nll_from_logits(
    y_true: ArrayT, logits: ArrayT, *, multilabel: bool = False, reduction: Reduction = "mean"
) -> ArrayT:
    """NLL computed straight from logits (log-softmax / log-sigmoid), exact even where the
    probabilities would round to 0 or 1. ``multilabel`` (or 1-D logits) selects the Bernoulli
    model, one logit per label.

    >>> import numpy as np
    >>> float(nll_from_logits(np.array([1]), np.array([[100.0, -100.0]])))   # q = exp(-200)
    200.0
    """
    z = _as_float(logits)
    ll: Any
    if multilabel or z.ndim == 1:
        # log sigmoid(z) = -softplus(-z) and log(1 - sigmoid(z)) = -softplus(z)
        if _is_tensor(z):
            y = _torch().as_tensor(y_true, dtype=z.dtype, device=z.device)
            sp = _torch().nn.functional.softplus
            ll = -(y * sp(-z) + (1 - y) * sp(z))
        else:
            y_np = _as_float(y_true)
            ll = -(y_np * np.logaddexp(0, -z) + (1 - y_np) * np.logaddexp(0, z))
        ll = ll.sum(-1) if ll.ndim > 1 else ll
    else:
        logp = log_softmax(z)
        if _is_tensor(logp):
            idx = _torch().as_tensor(y_true, device=logp.device).long()
            ll = logp.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        else:
            idx_np = np.asarray(y_true).astype(np.int64)
            ll = np.take_along_axis(logp, idx_np[..., None], axis=-1)[..., 0]
    return cast(Any, _reduce(-ll, reduction))


def entropy_bits(p: ArrayT, *, axis: int = -1) -> ArrayT:
    """Entropy of each distribution in bits (log base 2): 1 bit for a fair coin."""
    return cast(Any, cross_entropy(p, p, axis=axis) / math.log(2))


# ----------------------------------------------------------------- a classifier's task
TaskName = Literal["multiclass", "binary", "multilabel"]


def class_probabilities(logits: ArrayT, task: str, *, temperature: float = 1.0, positive: int = 1) -> ArrayT:
    """A model's logits (N, K) -> its task's probabilities (N, K): softmax for multi-class, the
    sigmoid of each logit for multi-label, and for a binary model (one logit, the positive
    class's) the two columns (1 - p, p) in class order, ``positive`` being the positive class's
    column. Logits are divided by the calibration ``temperature`` first (not for multi-label),
    which keeps every arg-max and the sign of a binary logit.

    >>> import numpy as np
    >>> np.round(class_probabilities(np.array([[0.0], [2.0]]), "binary"), 3)
    array([[0.5  , 0.5  ],
           [0.119, 0.881]])
    """
    z: Any = _as_float(logits)
    if temperature != 1.0 and task != "multilabel":
        z = z / temperature
    if task == "multiclass":
        return cast(Any, softmax(z, axis=1))
    p: Any = sigmoid(z)
    if task == "binary":
        p = p.reshape(-1)
        cols = [1 - p, p] if positive == 1 else [p, 1 - p]
        return cast(Any, _torch().stack(cols, dim=1) if _is_tensor(p) else np.stack(cols, axis=1))
    if task != "multilabel":
        raise ValueError(f"unknown task {task!r}")
    return cast(Any, p)


def decide(
    probs: np.ndarray, task: str, *, thresholds: Sequence[float] | np.ndarray = (), positive: int = 1
) -> np.ndarray:
    """Probabilities (N, K) -> decisions: class indices (N,) for multi-class (the arg-max) and
    binary (the positive class from ``thresholds[0]``, 0.5 by default), a 0/1 matrix (N, K) for
    multi-label (each label from its own threshold, 0.5 by default).

    >>> import numpy as np
    >>> decide(np.array([[0.4, 0.6], [0.8, 0.2]]), "binary", thresholds=[0.7]).tolist()
    [0, 0]
    """
    p = np.asarray(probs)
    if task == "multiclass":
        return p.argmax(axis=1)
    if task == "binary":
        cut = thresholds[0] if len(thresholds) else 0.5
        return np.where(p[:, positive] >= cut, positive, 1 - positive)
    if task != "multilabel":
        raise ValueError(f"unknown task {task!r}")
    th = np.asarray(thresholds if len(thresholds) else [0.5] * p.shape[1], dtype=np.float64)
    return (p >= th[None, :]).astype(np.uint8)
