"""Decoding worker processes, shared by the decode-once store (:mod:`imgcls.data.store`) and
prediction's decoding (:mod:`imgcls.predict.decode`).

Processes, not threads: Pillow releases the GIL while it decodes and resizes, but the rest of a
decode (opening the file, parsing the JPEG markers and EXIF in Python, the array copies) holds it,
about a fifth of the time on a 1024x768 JPEG; threads waiting for it took turns, so two threads
decoded no faster than one on a busy machine, and 16 could never reach 16 times one (Amdahl: at
most about 5). Forked workers start in milliseconds, share the imported modules and anything the
parent set up before the fork (a table of paths, a shared output array), and end with their parent,
``kill -9`` included. They ignore Ctrl-C: a terminal sends it to the whole process group, and the
parent alone answers it (one line).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any


def can_fork() -> bool:
    """Whether worker processes can be forked here (Linux, macOS; not Windows)."""
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods()


def die_with_parent(parent: int, deathsig: bool = True) -> None:
    """Worker-process initializer: end when the parent ends, ``kill -9`` included (a forked
    worker holds the pipes' other ends itself, so it would otherwise wait for work for ever):
    Linux's parent-death signal where ``deathsig``, and a watchdog thread polling the parent's
    pid. The signal fires when the *thread* that forked the worker ends, not its process, so it is
    armed only for workers forked by the main thread (a worker forked by a helper thread was killed
    with that thread, perhaps holding the pool's queue lock: the other workers then waited for it
    for ever); the others have the watchdog (a second's delay). Ctrl-C is the parent's to
    answer: ignored here (it was blocked while this process was started, see :func:`no_ctrl_c`),
    else each worker printed its own KeyboardInterrupt traceback."""
    import sys
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if deathsig and sys.platform.startswith("linux"):
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
def no_ctrl_c() -> Iterator[None]:
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


#: in a worker process: the parent's stop flag (a multiprocessing Event), set when its consumer stops
STOP: Any = None


def stopped() -> bool:
    """In a worker: whether the parent stopped reading (skip the rest of the chunk)."""
    return STOP is not None and STOP.is_set()


def _start(
    parent: int, deathsig: bool, stop: Any, setup: Callable[..., None] | None, args: tuple[Any, ...]
) -> None:  # fmt: skip
    global STOP
    STOP = stop
    die_with_parent(parent, deathsig)
    if setup is not None:
        setup(*args)


class Inline(Executor):
    """Work in the calling process (``workers=0``)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        f: Future = Future()
        f.set_result(fn(*args, **kwargs))
        return f


def process_pool(
    workers: int, setup: Callable[..., None] | None = None, args: tuple[Any, ...] = ()
) -> tuple[Executor, Any]:
    """``workers`` forked worker processes (spawned where fork is missing) and their stop flag;
    ``setup(*args)`` runs in each as it starts (with fork the arguments are inherited, never
    pickled: a table of a million paths or a shared array costs nothing to hand over).

    With fork the workers are started here, by the calling thread, not by whichever thread submits
    first (prediction's device-decoding thread submits what the device refuses, and ends before
    the pool): see :func:`die_with_parent`."""
    import multiprocessing as mp
    import threading

    fork = can_fork()
    ctx = mp.get_context("fork" if fork else "spawn")
    stop = ctx.Event()
    main = threading.current_thread() is threading.main_thread()
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_start, initargs=(os.getpid(), main, stop, setup, args)
    )
    if fork:  # the first submit forks every worker (Python forks them all at once)
        submit(pool, os.getpid).result()
    return pool, stop


def submit(pool: Executor, fn: Any, /, *args: Any) -> Future:
    """``pool.submit`` with Ctrl-C blocked (the first submit forks the workers)."""
    with no_ctrl_c():
        return pool.submit(fn, *args)
