"""Which decoder makes the model's inputs: ``--decoder auto|cpu|cuda``, one rule for ``predict``,
``evaluate`` and ``serve``.

- ``cpu``: the CPU's worker processes decode everything (Pillow, JPEG draft mode).
- ``cuda``: the GPU decodes every JPEG it accepts (nvJPEG, batched: :mod:`imgcls.data.device_decode`);
  what it refuses (PNGs, CMYK, a file nvJPEG fails on) is decoded on the CPU.
- ``auto`` (the default): the CPU, unless the model runs on a CUDA device (its inputs go there
  anyway); then whichever is fastest here of the CPU alone, the device alone, and both at once with
  the files shared in proportion to their rates (by a hash of the path: a file always gets the same
  decoder). Measured once per machine (CPU, cores, GPU, torchvision; with a worker per core, whatever the
  call's workers) and image size
  (megapixels, by powers of two) on generated JPEGs of that size, a second each, and remembered
  in ``$XDG_CACHE_HOME/imgcls/decoders.json``. The first ``predict`` or ``evaluate`` of a size not
  yet measured pays for it whatever its number of inputs, so every call on the machine, from the
  first, decodes a file the same way (one image, one answer: a measurement paid only by large
  calls would switch the decoder under the calls before it). torchrun's processes (they would
  time each other) and ``serve`` (a request never waits for a measurement) use what is
  remembered, else the CPU.

The device's pixels are close to the CPU's but not equal to the bit (see
:mod:`imgcls.data.device_decode`), so a row's scores may move in their third decimal with the
decoder; ``--decoder cpu`` gives the CPU's rows everywhere.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from imgcls.config import PreprocessConfig
from imgcls.data.image import MAX_PIXELS, ImageError, open_image
from imgcls.errors import UserError
from imgcls.predict.choose import _locked
from imgcls.predict.decode import DeviceShare, decode_stream

DECODERS = ("auto", "cpu", "cuda")
SHARES = {"cpu": 0.0, "cuda": 1.0}  # the mixed choice, "cpu+cuda", carries its measured share


def available(gpu: str) -> bool:
    """Whether ``gpu`` has a device decoder here (tests replace this)."""
    from imgcls.data.device_decode import available as found

    return found(gpu)


def device_decoder(cfg: PreprocessConfig, gpu: str, max_pixels: int | None) -> Any:
    """The device decoder for ``cfg`` on ``gpu`` (tests replace this)."""
    from imgcls.data.device_decode import DeviceDecoder

    return DeviceDecoder(cfg, gpu, max_pixels=max_pixels)


def model_gpu(clf: Any) -> str | None:
    """The CUDA device a classifier runs on (its engine says so, e.g. ``torch bf16 (cuda)``), or None."""
    return "cuda" if str(getattr(clf, "engine", "")).endswith("(cuda)") else None


def size_class(sample: str | bytes | None) -> float | None:
    """The megapixels of a JPEG, rounded to a power of two (0.25 at least); None for anything else."""
    if sample is None:
        return None
    try:
        with open_image(sample, max_pixels=None) as img:
            if img.format != "JPEG":
                return None
            mp = img.size[0] * img.size[1] / 1e6
    except (ImageError, OSError):
        return None
    return float(2.0 ** max(-2, round(math.log2(max(mp, 1e-6)))))


def first_jpeg(paths: Iterable[str], look: int = 32) -> str | None:
    """The first JPEG among the first ``look`` paths: the size the measurement is made for."""
    return next((p for p in itertools.islice(paths, look) if size_class(p) is not None), None)


def plan(
    decoder: str,
    cfg: PreprocessConfig,
    *,
    gpu: str | None,
    workers: int,
    sample: str | bytes | None = None,
    measure: bool = True,
    max_pixels: int | None = MAX_PIXELS,
    say: Callable[[str], Any] | None = None,
) -> DeviceShare | None:
    """The device's share of the decoding (None: the CPU decodes all) for a call whose model runs
    on ``gpu`` (None: on the CPU) and whose first JPEG is ``sample``; ``measure`` False (a server):
    what is remembered or the CPU. See the module docstring."""
    if decoder not in DECODERS:
        raise UserError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
    from imgcls.data.device_decode import supports

    if decoder == "cpu" or (decoder == "auto" and gpu is None):
        return None
    where = gpu or "cuda"
    if not available(where):
        if decoder == "cuda":
            raise UserError("--decoder cuda: no CUDA GPU with torchvision's nvJPEG decoder here (use --decoder cpu)")
        return None
    if not supports(cfg):
        if decoder == "cuda":
            raise UserError(f"--decoder cuda: the model's {cfg.interpolation!r} resize has no GPU kernel (use cpu)")
        return None
    if decoder == "cuda":
        return DeviceShare(device_decoder(cfg, where, max_pixels), 1.0)
    mp = size_class(sample)
    if mp is None:
        return None
    # measured and remembered with the machine's own worker count, whatever this call's (a call of a
    # few inputs decodes without workers): one plan for every call, so a file gets one decoder
    from imgcls.runtime import physical_cores

    key = _key(where, physical_cores(), mp)
    rates = _remembered(key)
    if rates is None:
        if not measure or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return None
        rates = measure_rates(cfg, where, physical_cores(), mp, max_pixels)
        _remember(key, rates)
        if say is not None:
            say(describe(rates, mp))
    best = _best(rates)
    share = float(rates["share"]) if best == "cpu+cuda" else SHARES[best]
    return DeviceShare(device_decoder(cfg, where, max_pixels), share) if share > 0 else None


def share_for(
    decoder: str,
    clf: Any,
    paths: Iterable[str],
    *,
    workers: int,
    max_pixels: int | None = MAX_PIXELS,
    say: Callable[[str], Any] | None = None,
) -> DeviceShare | None:
    """:func:`plan` for a call of whole files through ``clf`` (predict, evaluate): nothing is
    listed or imported when the CPU decodes anyway (asked for, or the model runs on the CPU)."""
    gpu = model_gpu(clf)
    if decoder == "cpu" or (decoder == "auto" and gpu is None):
        return None
    return plan(decoder, clf.preprocess, gpu=gpu, workers=workers, sample=first_jpeg(paths), max_pixels=max_pixels,
                say=say)  # fmt: skip


def decode_files(
    paths: Iterable[str],
    cfg: PreprocessConfig,
    *,
    workers: int | None = None,
    decoder: str = "auto",
    gpu: str = "cuda",
    max_pixels: int | None = MAX_PIXELS,
    say: Callable[[str], Any] | None = None,
) -> Iterator[tuple[str, Any, str | None]]:
    """Whole files -> (path, the model's uint8 input or None, error or None), in order, decoded as
    ``--decoder`` would decode them for a model on ``gpu`` (for scripts: the benchmarks, the GPU
    check); ``workers`` default: one per core."""
    from imgcls.runtime import physical_cores

    todo = list(paths)
    n = physical_cores() if workers is None else workers
    device = plan(decoder, cfg, gpu=gpu, workers=n, sample=first_jpeg(todo), max_pixels=max_pixels, say=say)
    return decode_stream(todo, cfg, workers=n, max_pixels=max_pixels, device=device)


class UploadDecoder:
    """``serve``'s device decoding, an upload at a time: with ``cuda`` every JPEG the device
    accepts; with ``auto`` the remembered choice for the upload's size (a server never measures:
    ``predict`` or ``evaluate`` on this machine did), the share by a hash of its bytes."""

    def __init__(
        self, decoder: str, cfg: PreprocessConfig, *, gpu: str | None, workers: int, max_pixels: int | None
    ) -> None:
        self.decoder, self.cfg, self.gpu, self.workers, self.max_pixels = decoder, cfg, gpu, workers, max_pixels
        self.plans: dict[float | None, DeviceShare | None] = {}
        self.fixed = plan(decoder, cfg, gpu=gpu, workers=workers, max_pixels=max_pixels) if decoder == "cuda" else None
        self.off = decoder == "cpu" or (decoder == "auto" and gpu is None)

    def decode(self, data: bytes) -> Any:
        """The model input (size, size, 3) uint8, or None: the CPU decodes it."""
        if self.off:
            return None
        share = self.fixed
        if share is None:
            mp = size_class(data)
            if mp not in self.plans:
                self.plans[mp] = plan(self.decoder, self.cfg, gpu=self.gpu, workers=self.workers, sample=None
                                      if mp is None else data, measure=False, max_pixels=self.max_pixels)  # fmt: skip
            share = self.plans[mp]
        if share is None or not share.takes(data):
            return None
        try:
            return share.decoder.decode([data])[0]
        except Exception:  # the device failed: the CPU answers
            return None


def _best(rates: dict[str, float]) -> str:
    return max(("cpu", "cuda", "cpu+cuda"), key=lambda k: rates.get(k, 0.0))


def describe(rates: dict[str, float], mp: float) -> str:
    """'decoder: cpu+cuda (S% of the files to cuda), R img/s (cpu R1, cuda R2; measured now on
    16-MP JPEGs)', the fastest first."""
    best = _best(rates)
    what = f"{best} ({rates['share']:.0%} of the files to cuda)" if best == "cpu+cuda" else best
    others = ", ".join(f"{k} {rates[k]:.0f}" for k in ("cpu", "cuda", "cpu+cuda") if k != best)
    return f"decoder: {what}, {rates[best]:.0f} img/s ({others}; measured now on {mp:g}-MP JPEGs)"


