"""Which engine runs a model directory fastest on this machine, by measurement.

The candidates are what the directory and the CPU offer: PyTorch at ``--precision auto`` (bf16
autocast where the CPU has bf16 units, else float32), ONNX Runtime on a current ``model.onnx``
(float32), and ONNX Runtime on a current ``model.int8.onnx`` (which ``imgcls export --quantize
int8`` writes only when its accuracy cost passed). Each runs a batch of the model's input size a
few times (half a second each, at most 8 images a batch); the fastest wins. The timings are kept in
``$XDG_CACHE_HOME/imgcls/backends.json`` keyed by the model's fingerprint, the CPU (model name
and ``runtime.cpu_tier``, which reflects ``ONEDNN_MAX_CPU_ISA``), the threads and the batch size,
so the measurement is paid once per machine and model. On a GPU PyTorch runs, and under torchrun
(several processes would time each other) only a remembered measurement counts; ``--backend``
and ``--precision`` force a choice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FEW_IMAGES = 200  # up to this many images: no measuring (it costs more than it can save)

#: a candidate: (label, Classifier.load's backend, its precision)
Candidate = tuple[str, str, str]


@dataclass
class Choice:
    backend: str  # for Classifier.load: torch | onnx
    precision: str  # auto | int8 | fp32 ...
    label: str  # e.g. "onnxruntime int8"
    rates: dict[str, float]  # images per second of each candidate
    cached: bool

    def describe(self) -> str:
        others = ", ".join(f"{k} {v:.0f}" for k, v in self.rates.items() if k != self.label)
        how = "measured earlier on this machine" if self.cached else "measured now"
        return f"backend: {self.label}, {self.rates[self.label]:.0f} img/s ({others}; {how})"


def candidates(model_dir: Path) -> list[Candidate]:
    from imgcls.artifacts import current_int8
    from imgcls.predict.classifier import exported_onnx
    from imgcls.runtime import cpu_has_fast_bf16

    out: list[Candidate] = [("torch bf16" if cpu_has_fast_bf16() else "torch fp32", "torch", "auto")]
    if exported_onnx(model_dir) is not None:
        out.append(("onnxruntime fp32", "onnx", "auto"))
    if current_int8(model_dir) is not None:
        out.append(("onnxruntime int8", "onnx", "int8"))
    return out


def fastest(model_dir: str | Path, *, batch_size: int, device: str = "auto") -> Choice | None:
    """The fastest candidate for ``model_dir`` on this CPU, or None when there is nothing to
    choose (a GPU, only PyTorch, an ``.onnx`` file)."""
    path = Path(model_dir)
    if path.suffix.lower() == ".onnx" or device not in ("auto", "cpu") or _has_cuda(device):
        return None
    found = candidates(path)
    if len(found) < 2:
        return None
    key = _key(path, batch_size)
    rates, cached = _cached(key), True
    if rates is None or set(rates) != {c[0] for c in found}:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: the processes would time each other
            return None
        rates, cached = {label: _rate(path, b, p, batch_size) for label, b, p in found}, False
        _store(key, rates)
    best = max(found, key=lambda c: rates[c[0]])
    return Choice(backend=best[1], precision=best[2], label=best[0], rates=rates, cached=cached)


def engine(
    model: str | Path, *, backend: str, precision: str, device: str, batch_size: int, say: Callable[[str], Any] | None
) -> tuple[str, str]:
    """``Classifier.load``'s (backend, precision): ``backend`` ``auto`` with ``precision`` ``auto``
    is the fastest engine measured here (said through ``say``), else PyTorch; anything else is
    taken as given."""
    if backend != "auto":
        return backend, precision
    choice = fastest(model, batch_size=batch_size, device=device) if precision == "auto" else None
    if choice is None:
        return "torch", precision
    if say is not None:
        say(choice.describe())
    return choice.backend, choice.precision


def _has_cuda(device: str) -> bool:
    """Whether PyTorch would run on a GPU; without an NVIDIA driver, known without importing torch."""
    if device == "cpu" or not (Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia*"))):
        return False
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def _rate(path: Path, backend: str, precision: str, batch_size: int, seconds: float = 0.5) -> float:
    """Images per second on a batch of at most 8 (the ranking, at a quarter of a batch-32 timing's
    cost): a warm-up call, then at least two calls and ``seconds``."""
    from imgcls.predict.classifier import Classifier

    clf = Classifier.load(path, device="cpu", precision=precision, backend=backend)
    size = clf.preprocess.input_size
    batch_size = min(batch_size, 8)
    x = np.random.default_rng(0).standard_normal((batch_size, *size)).astype(np.float32)
    engine = clf.backend
    engine.logits(x)  # warm-up: first-call allocations, kernel choice
    n, t = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t < seconds:
        engine.logits(x)
        n += 1
    return round(n * batch_size / (time.perf_counter() - t), 1)


def _key(path: Path, batch_size: int) -> str:
    from imgcls.outputs import model_fingerprint
    from imgcls.runtime import cpu_name, cpu_tier, physical_cores

    files = [path / "model.onnx", path / "model.int8.onnx"]
    onnx = "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file())
    return "|".join([model_fingerprint(path), onnx, cpu_name(), cpu_tier(), str(physical_cores()), str(batch_size)])


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imgcls" / "backends.json"


def _cached(key: str) -> dict[str, float] | None:
    try:
        entry = json.loads(cache_file().read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) else None


def _store(key: str, rates: dict[str, float]) -> None:
    """Remember the timings (the 50 newest machine/model pairs); an unwritable cache is skipped."""
    from imgcls.io import atomic_write_text

    try:
        known = json.loads(cache_file().read_text(encoding="utf-8"))
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    known.pop(key, None)
    known[key] = rates
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_file(), json.dumps(dict(list(known.items())[-50:]), indent=1) + "\n")
    except OSError:
        pass
