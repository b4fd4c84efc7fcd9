"""Batches for training and validation.

Each epoch's order is a permutation drawn from ``(seed, epoch)`` and each batch's augmentation
from ``(seed, epoch, step)``, so a run resumed at any step sees exactly the batches an
uninterrupted run would, whatever the worker count. Under ``torch.distributed`` every rank
takes every ``world``-th row of the same permutation (equal batch counts on all ranks).

Pixels come from a :class:`~imgcls.data.store.Store` (decoded once, in memory or memory-mapped)
or, with ``cache="none"``, are decoded again every epoch by DataLoader worker processes; either
way augmentation runs on whole uint8 batches in the training process (one ``grid_sample``).
A background thread prepares the next batch while the model computes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from imgcls.config import PreprocessConfig
from imgcls.data.device import HostStore, Placed, place
from imgcls.data.image import MAX_PIXELS, ImageError
from imgcls.data.store import Store, decode_square
from imgcls.data.table import DataTable
from imgcls.data.transforms import BatchAugment, Normalize, center_batch, to_nchw
from imgcls.runtime import to_device


def batch_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    mixed = np.random.SeedSequence([seed, epoch, step]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(mixed))


def epoch_order(
    rows: np.ndarray,
    seed: int,
    epoch: int,
    *,
    shuffle: bool = True,
    weights: np.ndarray | None = None,
    rank: int = 0,
    world: int = 1,
) -> np.ndarray:
    """The rows this rank visits in ``epoch``: a permutation, or a weighted draw with
    replacement (``weights`` per row, for class-balanced sampling)."""
    rng = np.random.default_rng([seed, epoch, 7919])
    if weights is not None:
        p = weights / weights.sum()
        order = rng.choice(rows, size=len(rows), replace=True, p=p)
    elif shuffle:
        order = rng.permutation(rows)
    else:
        order = np.asarray(rows)
    if world > 1:
        per_rank = len(order) // world
        order = order[rank::world][:per_rank]
    return order


def batches_of(order: np.ndarray, batch_size: int, drop_last: bool) -> list[np.ndarray]:
    n = len(order)
    if drop_last and n >= batch_size:
        n = (n // batch_size) * batch_size
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


class _DecodeDataset(torch.utils.data.Dataset):
    """For ``cache='none'``: decode a row to its uint8 square in a worker process."""

    def __init__(self, table: DataTable, cfg: PreprocessConfig, size: int, max_pixels: int | None) -> None:
        self.paths = table.paths
        self.boxes = table.boxes
        self.margin = table.crop_margin
        self.cfg = cfg
        self.size = size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        box = self.boxes[i] if self.boxes is not None else None
        try:
            return (
                i,
                decode_square(
                    self.paths[i],
                    self.cfg,
                    self.size,
                    max_pixels=self.max_pixels,
                    box=box,
                    margin=self.margin,
                ),
                None,
            )
        except ImageError as e:
            return i, None, str(e)
        except Exception as e:
            return i, None, f"cannot decode ({type(e).__name__}: {e})"


def _collate(
    items: list[tuple[int, np.ndarray | None, str | None]],
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    good = [(i, a) for i, a, _ in items if a is not None]
    bad = [(i, r or "") for i, a, r in items if a is None]
    rows = np.array([i for i, _ in good], dtype=np.int64)
    pixels = np.stack([a for _, a in good]) if good else np.zeros((0, 1, 1, 3), np.uint8)
    return rows, pixels, bad


@dataclass
class PixelSource:
    """Where uint8 squares come from: a store (placed where the model is: :func:`place`), or
    files decoded by worker processes."""

    table: DataTable
    store: Store | None
    cfg: PreprocessConfig
    size: int
    workers: int = 2
    max_pixels: int | None = MAX_PIXELS
    #: rows found unusable while streaming (cache='none'), with their reason
    found_bad: dict[int, str] = field(default_factory=dict)
    #: the device batches come out on (:meth:`place`), and the store placed for it
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    placed: Placed | None = None

    def place(self, device: torch.device | str, *, override: str | None = None) -> str:
        """Batches from now on come out on ``device``; returns where the store went
        (:mod:`imgcls.data.device`: ``device``, ``pinned`` or ``host``; ``decoded`` without one:
        each batch is copied there as it is decoded)."""
        self.device = torch.device(device)
        if self.store is None:
            return "decoded"
        self.placed = place(self.store, self.device, override=override)
        return self.placed.where

    def batches(self, plan: list[np.ndarray]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(rows, uint8 (B, C, S, S) on :attr:`device`) for each planned batch; unusable rows
        are dropped."""
        if self.store is not None:
            yield from (self.placed or HostStore(self.store, self.device)).batches(plan)
            return
        dataset = _DecodeDataset(self.table, self.cfg, self.size, self.max_pixels)
        loader: Any = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[r.tolist() for r in plan],
            num_workers=self.workers,
            collate_fn=_collate,
            prefetch_factor=2 if self.workers else None,
        )
        for rows, pixels, bad in loader:
            for i, reason in bad:
                self.found_bad[i] = reason
            yield rows, to_device(to_nchw(pixels), self.device)


