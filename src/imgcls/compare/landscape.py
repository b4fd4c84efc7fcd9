"""The loss landscape around a trained network (Li, Xu, Taylor, Studer, Goldstein 2018,
"Visualizing the Loss Landscape of Neural Nets"): the training loss on a 2-D slice of weight
space through the trained weights θ*, ``L(θ* + α·δ + β·η)`` for α, β in [-1, 1].

δ and η are random Gaussian directions, *filter-normalised*: each filter of a convolution (each
output row of a linear layer) is scaled to the norm of the same filter in θ*, so that the slice
is comparable across networks despite the scale invariance batch normalisation gives them;
biases and normalisation parameters do not move (their directions are zero), as in the paper.
The loss is the training objective without its regularisers (cross-entropy, no label
smoothing) on a subset of the training images, in evaluation mode (the running statistics the
model predicts with).

The slice is sized to cost about the configuration's training time, level by level rather than
by one forecast (a machine shared with other work runs a forecast late; a machine that gets
busier while a level runs still makes that level late, and the first 5x5 level is always
computed): the subset of images is sized
from measured prices so that decoding it and a 9x9 grid over it take half the time, then the grid
is refined level by level, 5x5, 9x9, 17x17, 33x33 (each level's points include the last's), while
the next level's points, priced at the measured cost of the points already computed, fit in the
time left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
LEVELS = (5, 9, 17, 33)  # points per side, each grid refining the last (2^k + 1: the points nest)
PLANNED = 9  # the subset is sized for this grid in half the time
BATCH = 64  # images per pass, as the probe that prices them
MAX_IMAGES = 1024
MIN_IMAGES = 128  # fewer only where not even these fit


@dataclass
class Surface:
    alphas: np.ndarray  # (n,) steps along δ
    betas: np.ndarray  # (n,) steps along η
    losses: np.ndarray  # (n, n): losses[i, j] at (alphas[j], betas[i])

    @property
    def centre(self) -> float:
        n = len(self.alphas)
        return float(self.losses[n // 2, n // 2])


def filter_normalised_direction(model: nn.Module, generator: torch.Generator) -> list[torch.Tensor]:
    """A random direction in the model's parameter space, each filter scaled to its weights' norm
    (Li et al., section 4); zero for parameters of fewer than two dimensions (biases, norms)."""
    out = []
    for p in model.parameters():
        if p.dim() <= 1:
            out.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        rows = d.reshape(d.shape[0], -1)
        weights = p.detach().reshape(p.shape[0], -1)
        scale = weights.norm(dim=1, keepdim=True) / (rows.norm(dim=1, keepdim=True) + 1e-10)
        out.append((rows * scale).reshape(p.shape))
    return out


def mean_loss(model: nn.Module, batches: Batches, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
    """The mean of ``loss`` over the images of ``batches`` (each batch weighed by its size)."""
    total, n = 0.0, 0
    with torch.inference_mode():
        for x, y in batches:
            total += float(loss(model(x).float(), y)) * len(x)
            n += len(x)
    return total / max(1, n)


class _Slice:
    """The loss at points ``(a, b)`` of the plane θ* + a·δ + b·η, each computed once; the model's
    weights are put back by :meth:`close`."""

    def __init__(self, model: nn.Module, batches: Batches, loss: Callable[..., torch.Tensor], seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.model, self.batches, self.loss = model, batches, loss
        self.params = list(model.parameters())
        self.theta = [p.detach().clone() for p in self.params]
        self.delta = filter_normalised_direction(model, generator)
        self.eta = filter_normalised_direction(model, generator)
        self.known: dict[tuple[float, float], float] = {}
        self.was = model.training
        model.eval()

    def grid(self, steps: int, span: float) -> Surface:
        """The ``steps`` x ``steps`` grid over [-span, span]²; the points an earlier grid computed
        are reused (the levels' coordinates nest exactly: k·(s/h) = 2k·(s/2h) in floating point)."""
        if steps < 3 or steps % 2 == 0:
            raise ValueError(f"steps must be odd and at least 3 (the centre is a grid point), not {steps}")
        half = steps // 2
        coords = np.arange(-half, half + 1, dtype=np.float64) * (span / half)
        losses = np.zeros((steps, steps))
        for i, b in enumerate(coords):
            for j, a in enumerate(coords):
                key = (float(a), float(b))
                if key not in self.known:
                    self.known[key] = self._at(a, b)
                losses[i, j] = self.known[key]
        return Surface(coords.copy(), coords.copy(), losses)

    def _at(self, a: float, b: float) -> float:
        with torch.no_grad():
            for p, t, d, e in zip(self.params, self.theta, self.delta, self.eta, strict=True):
                p.copy_(t + float(a) * d + float(b) * e)
        return mean_loss(self.model, self.batches, self.loss)

    def close(self) -> None:
        with torch.no_grad():
            for p, t in zip(self.params, self.theta, strict=True):
                p.copy_(t)
        self.model.train(self.was)


def loss_surface(
    model: nn.Module,
    batches: Batches,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int = 21,
    span: float = 1.0,
    seed: int = 0,
) -> Surface:
    """The loss on a ``steps`` x ``steps`` grid over [-span, span]² of two filter-normalised
    directions; the centre is the trained weights exactly. The model is left as it came."""
    plane = _Slice(model, batches, loss, seed)
    try:
        return plane.grid(steps, span)
    finally:
        plane.close()


def refined_surface(
    model: nn.Module,
    batches: Batches,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    budget: float,
    span: float = 1.0,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> Surface:
    """The finest grid of :data:`LEVELS` that fits ``budget`` seconds: 5x5 first, then each level
    while its new points, at the measured price of those computed so far, fit in the time left."""
    plane = _Slice(model, batches, loss, seed)
    started = clock()
    try:
        surface = plane.grid(LEVELS[0], span)
        for steps in LEVELS[1:]:
            spent = clock() - started
            price = spent / len(plane.known)
            if price * (steps * steps - len(plane.known)) > budget - spent:
                break
            surface = plane.grid(steps, span)
        return surface
    finally:
        plane.close()


def plan(budget: float, decode_per_image: float, forward_per_image: float, available: int) -> int:
    """The images of the subset: decoding them and a :data:`PLANNED` grid over them in half of
    ``budget``; at least :data:`MIN_IMAGES` where those fit the whole budget, at most
    :data:`MAX_IMAGES`."""
    most = min(available, MAX_IMAGES)
    each = max(1e-9, decode_per_image + PLANNED * PLANNED * forward_per_image)
    images = int(0.5 * budget / each)
    if images < min(MIN_IMAGES, most):
        images = min(int(budget / each), MIN_IMAGES)
    return max(min(8, most), min(most, images))


def landscape(
    model_dir: Path,
    table: Any,
    rows: np.ndarray,
    *,
    budget: float,
    seed: int = 0,
    workers: int | None = None,
) -> dict[str, Any]:
    """The slice for the model of ``model_dir`` over training rows ``rows`` of ``table``, sized
    to ``budget`` seconds; a JSON-ready record (grid, losses, images, seconds)."""
    from imgcls.artifacts import load_model
    from imgcls.data.preprocess import normalize_np
    from imgcls.predict import Classifier

    started = time.perf_counter()
    model, info = load_model(model_dir)
    task = info.make_task()
    clf = Classifier.load(model_dir, backend="torch")  # the model's own preprocessing and decoding
    order = np.random.default_rng(seed).permutation(rows)
    probe = order[: min(BATCH, len(order))]
    t0 = time.perf_counter()
    first = _decoded(clf, table, probe, workers)
    if not len(first[0]):
        return {"error": "none of the training images it was given could be read"}
    decode_each = (time.perf_counter() - t0) / max(1, len(probe))
    x = torch.from_numpy(normalize_np(first[0], info.preprocess))
    mean_loss(model, [(x, first[1])], _loss(task))  # warm-up: the first pass of a shape picks its kernels
    t0 = time.perf_counter()
    mean_loss(model, [(x, first[1])], _loss(task))
    forward_each = (time.perf_counter() - t0) / max(1, len(x))
    images = plan(max(0.0, budget - (time.perf_counter() - started)), decode_each, forward_each, len(order))
    chosen = order[:images]
    pixels, targets = (
        _decoded(clf, table, chosen, workers) if images > len(probe) else (first[0][:images], first[1][:images])
    )
    batches = [
        (torch.from_numpy(normalize_np(pixels[k : k + BATCH], info.preprocess)), targets[k : k + BATCH])
        for k in range(0, len(pixels), BATCH)
    ]  # fmt: skip
    left = budget - (time.perf_counter() - started)
    s = refined_surface(model, batches, _loss(task), budget=left, seed=seed)
    return {"alphas": s.alphas.tolist(), "betas": s.betas.tolist(), "losses": s.losses.round(6).tolist(),
            "centre": round(s.centre, 6), "images": len(pixels), "steps": len(s.alphas),
            "seconds": round(time.perf_counter() - started, 2), "budget": round(budget, 2)}  # fmt: skip


def _loss(task: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training objective without label smoothing or class weights: the task's NLL."""
    from imgcls.tasks import Task

    plain = Task(task.name, list(task.class_names), positive=task.positive)
    return plain.loss


def _decoded(clf: Any, table: Any, rows: np.ndarray, workers: int | None) -> tuple[np.ndarray, torch.Tensor]:
    """uint8 model inputs of ``rows`` (the unreadable left out) and their targets as the loss takes them."""
    from imgcls.evaluate.run import model_inputs

    task = clf.info.make_task()
    names = list(clf.label_names)
    arrays, raw = [], []
    for i, (_path, arr, _err) in zip(rows, model_inputs(clf, table, rows, workers), strict=True):
        if arr is None:
            continue
        arrays.append(arr)
        raw.append(_target(table, int(i), names, task.name))
    h, w = clf.preprocess.input_size[1:]
    pixels = np.stack(arrays) if arrays else np.zeros((0, h, w, 3), np.uint8)
    return pixels, task.targets(np.array(raw) if raw else np.zeros(0, np.int64))


def _target(table: Any, i: int, names: list[str], task: str) -> Any:
    """Row ``i``'s label as the model's class index (multi-label: its multi-hot row)."""
    labels = table.label_names(i)
    if task == "multilabel":
        return [1.0 if n in labels else 0.0 for n in names]
    return names.index(labels[0])
