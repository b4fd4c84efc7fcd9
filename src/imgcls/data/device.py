"""Batches made where the model is: the one interface between the decoded-image store and the
device that trains on it.

:func:`place` puts a :class:`~imgcls.data.store.Store`'s uint8 squares where the batches are
gathered, and returns a :class:`Placed` whose ``batches(plan)`` yields each planned batch's usable
rows and their uint8 (B, C, S, S) pixels **on the device**; augmentation and normalisation
(:mod:`imgcls.data.transforms`) then run there as batched tensor operations. Three placements:

- ``device``: the whole store is one tensor on the device (on a GPU, when it fits in
  :data:`STORE_SHARE` of the device's free memory); a batch is one ``index_select``, no copy.
- ``pinned`` (CUDA only): the store stays in host memory (RAM or the memory-mapped disk cache);
  each batch is gathered into one of two pinned buffers and copied on a side CUDA stream while
  the step before it computes (double buffering), the training stream waiting on the copy's
  event only when it uses the batch.
- ``host``: a CPU trains: batches are gathered from the store as they are (no copy at all).

Every placement gathers the same rows into the same uint8 layout, so a batch's pixels, and the
augmentation drawn from ``(seed, epoch, step)``, are the same whichever placement made it (the
tests compare a store placed as a tensor with the memory-mapped one, bit for bit).
``IMGCLS_STORE=device|pinned`` overrides the choice (benchmarks, troubleshooting).

CUDA-only code (streams, events, pinned memory) lives here and is taken only where
``torch.cuda.is_available()``; the CPU path is the same code with ``device="cpu"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

from imgcls.data.store import Store
from imgcls.errors import UserError
from imgcls.runtime import DeviceFacts, device_facts, to_device

#: the share of a GPU's free memory the store may take (the rest: the model, its activations)
STORE_SHARE = 0.5
#: ``IMGCLS_STORE``: the placement asked for (``auto``: :func:`choose_placement` decides)
PLACEMENT_ENV = "IMGCLS_STORE"
OVERRIDES = ("auto", "device", "pinned")
_UPLOAD_ROWS_BYTES = 256 << 20  # the store goes to the device in slices of about this size

Batch = tuple[np.ndarray, torch.Tensor]  # the usable rows, their uint8 (B, C, S, S) pixels


class Placed(Protocol):
    """A placed store: ``where`` it is, the ``device`` its batches come out on."""

    where: str
    device: torch.device

    def batches(self, plan: list[np.ndarray]) -> Iterator[Batch]: ...


def choose_placement(
    store_bytes: int, facts: DeviceFacts, *, cuda: bool, share: float = STORE_SHARE, override: str = "auto"
) -> str:
    """Where a store of ``store_bytes`` goes for training on the device ``facts`` describes:
    ``device`` where it fits in ``share`` of the device's free memory, else ``pinned``; without
    CUDA (``cuda`` False) ``host``, or ``device`` (a tensor in RAM) when ``override`` asks."""
    if override not in OVERRIDES:
        raise UserError(f"{PLACEMENT_ENV}={override!r}: choose one of {', '.join(OVERRIDES)}")
    if facts.type != "cuda" or not cuda:
        return "device" if override == "device" else "host"
    if override != "auto":
        return override
    return "device" if store_bytes <= share * facts.free_bytes else "pinned"


def place(
    store: Store,
    device: torch.device | str,
    *,
    override: str | None = None,
    facts: Callable[[torch.device], DeviceFacts] = device_facts,
) -> Placed:
    """``store`` placed for batches on ``device`` (:func:`choose_placement`; ``override``
    defaults to ``$IMGCLS_STORE``)."""
    dev = torch.device(device)
    wanted = override or os.environ.get(PLACEMENT_ENV, "").strip() or "auto"
    where = choose_placement(int(store.array.nbytes), facts(dev), cuda=torch.cuda.is_available(), override=wanted)
    if where == "device":
        return DeviceStore(store, dev)
    if where == "pinned":
        return PinnedStore(store, dev)
    return HostStore(store, dev)


def gather(array: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (B, ...) rows of ``array`` in the order of ``rows``, read in sorted order (kinder to
    a memory map), into ``out`` when given."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    batch = np.empty((len(rows), *array.shape[1:]), dtype=np.uint8) if out is None else out[: len(rows)]
    batch[order] = array[rows[order]]
    return batch


def nchw(batch: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> a (B, C, H, W) view."""
    return batch.permute(0, 3, 1, 2)


