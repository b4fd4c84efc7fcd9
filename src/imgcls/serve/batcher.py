"""Micro-batching: requests that arrive within a few milliseconds of each other share one
forward pass, and every request gets its own rows back.

Decoded images wait in a bounded queue (back-pressure instead of unbounded memory under load);
one worker task takes up to ``max_batch`` of them, waiting at most ``max_wait`` seconds for
company after the first, runs the model in a thread (the event loop stays free), and resolves
each request's future with its slice of the probabilities.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class _Job:
    pixels: np.ndarray  # (n, H, W, 3) uint8
    future: asyncio.Future


class MicroBatcher:
    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 32,
        max_wait: float = 0.005,
        max_queued: int = 64,
    ) -> None:
        self.infer = infer
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queued)
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.images = 0

    async def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (n, K) for this request's images."""
        await self.start()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(pixels, future))  # waits while the queue is full
        return await future

    async def _collect(self) -> list[_Job]:
        jobs = [await self.queue.get()]
        count = len(jobs[0].pixels)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while count < self.max_batch:
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                job = await asyncio.wait_for(self.queue.get(), timeout)
            except asyncio.TimeoutError:
                break
            jobs.append(job)
            count += len(job.pixels)
        return jobs

    async def _run(self) -> None:
        while True:
            jobs = await self._collect()
            batch = np.concatenate([j.pixels for j in jobs])
            try:
                probs = await asyncio.to_thread(self.infer, batch)
            except Exception as e:  # the requests see the failure; the worker lives on
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.batches += 1
            self.images += len(batch)
            start = 0
            for j in jobs:
                n = len(j.pixels)
                if not j.future.done():
                    j.future.set_result(probs[start : start + n])
                start += n
