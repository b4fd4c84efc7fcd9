"""Which engine answers for a model directory: one rule for ``predict``, ``evaluate`` and ``serve``.

An image must get the same probabilities whatever else is in the call, so the engine does not
depend on the number of inputs, and a lower precision is never picked behind the user's back:
int8 (``model.int8.onnx``) and bf16 change probabilities, and run only when ``--precision`` names
them. On the CPU the default is float32, on whichever of the equivalent float32 engines is faster
here: PyTorch, or ONNX Runtime on a current ``model.onnx`` (they agree within float rounding,
about 1e-6). Each runs a batch of 8 of the model's input size a few times (half a second each);
the timings are kept in ``$XDG_CACHE_HOME/imgcls/backends.json`` keyed by the model's and its
export's fingerprints, the CPU (model name and ``runtime.cpu_tier``, which reflects
``ONEDNN_MAX_CPU_ISA``) and its cores, so the measurement is paid once per machine and model, by
the first call large enough to be worth it (more than ``FEW_IMAGES`` inputs, or a server); until
then ONNX Runtime runs (it starts without importing torch). An output being continued keeps the
engine its settings record names. On a GPU PyTorch runs (at its own ``auto`` precision); under
torchrun (several processes would time each other) only a remembered measurement counts;
``--backend`` forces an engine.
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

FEW_IMAGES = 200  # up to this many inputs a call does not pay for measuring (it costs more than it saves)
BATCH = 8  # images per timed call: the ranking, at a quarter of a batch-32 timing's cost

#: a candidate: (label, Classifier.load's backend, its precision)
Candidate = tuple[str, str, str]


@dataclass
class Choice:
    backend: str  # for Classifier.load: torch | onnx
    precision: str  # fp32
    label: str  # e.g. "onnxruntime fp32"
    rates: dict[str, float]  # images per second of each candidate
    cached: bool

    def describe(self) -> str:
        others = ", ".join(f"{k} {v:.0f}" for k, v in self.rates.items() if k != self.label)
        how = "measured earlier on this machine" if self.cached else "measured now"
        return f"backend: {self.label}, {self.rates[self.label]:.0f} img/s ({others}; {how})"


#: the float32 engines, by the label outputs record: Classifier.load's (backend, precision)
FLOAT32 = {"torch fp32": ("torch", "fp32"), "onnxruntime fp32": ("onnx", "fp32")}


def candidates(model_dir: Path) -> list[Candidate]:
    """The float32 engines of ``model_dir`` on this CPU: PyTorch, and ONNX Runtime on a current
    ``model.onnx``."""
    from imgcls.predict.classifier import exported_onnx

    found = ["torch fp32"] + (["onnxruntime fp32"] if exported_onnx(model_dir) is not None else [])
    return [(label, *FLOAT32[label]) for label in found]


def fastest(model_dir: str | Path, *, device: str = "auto", measure: bool = True) -> Choice | None:
    """The fastest float32 engine for ``model_dir`` on this CPU: remembered, else measured now
    (with ``measure``, and not under torchrun); None when there is nothing to choose (a GPU, only
    PyTorch, an ``.onnx`` file) or nothing known."""
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
    """``Classifier.load``'s (backend, precision) for ``model``: the rule of the module docstring.
    ``images``: how many inputs the call has (None: a server, many over its life); ``keep``: the
    engine an output being continued was written with (its settings record); ``say``: where a
    new measurement is said."""
    if Path(model).suffix.lower() == ".onnx" or backend != "auto":
        return backend, precision
    if precision == "int8":
        return "onnx", "int8"
    from imgcls.predict.classifier import gpu_runs

    if precision not in ("auto", "fp32") or device not in ("auto", "cpu") or gpu_runs(device):
        return "torch", precision
    if keep in FLOAT32:  # ONNX Runtime while model.onnx is current (else the guard refuses another model)
        return ("auto" if keep.startswith("onnx") else "torch"), "fp32"
    choice = fastest(model, device=device, measure=images is None or images > FEW_IMAGES)
    if choice is None:  # nothing measured yet: ONNX Runtime on a current model.onnx, else PyTorch
        return "auto", "fp32"
    if say is not None and not choice.cached:
        say(choice.describe())
    return choice.backend, choice.precision


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
