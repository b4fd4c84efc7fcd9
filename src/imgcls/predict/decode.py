"""Decoding for prediction (and evaluate, and the int8 calibration): files (or detection crops) to
the model's uint8 inputs, in worker processes (:mod:`imgcls.data.workers`), a bounded number of
chunks ahead of the model, in input order.

A consumer that stops early (Ctrl-C, an error, enough rows) does not wait for the chunks in
flight: those not started are cancelled and the workers skip the rest of theirs (a shared stop
flag), so the pool ends after at most one image per worker; killing workers instead could cut a
result half-written into the pipe, and the pool's reader thread, and so the interpreter's exit,
would wait for its end for ever. A bad file is an error string, never an exception: a decoder bug
must not stop a million-image run.

On a GPU a :class:`DeviceShare` sends a fixed share of the whole-file JPEGs to the device's decoder
(:mod:`imgcls.data.device_decode`) while the CPU workers decode the rest; which files go is decided
by a hash of the path, so a file gets the same decoder, and the same answer, in every run on the
machine. What the device refuses is decoded on the CPU.
"""

from __future__ import annotations

import itertools
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgcls.config import PreprocessConfig
from imgcls.data.image import MAX_PIXELS, ImageError, read_image
from imgcls.data.preprocess import eval_array, square_size
from imgcls.data.workers import Inline, die_with_parent, process_pool, stopped, submit

__all__ = ["DeviceShare", "decode_crop", "decode_crops", "decode_for_model", "decode_one", "decode_stream",
           "die_with_parent"]  # fmt: skip


