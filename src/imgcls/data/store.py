"""Decode once: every training image becomes the uint8 ``S x S`` square of the evaluation
transform (:func:`imgcls.data.transforms.prepare_square`), held in one array.

- ``cache="disk"`` writes the array as a ``.npy`` file under ``$XDG_CACHE_HOME/imgcls/decoded``
  (or ``--cache-dir``) and memory-maps it, so later epochs and later runs on the same files read
  decoded pixels instead of decoding JPEGs again. The key covers every file's path, size and
  modification time plus the square's size and resampling: a changed file means a new cache.
- ``cache="memory"`` builds the same array in RAM for this run only.
- Images held in memory by their source (IDX) are used as they are.

The disk cache is bounded: after a new entry is written, the least recently used others are
removed until the folder holds at most ``max_bytes`` (``--cache-max-gb``, 50 GB by default; the
entry in use is never removed). ``imgcls cache info`` lists the entries, ``imgcls cache clear``
removes them (:func:`cache_entries`, :func:`remove_entries`).

Decoding runs in forked worker processes that write their squares straight into the one array
(the cache file's memory map, or shared memory for ``cache="memory"``): threads did not scale,
the GIL being held for about a fifth of each decode (see :mod:`imgcls.data.workers`). Files that
cannot be used are reported with their reason, never raised.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.config import PreprocessConfig
from imgcls.data.image import MAX_PIXELS, ImageError, crop_draft_size, crop_square, read_image
from imgcls.data.table import DataTable
from imgcls.data.transforms import prepare_square, square_size, to_nchw

log = logging.getLogger(__name__)
_FORMAT = 1  # bump when the stored pixels would change for the same files
_KEY = re.compile(r"[0-9a-f]{32}")  # an entry's name: :func:`_key`
DEFAULT_MAX_BYTES = 50 * 10**9
CHUNK = 16  # rows a worker decodes per task


@dataclass
class Store:
    """uint8 squares (N, S, S, C), row i = table row i; ``ok[i]`` False for unusable rows."""

    array: np.ndarray
    ok: np.ndarray
    path: Path | None = None

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        """uint8 (B, C, S, S) for table rows ``rows`` (sorted reads are kinder to a memmap)."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        batch = np.empty((len(rows), *self.array.shape[1:]), dtype=np.uint8)
        batch[order] = self.array[rows[order]]
        return to_nchw(batch)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imgcls" / "decoded"


def _key(table: DataTable, size: int, cfg: PreprocessConfig, max_pixels: int | None) -> str:
    h = hashlib.sha256()
    h.update(f"{_FORMAT}|{size}|{cfg.interpolation}|{cfg.resize_mode}|{max_pixels}|".encode())
    h.update(f"{table.crop_margin}\n".encode())
    boxes = table.boxes
    for i, p in enumerate(table.paths):
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        box = "" if boxes is None else ",".join(f"{v:.6f}" for v in boxes[i])
        h.update(f"{p}|{stamp}|{box}\n".encode())
    return h.hexdigest()[:32]


def decode_square(
    path: str,
    cfg: PreprocessConfig,
    size: int,
    *,
    max_pixels: int | None = MAX_PIXELS,
    box: np.ndarray | None = None,
    margin: float = 0.1,
) -> np.ndarray:
    """One file (or the square crop of ``box`` in it) -> uint8 (size, size, 3); raises
    ImageError."""
    if box is None or np.isnan(box).any():
        return prepare_square(read_image(path, min_size=size, max_pixels=max_pixels), cfg, size)
    b = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
    img = read_image(path, min_size=crop_draft_size(b, size), max_pixels=max_pixels)
    return prepare_square(crop_square(img, b, margin), cfg, size)


def _decode_into(job: dict[str, Any], i: int) -> str | None:
    """Decode row ``i`` into ``job["array"]``; the reason it cannot be used, or None."""
    table = job["table"]
    box = table.boxes[i] if table.boxes is not None else None
    try:
        job["array"][i] = decode_square(
            table.paths[i], job["cfg"], job["size"], max_pixels=job["max_pixels"], box=box, margin=table.crop_margin
        )
        return None
    except ImageError as e:
        return str(e)
    except Exception as e:  # a decoder bug must not stop the run either
        return f"cannot decode ({type(e).__name__}: {e})"


#: in a worker process: the table, the shared output array and the settings of :func:`_fill`
_JOB: dict[str, Any] = {}


def _take_job(job: dict[str, Any]) -> None:
    global _JOB
    _JOB = job


