"""What a trained configuration is worth here: its accuracy on the held-out split and its cost on
this machine, with the engine ``imgcls predict`` would use (:func:`imgcls.predict.choose.engine`:
float32 on ONNX Runtime where the model directory holds a current ``model.onnx``, else PyTorch).

- **held out**: the data's test split where it has one; else the validation split, which also
  chose each run's best epoch (and temperature), so its figures are *optimistic* and said so;
- **latency**: one image through the model (normalisation, the forward pass, the test-time flip
  where the model has one: what predict computes per image), the median of repeated calls;
- **throughput**: images per second at predict's default batch (32), decoding excluded (it costs
  the same for every configuration);
- **parameters** and **multiply-adds** of one forward pass at the model's input size
  (:func:`imgcls.models.summary.summarize`), **size** of the file the engine loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: imgcls predict's default --batch-size: the batch throughput is measured at
BATCH = 32
#: the evaluation's figures a compare keeps (the scalars; per-class tables stay with evaluate)
KEPT = ("top1", "top5", "balanced_accuracy", "macro_f1", "nll", "ece", "roc_auc", "average_precision", "mAP",
        "micro_f1", "num_images", "temperature")  # fmt: skip


@dataclass
class Measured:
    split: str  # the split evaluated: test, or val (optimistic)
    optimistic: bool
    metrics: dict[str, float]
    engine: str  # e.g. "onnxruntime fp32"
    tta: str  # the model's test-time augmentation (flip: two passes per image)
    latency_ms: float
    throughput: float
    batch: int
    params: int
    macs: int
    size_bytes: int
    input_size: list[int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(model_dir: Path, *, evaluation: dict[str, Any], say: Callable[[str], Any] | None = None) -> Measured:
    """Evaluate ``model_dir`` (``evaluation``: :func:`imgcls.evaluate.evaluate`'s data, split
    and crop options) and measure it on the engine predict would choose here."""
    from imgcls.evaluate import evaluate

    evaluation = dict(evaluation)
    optimistic = bool(evaluation.pop("optimistic", False))  # a separate validation set, evaluated whole
    clf = predict_engine(model_dir, say=say)
    latency, rate = speed(clf)
    result = evaluate(model_dir, backend="auto", **evaluation)  # predict's engine, as just measured
    params, macs = network_cost(model_dir)
    metrics = {k: float(result.metrics[k]) for k in KEPT if isinstance(result.metrics.get(k), (int, float))}
    return Measured(
        split="val" if optimistic else result.split, optimistic=optimistic or bool(result.selection_split),
        metrics=metrics, engine=clf.engine,
        tta=clf.info.tta, latency_ms=round(latency * 1e3, 4), throughput=round(rate, 1), batch=BATCH, params=params,
        macs=macs, size_bytes=engine_file(model_dir, clf.engine).stat().st_size,
        input_size=list(clf.preprocess.input_size),
    )  # fmt: skip


def speed(clf: Any, *, seconds: float = 0.5) -> tuple[float, float]:
    """(seconds for one image, the median of repeated calls; images per second at :data:`BATCH`).
    Each is timed for about ``seconds`` (twice that for the batch), after a warm-up call; small
    models stop at 100 single-image calls and 10 batches, which already settle the figure."""
    h, w = clf.preprocess.input_size[1:]
    pixels = np.random.default_rng(0).integers(0, 256, (BATCH, h, w, 3), dtype=np.uint8)
    one = pixels[:1]
    times: list[float] = []
    for _ in range(3):
        clf.probabilities(one)  # warm-up: allocations, kernel choice
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < seconds and len(times) < 100):
        t = time.perf_counter()
        clf.probabilities(one)
        times.append(time.perf_counter() - t)
    clf.probabilities(pixels)
    n, start = 0, time.perf_counter()
    while n < 3 or (time.perf_counter() - start < 2 * seconds and n < 10):
        clf.probabilities(pixels)
        n += 1
    return float(np.median(times)), n * BATCH / (time.perf_counter() - start)


def predict_engine(model_dir: Path, say: Callable[[str], Any] | None = None) -> Any:
    """``model_dir`` loaded on the engine ``imgcls predict`` would answer with here."""
    from imgcls.predict import Classifier
    from imgcls.predict.choose import engine

    backend, precision = engine(model_dir, images=None, say=say)  # measured now, or remembered
    return Classifier.load(model_dir, backend=backend, precision=precision)


def retime(models: dict[str, Path], *, rounds: int = 3, seconds: float = 0.3) -> dict[str, tuple[float, float]]:
    """Every configuration's (latency in ms, images per second) timed again, together: ``rounds``
    rounds, each timing every model in turn, the best round of each kept (the lowest latency, the
    highest throughput). Timed once each right after its own training, the figures came from
    different moments, and on a machine with other work one configuration was timed 100 times
    slower than another of the same network; interleaved rounds share the machine's moods."""
    loaded = {name: predict_engine(model_dir) for name, model_dir in models.items()}
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name, clf in loaded.items():
            latency, rate = speed(clf, seconds=seconds)
            was = best.get(name, (float("inf"), 0.0))
            best[name] = (min(was[0], latency * 1e3), max(was[1], rate))
    return {name: (round(lat, 4), round(rate, 1)) for name, (lat, rate) in best.items()}


def busy_note() -> str | None:
    """A note when the machine is running other work (the one-minute load above its cores)."""
    import os

    from imgcls.runtime import physical_cores

    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
    cores = physical_cores()
    if load <= cores + 0.5:
        return None
    return (f"the machine was busy while the speeds were timed (load {load:.1f} on {cores} cores): latency and "
            "throughput are lower than on a quiet machine; run the same command again on a quiet one to time them "
            "again (nothing is trained again)")  # fmt: skip


def network_cost(model_dir: Path) -> tuple[int, int]:
    """(parameters, multiply-adds of one forward pass at the model's input size)."""
    from imgcls.artifacts import load_model
    from imgcls.models.summary import summarize

    model, info = load_model(model_dir)
    s = summarize(model, tuple(info.preprocess.input_size), arch=info.arch)
    return s.total_params, s.total_macs


def engine_file(model_dir: Path, engine: str) -> Path:
    """The file the engine loads: ``model.onnx`` for ONNX Runtime, the weights for PyTorch."""
    from imgcls.artifacts import WEIGHTS

    return model_dir / ("model.onnx" if engine.startswith("onnxruntime") else WEIGHTS)