def decode_for_model(path: str, cfg: PreprocessConfig, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """One file -> the uint8 (size, size, 3) model input before normalisation."""
    return eval_array(read_image(path, min_size=square_size(cfg), max_pixels=max_pixels), cfg)


def decode_one(path: str, cfg: PreprocessConfig, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """A file -> a stack of one model input (the runner's whole-file items)."""
    return decode_for_model(path, cfg, max_pixels)[None]


def decode_crops(
    item: tuple[str, list[tuple[float, float, float, float]], float],
    cfg: PreprocessConfig,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """(path, normalised boxes, margin) -> uint8 (len(boxes), size, size, 3): the model inputs
    of the square crops, from one decode at the scale the smallest box needs."""
    from imgcls.data.image import crop_draft_size, crop_square

    path, boxes, margin = item
    smallest = min(boxes, key=lambda b: min(b[2], b[3]))
    img = read_image(path, min_size=crop_draft_size(smallest, square_size(cfg)), max_pixels=max_pixels)
    return np.stack([eval_array(crop_square(img, b, margin), cfg) for b in boxes])


def decode_crop(
    item: tuple[str, tuple[float, float, float, float], float],
    cfg: PreprocessConfig,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """(path, normalised box, margin) -> the model input of that square crop (of the whole
    image when the box is NaN: a row without a detection in a table of crops)."""
    path, box, margin = item
    if any(v != v for v in box):
        return decode_for_model(path, cfg, max_pixels)
    return decode_crops((path, [box], margin), cfg, max_pixels)[0]


def _decode_chunk(
    items: list[Any], cfg: PreprocessConfig, max_pixels: int | None, fn: Any = None
) -> list[tuple[Any, str | None]]:
    decode = fn or decode_for_model
    out: list[tuple[Any, str | None]] = []
    for p in items:
        if stopped():  # nobody reads this chunk any more
            out.append((None, "not decoded: the reader stopped"))
            continue
        try:
            out.append((decode(p, cfg, max_pixels), None))
        except ImageError as e:
            out.append((None, str(e)))
        except Exception as e:  # a decoder bug must not stop a million-image run
            out.append((None, f"cannot decode ({type(e).__name__}: {e})"))
    return out


#: the whole-file decoders the device decoder stands in for: whether each stacks its one input
WHOLE_FILES: dict[Any, bool] = {None: False, decode_for_model: False, decode_one: True}


@dataclass
class DeviceShare:
    """The device's part of the decoding: ``decoder.decode(paths)`` gives model inputs or None
    where it refuses (:class:`imgcls.data.device_decode.DeviceDecoder`); it takes the files whose
    path hashes below ``share`` (0..1), a batch of them at a time."""

    decoder: Any
    share: float
    batch: int = 32

    def takes(self, item: Any) -> bool:
        """Whether the device decodes ``item`` (a path; or an upload's bytes in ``serve``)."""
        if not isinstance(item, (str, bytes)):
            return False
        key = item if isinstance(item, bytes) else item.encode("utf-8", "surrogatepass")
        return self.share >= 1 or zlib.crc32(key) % 1024 < self.share * 1024

    def segment(self, chunk: int) -> int:
        """Items read at a time: about one device batch's worth of the device's share."""
        return max(chunk, min(8 * self.batch, round(self.batch / max(self.share, 1e-3))))


def _device_part(
    device: DeviceShare, items: list[str], cfg: PreprocessConfig, max_pixels: int | None, fn: Any, pool: Executor,
    chunk: int,
) -> list[tuple[Any, str | None]]:  # fmt: skip
    """In the device thread: the device's items; what it refuses goes to the CPU's workers (a set of
    PNGs under ``--decoder cuda`` is decoded by every worker, not by this one thread)."""
    try:
        found = device.decoder.decode(items)
    except Exception:  # the device failed as a whole (out of memory...): the CPU does it all
        found = [None] * len(items)
    stack = WHOLE_FILES[fn]
    out: list[Any] = [None if arr is None else (arr[None] if stack else arr, None) for arr in found]
    redo = [j for j, arr in enumerate(found) if arr is None]
    parts = [(at, submit(pool, _decode_chunk, [items[j] for j in at], cfg, max_pixels, fn))
             for at in (redo[a : a + chunk] for a in range(0, len(redo), chunk))]  # fmt: skip
    for at, fut in parts:
        for j, r in zip(at, fut.result(), strict=True):
            out[j] = r
    return out


@dataclass
class _Segment:
    """Consecutive items and the futures decoding them: (positions in ``items``, future)."""

    items: list[Any]
    parts: list[tuple[list[int], Future]]

    def results(self) -> list[tuple[Any, str | None]]:
        out: list[Any] = [None] * len(self.items)
        for at, fut in self.parts:
            for j, r in zip(at, fut.result(), strict=True):
                out[j] = r
        return out


def decode_stream(
    paths: Iterable[Any],
    cfg: PreprocessConfig,
    *,
    workers: int = 2,
    max_pixels: int | None = MAX_PIXELS,
    chunk: int = 8,
    fn: Any = None,
    device: DeviceShare | None = None,
) -> Iterator[tuple[Any, Any, str | None]]:
    """(item, pixels or None, error or None) in input order; at most ``4 * workers`` chunks are
    in flight (32 at the start, while the model loads), so memory stays flat however long
    ``paths`` is. ``fn(item, cfg, max_pixels)`` decodes one item (a module-level function, as it
    runs in worker processes); by default an item is a path and the result its model input.
    ``device``: the device decoder's share of whole files (see the module docstring)."""
    if device is not None and (fn not in WHOLE_FILES or device.share <= 0):
        device = None
    ahead = max(2, 4 * workers)
    window = max(ahead, 32) if workers > 0 else ahead  # a deeper first window covers model loading
    pending: deque[_Segment] = deque()
    it = iter(paths)
    pool, stop = process_pool(workers) if workers > 0 else (Inline(), None)
    gpu: Executor | None = ThreadPoolExecutor(1, thread_name_prefix="imgcls-device-decode") if device else None
    per = device.segment(chunk) if device is not None else chunk
    try:
        exhausted = False
        while True:
            while not exhausted and sum(len(s.parts) for s in pending) < window:
                batch = list(itertools.islice(it, per))
                if not batch:
                    exhausted = True
                    break
                pending.append(_submit(batch, pool, gpu, device, cfg, max_pixels, fn, chunk))
            if not pending:
                return
            window = ahead + (2 if device is not None else 0)
            seg = pending.popleft()
            for p, (arr, err) in zip(seg.items, seg.results(), strict=True):
                yield p, arr, err
    finally:  # at the end nothing is pending; a consumer that stopped early waits for no chunk
        if pending and stop is not None:
            stop.set()
        if gpu is not None:  # first: its part may be waiting on the workers for what the device refused
            gpu.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(
    items: list[Any],
    pool: Executor,
    gpu: Executor | None,
    device: DeviceShare | None,
    cfg: PreprocessConfig,
    max_pixels: int | None,
    fn: Any,
    chunk: int,
) -> _Segment:
    """One segment's work: the device's items as one batch, the rest in chunks for the workers."""
    mine = [j for j, p in enumerate(items) if device is not None and device.takes(p)]
    parts: list[tuple[list[int], Future]] = []
    if mine and gpu is not None and device is not None:
        todo = [items[j] for j in mine]
        parts.append((mine, gpu.submit(_device_part, device, todo, cfg, max_pixels, fn, pool, chunk)))
    taken = set(mine)
    rest = [j for j in range(len(items)) if j not in taken]
    for a in range(0, len(rest), chunk):
        at = rest[a : a + chunk]
        parts.append((at, submit(pool, _decode_chunk, [items[j] for j in at], cfg, max_pixels, fn)))
    return _Segment(items, parts)