def _decode_rows(start: int, stop: int) -> list[tuple[int, str | None]]:
    """In a worker: rows ``start:stop`` into the shared array; their reasons."""
    from imgcls.data.workers import stopped

    return [(i, "not decoded: the build stopped" if stopped() else _decode_into(_JOB, i)) for i in range(start, stop)]


def shared_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array in shared anonymous memory: what forked workers write into it, the
    parent sees (``np.zeros`` is private to each process after a fork)."""
    import mmap

    nbytes = int(np.prod(shape))
    if nbytes == 0:
        return np.zeros(shape, dtype=np.uint8)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=np.uint8).reshape(shape)


def _fill(
    table: DataTable,
    array: np.ndarray,
    cfg: PreprocessConfig,
    size: int,
    *,
    workers: int,
    max_pixels: int | None,
    progress: Callable[[int], None] | None,
) -> list[str | None]:
    """Decode every row into ``array``; returns a reason per row (None = decoded). With several
    workers they are forked processes writing straight into ``array`` (a shared memory map: the
    cache file, or :func:`shared_zeros`), not threads: see :mod:`imgcls.data.workers`; threads
    remain where processes cannot be forked."""
    from imgcls.data.workers import can_fork

    job = dict(table=table, array=array, cfg=cfg, size=size, max_pixels=max_pixels)
    n = len(table)
    step = max(1, min(CHUNK, n // max(1, 4 * workers)))
    chunks = [(a, min(n, a + step)) for a in range(0, n, step)]
    if workers > 1 and n > step and can_fork() and _shared(array):
        return _fill_processes(job, chunks, workers, n, progress)
    reasons: list[str | None] = [None] * n
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, (i, reason) in enumerate(pool.map(lambda i: (i, _decode_into(job, i)), range(n)), start=1):
            reasons[i] = reason
            if progress is not None and (done % 64 == 0 or done == n):
                progress(done)
    return reasons


def _shared(array: np.ndarray) -> bool:
    """Whether ``array`` lies in a memory map (the cache file's, or :func:`shared_zeros`'), which
    forked workers write into and the parent sees."""
    import mmap

    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base.obj if isinstance(base, memoryview) else base, mmap.mmap)


def _fill_processes(
    job: dict[str, Any],
    chunks: list[tuple[int, int]],
    workers: int,
    n: int,
    progress: Callable[[int], None] | None,
) -> list[str | None]:
    """:func:`_fill` in ``workers`` forked processes, ``4 * workers`` chunks of rows in flight."""
    from concurrent.futures import FIRST_COMPLETED, Future, wait

    from imgcls.data.workers import process_pool, submit

    reasons: list[str | None] = [None] * n
    pool, stop = process_pool(min(workers, len(chunks)), _take_job, (job,))
    todo, running, done = iter(chunks), set[Future](), 0
    try:
        while True:
            for a, b in itertools.islice(todo, 4 * workers - len(running)):
                running.add(submit(pool, _decode_rows, a, b))
            if not running:
                return reasons
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                for i, reason in fut.result():
                    reasons[i] = reason
                before, done = done, done + len(fut.result())
                if progress is not None and (done // 64 > before // 64 or done == n):
                    progress(done)
    finally:  # nothing is running at the end; an interrupted build waits for no chunk
        if running:
            stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def build_store(
    table: DataTable,
    cfg: PreprocessConfig,
    *,
    cache: str = "disk",
    cache_dir: str | Path | None = None,
    workers: int = 2,
    max_pixels: int | None = MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[Store, list[tuple[str, str]]]:
    """Decode ``table`` into a :class:`Store`; returns it and the (path, reason) skips."""
    if table.pixels is not None:
        px = table.pixels if table.pixels.ndim == 4 else table.pixels[..., None]
        return Store(array=px, ok=np.ones(len(table), dtype=bool)), []
    size = square_size(cfg)
    shape = (len(table), size, size, 3)
    fill: dict[str, Any] = dict(cfg=cfg, size=size, workers=workers, max_pixels=max_pixels, progress=progress)
    if cache == "memory":
        array = shared_zeros(shape)
        return _finish(table, array, _fill(table, array, **fill), None)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    key = _key(table, size, cfg, max_pixels)
    data_file, meta_file = folder / f"{key}.npy", folder / f"{key}.json"
    hit = _cached(data_file, meta_file, shape, len(table))
    if hit is not None:
        if progress is not None:
            progress(len(table))
        return _finish(table, hit[0], hit[1], data_file)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.{time.time_ns()}.npy.tmp"
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    except OSError as e:
        log.warning("decoded-image cache unavailable (%s): decoding into memory", e)
        return build_store(table, cfg, cache="memory", workers=workers, max_pixels=max_pixels, progress=progress)
    try:
        reasons = _fill(table, array, **fill)
        array.flush()
        del array
        os.replace(tmp, data_file)
        from imgcls.io import atomic_write_text

        meta = {"shape": list(shape), "reasons": reasons, "data": str(table.root), "kind": table.kind,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        atomic_write_text(meta_file, json.dumps(meta))
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    evict(folder, max_bytes, keep=key)
    return _finish(table, np.load(data_file, mmap_mode="r"), reasons, data_file)


def _cached(
    data_file: Path, meta_file: Path, shape: tuple[int, ...], rows: int
) -> tuple[np.ndarray, list[str | None]] | None:
    """(the memory-mapped squares, the reasons per row) of a complete cache entry, else None;
    a hit counts as a use for eviction."""
    if not (data_file.is_file() and meta_file.is_file()):
        return None
    with contextlib.suppress(OSError, ValueError, KeyError):
        reasons = json.loads(meta_file.read_text(encoding="utf-8"))["reasons"]
        array = np.load(data_file, mmap_mode="r")
        if array.shape == shape and len(reasons) == rows:
            log.info("decoded-image cache hit: %s", data_file)
            os.utime(meta_file)  # last used: what eviction goes by
            return array, reasons
    return None


# ------------------------------------------------------------------------ the cache folder
@dataclass
class CacheEntry:
    """One decoded data set in the cache folder."""

    key: str
    files: list[Path]
    bytes: int
    last_used: float  # seconds since the epoch
    images: int
    side: int  # the stored squares' side in pixels
    data: str  # the source it was decoded from


def cache_entries(folder: str | Path | None = None) -> list[CacheEntry]:
    """The entries of a cache folder (default :func:`default_cache_dir`), most recently used
    first; unfinished writes of a process that is gone, and a data file whose record was never
    written, count as entries of their own. Only files named by a cache key (32 hex digits) are
    entries: a ``--cache-dir`` that also holds a user's files (``labels.json``, ``x.npy``) never
    has them listed, counted or removed."""
    root = Path(folder) if folder else default_cache_dir()
    if not root.is_dir():
        return []
    out = []
    keys = {f.stem for f in (*root.glob("*.json"), *root.glob("*.npy")) if _KEY.fullmatch(f.stem)}
    for key in keys:
        data_file, meta_file = root / f"{key}.npy", root / f"{key}.json"
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            shape = meta["shape"]
        except (OSError, ValueError, KeyError, TypeError):
            meta, shape = {"data": "(no readable record)"}, [0, 0]
        files = [f for f in (data_file, meta_file) if f.exists()]
        size = sum(f.stat().st_size for f in files)
        used = files[-1].stat().st_mtime  # the record's time (a cache hit touches it), else the data's
        out.append(CacheEntry(key, files, size, used, int(shape[0]), int(shape[1]), str(meta.get("data", "?"))))
    for tmp in root.glob(".*.npy.tmp"):  # ".KEY.PID.TIME.npy.tmp"
        parts = tmp.name.split(".")
        if len(parts) != 6 or not _KEY.fullmatch(parts[1]):
            continue
        pid = parts[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and Path("/proc").is_dir():
            st = tmp.stat()
            out.append(CacheEntry(tmp.name, [tmp], st.st_size, st.st_mtime, 0, 0, "(an unfinished write)"))
    return sorted(out, key=lambda e: -e.last_used)


def remove_entries(entries: list[CacheEntry]) -> int:
    """Delete the entries' files; the bytes freed."""
    freed = 0
    for e in entries:
        for f in e.files:
            with contextlib.suppress(FileNotFoundError):
                size = f.stat().st_size
                f.unlink()
                freed += size
    return freed


def evict(folder: Path, max_bytes: int, keep: str | None = None) -> list[CacheEntry]:
    """Remove the least recently used entries (never ``keep``) until the folder holds at most
    ``max_bytes``; returns those removed."""
    entries = cache_entries(folder)
    total = sum(e.bytes for e in entries)
    removed = []
    for e in reversed(entries):  # least recently used first
        if total <= max_bytes:
            break
        if e.key == keep:
            continue
        remove_entries([e])
        total -= e.bytes
        removed.append(e)
    if removed:
        log.warning("decoded-image cache over %.1f GB: removed %d least recently used entries", max_bytes / 1e9,
                    len(removed))  # fmt: skip
    return removed


def _finish(
    table: DataTable, array: np.ndarray, reasons: list[str | None], path: Path | None
) -> tuple[Store, list[tuple[str, str]]]:
    ok = np.array([r is None for r in reasons], dtype=bool)
    skipped = [(table.paths[i], r) for i, r in enumerate(reasons) if r is not None]
    return Store(array=array, ok=ok, path=path), skipped
