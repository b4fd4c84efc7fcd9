"""Decoding for prediction: files (or detection crops) to the model's uint8 inputs, in worker
processes, a bounded number of chunks ahead of the model, in input order.

Workers are forked (they start in milliseconds and share the imported modules) and end with
their parent, ``kill -9`` included. They ignore Ctrl-C: a terminal sends it to the whole process
group, and the parent alone answers it (one line). A consumer that stops early (Ctrl-C, an
error, enough rows) does not wait for the chunks in flight: those not started are cancelled and
the workers skip the rest of theirs (a shared stop flag), so the pool ends after at most one
image per worker; killing workers instead could cut a result half-written into the pipe, and the
pool's reader thread, and so the interpreter's exit, would wait for its end for ever. A bad file
is an error string, never an exception: a decoder bug must not stop a million-image run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

import numpy as np

from imgcls.config import PreprocessConfig
from imgcls.data.image import MAX_PIXELS, ImageError, read_image
from imgcls.data.preprocess import eval_array, square_size


def decode_for_model(path: str, cfg: PreprocessConfig, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """One file -> the uint8 (size, size, 3) model input before normalisation."""
    return eval_array(read_image(path, min_size=square_size(cfg), max_pixels=max_pixels), cfg)


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


#: in a worker process: the parent's stop flag (a multiprocessing Event), set when its consumer stops
_STOP: Any = None


def _decode_chunk(
    items: list[Any], cfg: PreprocessConfig, max_pixels: int | None, fn: Any = None
) -> list[tuple[Any, str | None]]:
    decode = fn or decode_for_model
    out: list[tuple[Any, str | None]] = []
    for p in items:
        if _STOP is not None and _STOP.is_set():  # nobody reads this chunk any more
            out.append((None, "not decoded: the reader stopped"))
            continue
        try:
            out.append((decode(p, cfg, max_pixels), None))
        except ImageError as e:
            out.append((None, str(e)))
        except Exception as e:  # a decoder bug must not stop a million-image run
            out.append((None, f"cannot decode ({type(e).__name__}: {e})"))
    return out


class _Inline(Executor):
    """Decoding in the calling process (``workers=0``)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        f: Future = Future()
        f.set_result(fn(*args, **kwargs))
        return f


def die_with_parent(parent: int) -> None:
    """Worker-process initializer: end when the parent ends, ``kill -9`` included (a forked
    worker holds the pipes' other ends itself, so it would otherwise wait for work for ever):
    Linux's parent-death signal, and a watchdog thread elsewhere. Ctrl-C is the parent's to
    answer: ignored here (it was blocked while this process was started, see :func:`_no_ctrl_c`),
    else each worker printed its own KeyboardInterrupt traceback."""
    import sys
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent ended before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="imgcls-parent-watch", daemon=True).start()


@contextlib.contextmanager
def _no_ctrl_c() -> Iterator[None]:
    """Ctrl-C blocked in this thread while a submit may start workers: a process forked now
    inherits the block and ignores Ctrl-C before it unblocks it, so none is interrupted while it
    starts (the parent still gets a Ctrl-C of this moment, when the block ends)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _start_worker(parent: int, stop: Any) -> None:
    global _STOP
    _STOP = stop
    die_with_parent(parent)


def _executor(workers: int) -> tuple[Executor, Any]:
    """The pool and its stop flag (None for decoding in this process)."""
    if workers <= 0:
        return _Inline(), None
    import multiprocessing as mp

    # fork: workers start in milliseconds and share the already imported modules
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    stop = ctx.Event()
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_start_worker, initargs=(os.getpid(), stop)
    )
    return pool, stop


def decode_stream(
    paths: Iterable[Any],
    cfg: PreprocessConfig,
    *,
    workers: int = 2,
    max_pixels: int | None = MAX_PIXELS,
    chunk: int = 8,
    fn: Any = None,
) -> Iterator[tuple[Any, Any, str | None]]:
    """(item, pixels or None, error or None) in input order; at most ``4 * workers`` chunks are
    in flight (32 at the start, while the model loads), so memory stays flat however long
    ``paths`` is. ``fn(item, cfg, max_pixels)``
    decodes one item (a module-level function, as it runs in worker processes); by default an
    item is a path and the result its model input."""
    ahead = max(2, 4 * workers)
    window = max(ahead, 32) if workers > 0 else ahead  # a deeper first window covers model loading
    pending: deque[tuple[list[Any], Future]] = deque()
    it = iter(paths)
    pool, stop = _executor(workers)
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                batch = [p for _, p in zip(range(chunk), it, strict=False)]
                if not batch:
                    exhausted = True
                    break
                with _no_ctrl_c():
                    pending.append((batch, pool.submit(_decode_chunk, batch, cfg, max_pixels, fn)))
            if not pending:
                return
            window = ahead
            batch, fut = pending.popleft()
            for p, (arr, err) in zip(batch, fut.result(), strict=True):
                yield p, arr, err
    finally:  # at the end nothing is pending; a consumer that stopped early waits for no chunk
        if pending and stop is not None:
            stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