class HostStore:
    """``host``: batches gathered from the store where it is (RAM or memory-mapped)."""

    where = "host"

    def __init__(self, store: Store, device: torch.device) -> None:
        self.store, self.device = store, device

    def batches(self, plan: list[np.ndarray]) -> Iterator[Batch]:
        for rows in plan:
            rows = rows[self.store.ok[rows]]
            yield rows, to_device(nchw(torch.from_numpy(gather(self.store.array, rows))), self.device)


class DeviceStore:
    """``device``: the whole store as one uint8 tensor on the device; a batch is an
    ``index_select`` there."""

    where = "device"

    def __init__(self, store: Store, device: torch.device) -> None:
        self.ok, self.device = store.ok, device
        array = store.array
        self.pixels = torch.empty(array.shape, dtype=torch.uint8, device=device)
        step = max(1, _UPLOAD_ROWS_BYTES // max(1, array[0].nbytes)) if len(array) else 1
        for i in range(0, len(array), step):  # in slices: a memory-mapped store is never read whole
            self.pixels[i : i + step].copy_(torch.from_numpy(np.array(array[i : i + step])))

    def batches(self, plan: list[np.ndarray]) -> Iterator[Batch]:
        for rows in plan:
            rows = rows[self.ok[rows]]
            index = to_device(torch.from_numpy(rows), self.device)
            yield rows, nchw(self.pixels.index_select(0, index))


class CudaCopies:
    """The CUDA side of :class:`PinnedStore`: pinned buffers, copies on a side stream, the
    training stream waiting on a copy's event (never the CPU, except to refill a buffer)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.side = torch.cuda.Stream(device)

    def buffer(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.uint8).pin_memory()

    def start(self, host: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Copy ``host`` to the device on the side stream; the copy and its event."""
        with torch.cuda.stream(self.side):
            pixels = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.side)
        return pixels, done

    def wait_copied(self, done: Any) -> None:
        done.synchronize()

    def ready(self, pixels: torch.Tensor, done: Any) -> torch.Tensor:
        """``pixels`` for the current stream, once it has waited for the copy; the allocator is
        told they are used there (they were made on the side stream)."""
        stream = torch.cuda.current_stream(pixels.device)
        stream.wait_event(done)
        pixels.record_stream(stream)
        return pixels


class PinnedStore:
    """``pinned`` (CUDA): the store stays in host memory; a worker thread gathers each batch into
    one of two pinned buffers (NumPy's copy releases the GIL) and a side stream copies it to the
    device, so while step k computes, batch k+1 is in flight and batch k+2 is being gathered.
    ``copies``: the CUDA operations (:class:`CudaCopies`; the tests give a CPU stand-in)."""

    where = "pinned"

    def __init__(self, store: Store, device: torch.device, copies: CudaCopies | None = None) -> None:
        self.store, self.device = store, device
        self.copies = copies

    def batches(self, plan: list[np.ndarray]) -> Iterator[Batch]:
        from concurrent.futures import Future, ThreadPoolExecutor

        copies = self.copies or CudaCopies(self.device)
        most = max((len(r) for r in plan), default=0)
        buffers = [copies.buffer((most, *self.store.array.shape[1:])) for _ in (0, 1)]
        copied: list[Any] = [None, None]  # each buffer's last copy

        def fill(k: int) -> tuple[np.ndarray, torch.Tensor]:
            rows = plan[k][self.store.ok[plan[k]]]
            if copied[k % 2] is not None:  # the buffer's last copy must be done before it is refilled
                copies.wait_copied(copied[k % 2])
            host = buffers[k % 2][: len(rows)]
            gather(self.store.array, rows, out=host.numpy())
            return rows, host

        pool = ThreadPoolExecutor(1, thread_name_prefix="imgcls-gather")
        ahead: tuple[np.ndarray, torch.Tensor, Any] | None = None
        try:
            filling: Future | None = pool.submit(fill, 0) if plan else None
            for k in range(len(plan)):
                rows, host = filling.result()  # type: ignore[union-attr]
                pixels, done = copies.start(host)
                copied[k % 2] = done
                filling = pool.submit(fill, k + 1) if k + 1 < len(plan) else None
                if ahead is not None:  # the batch before this one, while this one is copied
                    yield ahead[0], nchw(copies.ready(ahead[1], ahead[2]))
                ahead = (rows, pixels, done)
            if ahead is not None:
                yield ahead[0], nchw(copies.ready(ahead[1], ahead[2]))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
