"""Which engine answers for a model directory: one rule for ``predict``, ``evaluate`` and ``serve``.

An image must get the same probabilities whatever else is in the call and whatever calls came
before, so the engine is a property of the model directory alone: ONNX Runtime float32 on a
current ``model.onnx``, else PyTorch float32. A lower precision is never picked behind the
user's back: int8 (``model.int8.onnx``) and bf16 change probabilities, and run only when
``--precision`` names them. On a GPU PyTorch runs (at its own ``auto`` precision); an output
being continued keeps the engine its settings record names; ``--backend`` forces an engine.

Why not the faster engine, measured: a measurement is paid by some call (measuring in a
one-image call costs more than the call, and imports torch), so until then another engine
answers; and a remembered timing can be lost (another cache, evicted, unwritable) and re-measured
the other way when the two are close. Either way the same image's answer would depend on the
calls before it. ONNX Runtime is the default because it starts without importing torch and is
rarely slower on a CPU; the two agree within float rounding (about 1e-6).

The two float32 engines are still timed, for the record and never to switch: a large call (more
than ``FEW_IMAGES`` inputs) or a server times each on a batch of 8 of the model's input size (half
a second each) once per model and machine, keeps the timings in
``$XDG_CACHE_HOME/imgcls/backends.json`` (keyed by the model's and its export's fingerprints, the
CPU's model name and ``runtime.cpu_tier``, which reflects ``ONEDNN_MAX_CPU_ISA``, and its cores;
read-modify-written under a lock) and says them, with ``--backend torch`` where PyTorch is faster
here. Under torchrun (several processes would time each other) nothing is timed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FEW_IMAGES = 200  # up to this many inputs a call does not time the engines (it would cost more than the call)
DEFAULT = "onnxruntime fp32"  # the engine that answers where model.onnx is current (the timings' reference)
BATCH = 8  # images per timed call: the ranking, at a quarter of a batch-32 timing's cost

#: a candidate: (label, Classifier.load's backend, its precision)
Candidate = tuple[str, str, str]


@dataclass
class Choice:
    backend: str  # for Classifier.load: torch | onnx
    precision: str  # fp32
    label: str  # the faster one, e.g. "onnxruntime fp32"
    rates: dict[str, float]  # images per second of each candidate
    cached: bool

    def describe(self, answering: str = DEFAULT) -> str:
        """The timings, from the engine that answers (``answering``); where the other is faster
        by a tenth or more, how to choose it."""
        others = ", ".join(f"{k} {v:.0f}" for k, v in self.rates.items() if k != answering)
        how = "measured earlier on this machine" if self.cached else "measured now, once for this model and machine"
        line = f"engine: {answering}, {self.rates[answering]:.0f} img/s here ({others}; {how})"
        if self.label != answering and self.rates[self.label] >= 1.1 * self.rates[answering]:
            flag = "torch" if self.label.startswith("torch") else "onnx"
            line += (f"; {self.label} is {self.rates[self.label] / self.rates[answering]:.1f}x faster here: "
                     f"--backend {flag} runs it (the same answers within float rounding)")  # fmt: skip
        return line


#: the float32 engines, by the label outputs record: Classifier.load's (backend, precision)
FLOAT32 = {"torch fp32": ("torch", "fp32"), "onnxruntime fp32": ("onnx", "fp32")}


def candidates(model_dir: Path) -> list[Candidate]:
    """The float32 engines of ``model_dir`` on this CPU: PyTorch, and ONNX Runtime on a current
    ``model.onnx``."""
    from imgcls.predict.classifier import exported_onnx

    found = ["torch fp32"] + (["onnxruntime fp32"] if exported_onnx(model_dir) is not None else [])
    return [(label, *FLOAT32[label]) for label in found]


def fastest(model_dir: str | Path, *, device: str = "auto", measure: bool = True) -> Choice | None:
    """The faster float32 engine for ``model_dir`` on this CPU, by timings remembered, else
    measured now (with ``measure``, and not under torchrun); None when there is nothing to compare
    (a GPU, only PyTorch, an ``.onnx`` file) or nothing known. For the record: :func:`engine` never
    switches to it."""
    from imgcls.predict.classifier import gpu_runs

    path = Path(model_dir)
    if path.suffix.lower() == ".onnx" or device not in ("auto", "cpu") or gpu_runs(device):
        return None
    key = _key(path)
    rates = _cached(key)  # timings of both engines: model.onnx was current (the key holds both files' fingerprints)
    if rates is None or set(rates) != set(FLOAT32):
        if not measure or int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: the processes would time each other
            return None
        found = candidates(path)
        if len(found) < 2:
            return None
        rates = {label: _rate(path, b, p) for label, b, p in found}
        _store(key, rates)
        cached = False
    else:
        cached = True
    best = max(rates, key=rates.__getitem__)
    return Choice(*FLOAT32[best], label=best, rates=rates, cached=cached)


def engine(
    model: str | Path,
    *,
    backend: str = "auto",
    precision: str = "auto",
    device: str = "auto",
    images: int | None = None,
    keep: str | None = None,
    say: Callable[[str], Any] | None = None,
) -> tuple[str, str]:
    """``Classifier.load``'s (backend, precision) for ``model``: the rule of the module docstring,
    the same whatever ``images`` (how many inputs the call has; None: a server, many over its
    life) and whatever was measured. ``keep``: the engine an output being continued was written
    with (its settings record); ``say``: where the engines' timings are said, the first time a
    call of more than ``FEW_IMAGES`` inputs (or a server) times them."""
    if Path(model).suffix.lower() == ".onnx" or backend != "auto":
        return backend, precision
    if precision == "int8":
        return "onnx", "int8"
    from imgcls.predict.classifier import gpu_runs

    if precision not in ("auto", "fp32") or device not in ("auto", "cpu") or gpu_runs(device):
        return "torch", precision
    if keep in FLOAT32:  # ONNX Runtime while model.onnx is current (else the guard refuses another model)
        return ("auto" if keep.startswith("onnx") else "torch"), "fp32"
    if say is not None and (images is None or images > FEW_IMAGES):
        timed = fastest(model, device=device)  # for the record: both engines exist, so ONNX Runtime answers
        if timed is not None and not timed.cached:
            say(timed.describe(DEFAULT))
    return "auto", "fp32"  # ONNX Runtime on a current model.onnx, else PyTorch


def _rate(path: Path, backend: str, precision: str, seconds: float = 0.5) -> float:
    """Images per second on a batch of ``BATCH``: a warm-up call, then at least two calls and
    ``seconds``."""
    from imgcls.predict.classifier import Classifier

    clf = Classifier.load(path, device="cpu", precision=precision, backend=backend)
    size = clf.preprocess.input_size
    x = np.random.default_rng(0).standard_normal((BATCH, *size)).astype(np.float32)
    engine = clf.backend
    engine.logits(x)  # warm-up: first-call allocations, kernel choice
    n, t = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t < seconds:
        engine.logits(x)
        n += 1
    return round(n * BATCH / (time.perf_counter() - t), 1)


def _key(path: Path) -> str:
    from imgcls.outputs import model_fingerprint
    from imgcls.runtime import cpu_name, cpu_tier, physical_cores

    onnx = path / "model.onnx"
    exported = model_fingerprint(onnx) if onnx.is_file() else ""
    return "|".join([model_fingerprint(path), exported, cpu_name(), cpu_tier(), str(physical_cores())])


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
    """Remember the timings (the 50 newest machine/model pairs); an unwritable cache is skipped.
    Read, changed and written under a lock: two processes measuring at once keep both."""
    from imgcls.io import atomic_write_text

    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        with _locked(cache_file().with_name("backends.json.lock")):
            try:
                known = json.loads(cache_file().read_text(encoding="utf-8"))
                known = known if isinstance(known, dict) else {}
            except (OSError, ValueError):
                known = {}
            known.pop(key, None)
            known[key] = rates
            atomic_write_text(cache_file(), json.dumps(dict(list(known.items())[-50:]), indent=1) + "\n")
    except OSError:
        pass


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed) for the block; where the
    platform has no ``fcntl`` (Windows), none."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
