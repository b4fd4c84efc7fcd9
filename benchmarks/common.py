"""Shared pieces of the benchmarks: data built from real photographs, whole-process timing.

Each class is one of scikit-image's bundled photographs; its images are random crops of it
(30-100% of the area, any aspect from 3:4 to 4:3), mirrored half of the time, with brightness,
contrast and colour shifts, resized to the size under test and saved as JPEG (quality 90).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
          "immunohistochemistry", "retina"]  # fmt: skip
ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
BENCH = Path(tempfile.gettempdir()) / "imgcls-bench"  # data sets and models kept between runs
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def fashion_mnist() -> Path:
    """Debian's Fashion-MNIST folder, or exit saying how to install it."""
    if not FASHION_MNIST.is_dir():
        raise SystemExit(f"{FASHION_MNIST} is missing: apt-get install dataset-fashion-mnist")
    return FASHION_MNIST


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A temporary folder for one run, removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="imgcls-bench-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cached_model(name: str, train_args: list[str], work: Path) -> Path:
    """``BENCH/name/model``, trained with ``imgcls train TRAIN_ARGS`` the first time it is needed."""
    model = BENCH / name / "model"
    if not (model / "model.safetensors").is_file():
        shutil.rmtree(model.parent, ignore_errors=True)
        timed(
            [str(BIN / "imgcls"), "train", *train_args, "--out", str(model.parent), "--cache-dir", str(work / "cache")]
        )
    return model


def photo(name: str) -> Image.Image:
    from skimage import data

    arr = getattr(data, name)()
    if isinstance(arr, tuple):
        arr = arr[0]
    return Image.fromarray(arr).convert("RGB")


def variant(img: Image.Image, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = img.size
    area = rng.uniform(0.3, 1.0) * w * h
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, np.sqrt(area * ratio)))
    ch = int(min(h, np.sqrt(area / ratio)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.7, 1.3))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.7, 1.3))
    shift = rng.uniform(0.85, 1.15, 3)
    arr = np.asarray(out, dtype=np.float32) * shift
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write_class(args: tuple[str, Path, int, tuple[int, int], int, int]) -> None:
    name, folder, count, size, seed, start = args
    rng = np.random.default_rng(seed)
    img = photo(name)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        target = folder / f"{name}_{start + i:05d}.jpg"
        if not target.exists():
            variant(img, rng, size).save(target, "JPEG", quality=90)


def make_dataset(root: Path, per_class: dict[str, int], size: tuple[int, int], classes: int = 8, seed: int = 0) -> Path:
    """root/<split>/<class>/*.jpg with per_class[split] images of each class (idempotent)."""
    jobs = []
    for k, name in enumerate(PHOTOS[:classes]):
        start = 0
        for s, (split, count) in enumerate(per_class.items()):
            folder = root / split / name if split else root / name
            jobs.append((name, folder, count, size, seed * 1000 + k * 10 + s, start))
            start += count
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(_write_class, jobs))
    return root


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS of the child in MiB, stdout) of a whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) // 1024, r.stdout


def peak_rss_mib(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) measured by /usr/bin/time (one fresh process)."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    kb = int(next(line for line in r.stderr.splitlines() if line.startswith("MAXRSS")).split()[1])
    return wall, kb / 1024


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict[str, object]:
    """The machine a figure comes from: CPU model, tier and features, cores, the oneDNN limit,
    and ``emulated`` when ``avx2_only.py`` hides the CPU's upper tiers."""
    from imgcls.runtime import cpu_features, cpu_name, cpu_tier

    out = {"cpu": cpu_name(), "tier": cpu_tier(), "features": cpu_features(), "cores": os.cpu_count(),
           "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}  # fmt: skip
    if os.environ.get("IMGCLS_BENCH_EMULATED"):
        out["emulated"] = os.environ["IMGCLS_BENCH_EMULATED"]
    return out


def report(name: str, rows: dict[str, object], out: Path | None) -> None:
    """Print (and with ``out`` write) the figures as JSON, with the machine they come from."""
    doc = {"benchmark": name, **rows, "machine": machine()}
    print(json.dumps(doc, indent=2))
    if out is not None:
        out.write_text(json.dumps(doc, indent=2) + "\n")