# ------------------------------------------------------------------------ measuring
def _rate(
    paths: Iterator[str], cfg: PreprocessConfig, workers: int, device: DeviceShare | None, seconds: float
) -> float:
    """Decoded images per second over ``seconds`` once the first result is in (the pool started)."""
    n, t0 = 0, 0.0
    for _, _, err in decode_stream(paths, cfg, workers=workers, device=device):
        if err is not None:
            raise RuntimeError(f"decoder measurement failed: {err}")
        if n == 0:
            t0 = time.perf_counter()
        n += 1
        if time.perf_counter() - t0 >= seconds and n > 1:
            break
    return (n - 1) / max(time.perf_counter() - t0, 1e-9)


def measure_rates(
    cfg: PreprocessConfig, gpu: str, workers: int, mp: float, max_pixels: int | None, seconds: float = 1.0
) -> dict[str, float]:
    """Images per second of the CPU alone, the device alone, and both sharing the files in
    proportion (``share``: the device's), on generated ``mp``-megapixel JPEGs."""
    with tempfile.TemporaryDirectory(prefix="imgcls-decoders-") as tmp:
        paths = _sample_files(Path(tmp), mp)
        decoder = device_decoder(cfg, gpu, max_pixels)
        cpu = _rate(itertools.cycle(paths), cfg, workers, None, seconds)
        dev = _rate(itertools.cycle(paths), cfg, workers, DeviceShare(decoder, 1.0), seconds)
        share = round(dev / (cpu + dev), 3) if cpu + dev > 0 else 0.0
        both = _rate(itertools.cycle(paths), cfg, workers, DeviceShare(decoder, share), seconds)
    return {"cpu": round(cpu, 1), "cuda": round(dev, 1), "cpu+cuda": round(both, 1), "share": share}