def _prefetch(it: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run ``it`` in a background thread, ``depth`` items ahead, where a core is free for it.
    With two cores or fewer the model's kernels already use them all: a second thread of
    tensor work would only make both wait (measured: 15% slower training steps), so batches
    are then prepared in line."""
    from imgcls.runtime import physical_cores

    if physical_cores() <= 2 or torch.get_num_threads() >= physical_cores():
        yield from it
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Hand ``item`` over unless the consumer has stopped (then a full queue would block
        this thread for ever): False when it has."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in it:
                if not put(item):
                    return
        except BaseException as e:  # re-raised in the consumer
            put(e)
            return
        put(done)

    thread = threading.Thread(target=run, name="imgcls-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


@dataclass
class TrainBatches:
    """The training batches of each epoch: (x normalised float, y targets, rows)."""

    source: PixelSource
    targets: torch.Tensor
    rows: np.ndarray
    batch_size: int
    augment: BatchAugment
    seed: int = 0
    weights: np.ndarray | None = None
    rank: int = 0
    world: int = 1
    #: the input size of a global step (progressive resizing), else None: the configured size
    size_at: Callable[[int], int] | None = None

    def plan(self, epoch: int) -> list[np.ndarray]:
        order = epoch_order(self.rows, self.seed, epoch, weights=self.weights, rank=self.rank, world=self.world)
        return batches_of(order, self.batch_size, drop_last=True)

    def __len__(self) -> int:
        return len(self.plan(0))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        whole = self.plan(epoch)
        plan, spe = whole[start_step:], len(whole)

        def produce() -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
            for step, (rows, pixels) in enumerate(self.source.batches(plan), start=start_step):
                g = batch_generator(self.seed, epoch, step)
                size = self.size_at(epoch * spe + step) if self.size_at is not None else None
                y = to_device(self.targets[torch.from_numpy(rows)], pixels.device)
                yield self.augment(pixels, g, size), y, rows

        yield from _prefetch(produce())


@dataclass
class EvalBatches:
    """Validation batches in row order, with the evaluation transform (center crop)."""

    source: PixelSource
    targets: torch.Tensor
    rows: np.ndarray
    batch_size: int
    cfg: PreprocessConfig
    rank: int = 0
    world: int = 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        rows = self.rows[self.rank :: self.world] if self.world > 1 else self.rows
        plan = batches_of(rows, self.batch_size, drop_last=False)
        normalize = Normalize(self.cfg)

        def produce() -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
            for r, pixels in self.source.batches(plan):
                y = to_device(self.targets[torch.from_numpy(r)], pixels.device)
                yield normalize(center_batch(pixels, self.cfg)), y, r

        yield from _prefetch(produce())
