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

The grid and the subset are sized from measured prices so that the whole slice (decoding the
subset, n² passes over it) costs at most the configuration's training time: 21x21 points where
that fits, down to 5x5 and fewer images where it does not.
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
GRIDS = (21, 15, 11, 9, 7, 5)  # points per side, preferred first
MAX_IMAGES = 1024
MIN_IMAGES = 128  # below this a larger grid is given up first


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
    if steps < 3 or steps % 2 == 0:
        raise ValueError(f"steps must be odd and at least 3 (the centre is a grid point), not {steps}")
    generator = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]
    delta = filter_normalised_direction(model, generator)
    eta = filter_normalised_direction(model, generator)
    half = steps // 2
    coords = np.arange(-half, half + 1, dtype=np.float64) * (span / half)
    losses = np.zeros((steps, steps))
    was = model.training
    model.eval()
    try:
        for i, b in enumerate(coords):
            for j, a in enumerate(coords):
                with torch.no_grad():
                    for p, t, d, e in zip(params, theta, delta, eta, strict=True):
                        p.copy_(t + float(a) * d + float(b) * e)
                losses[i, j] = mean_loss(model, batches, loss)
    finally:
        with torch.no_grad():
            for p, t in zip(params, theta, strict=True):
                p.copy_(t)
        model.train(was)
    return Surface(coords.copy(), coords.copy(), losses)


def plan(budget: float, decode_per_image: float, forward_per_image: float, available: int) -> tuple[int, int]:
    """(points per side, images) for a slice that costs at most ``budget`` seconds: decoding the
    images once plus ``n²`` passes over them. The largest grid of :data:`GRIDS` with at least
    :data:`MIN_IMAGES` images (up to :data:`MAX_IMAGES`), else 5x5 on as many images as fit."""
    most = min(available, MAX_IMAGES)
    for n in GRIDS:
        images = int(budget / max(1e-9, decode_per_image + n * n * forward_per_image))
        if images >= min(MIN_IMAGES, most):
            return n, min(images, most)
    n = GRIDS[-1]
    return n, max(min(8, most), min(most, int(budget / max(1e-9, decode_per_image + n * n * forward_per_image))))


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
    probe = order[: min(64, len(order))]
    t0 = time.perf_counter()
    first = _decoded(clf, table, probe, workers)
    if not len(first[0]):
        return {"error": "none of the training images it was given could be read"}
    decode_each = (time.perf_counter() - t0) / max(1, len(probe))
    x = torch.from_numpy(normalize_np(first[0], info.preprocess))
    mean_loss(model, [(x[:8], first[1][:8])], _loss(task))  # warm-up
    t0 = time.perf_counter()
    mean_loss(model, [(x, first[1])], _loss(task))
    forward_each = (time.perf_counter() - t0) / max(1, len(x))
    spent = time.perf_counter() - started
    steps, images = plan(max(0.0, budget - spent), decode_each, forward_each, len(order))
    chosen = order[:images]
    pixels, targets = (
        _decoded(clf, table, chosen, workers) if images > len(probe) else (first[0][:images], first[1][:images])
    )
    batches = [
        (torch.from_numpy(normalize_np(pixels[k : k + 256], info.preprocess)), targets[k : k + 256])
        for k in range(0, len(pixels), 256)
    ]  # fmt: skip
    s = loss_surface(model, batches, _loss(task), steps=steps, seed=seed)
    return {"alphas": s.alphas.tolist(), "betas": s.betas.tolist(), "losses": s.losses.round(6).tolist(),
            "centre": round(s.centre, 6), "images": len(pixels), "steps": steps,
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