def _sample_files(folder: Path, mp: float, distinct: int = 4, names: int = 512) -> list[str]:
    """``names`` paths (links to ``distinct`` JPEGs of ``mp`` megapixels, 4:3, photo-like detail):
    distinct names so the path hash shares them out as it shares real files."""
    import numpy as np
    from PIL import Image

    w = max(16, round(math.sqrt(mp * 1e6 * 4 / 3)))
    h = max(16, round(w * 3 / 4))
    rng = np.random.default_rng(0)
    files = []
    for k in range(distinct):
        coarse = Image.fromarray(rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8))
        img = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        img = (img + rng.integers(-12, 13, img.shape)).clip(0, 255).astype(np.uint8)
        files.append(folder / f"source-{k}.jpg")
        Image.fromarray(img).save(files[-1], "JPEG", quality=90)
    out = []
    for i in range(names):
        link = folder / f"{i:05d}.jpg"
        try:
            link.symlink_to(files[i % distinct])
        except OSError:  # no symbolic links here: the path list repeats the files
            link = files[i % distinct]
        out.append(str(link))
    return out


# ------------------------------------------------------------------------ remembering
def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imgcls" / "decoders.json"


def _key(gpu: str, workers: int, mp: float) -> str:
    import torch
    import torchvision

    from imgcls.runtime import cpu_name, physical_cores

    try:
        name = torch.cuda.get_device_name(torch.device(gpu))
    except (RuntimeError, AssertionError, ValueError):  # not a CUDA device after all
        name = gpu
    return "|".join([cpu_name(), str(physical_cores()), str(workers), name, torchvision.__version__, f"{mp:g}MP"])


def _remembered(key: str) -> dict[str, float] | None:
    try:
        entry = json.loads(cache_file().read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    ok = isinstance(entry, dict) and all(isinstance(entry.get(k), (int, float)) for k in (*SHARES, "cpu+cuda", "share"))
    return entry if ok else None


def _remember(key: str, rates: dict[str, float]) -> None:
    """Keep the rates (the 50 newest keys), read-modify-written under a lock; an unwritable cache
    is skipped."""
    from imgcls.io import atomic_write_text

    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        with _locked(cache_file().with_name("decoders.json.lock")):
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
