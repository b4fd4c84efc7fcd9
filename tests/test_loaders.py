"""Batch production (imgcls.data.loaders): epoch orders, the background prefetch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from imgcls.data import loaders


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.mark.parametrize("fail", [False, True])
def test_prefetch_thread_ends_when_the_consumer_stops_early(monkeypatch: pytest.MonkeyPatch, fail: bool) -> None:
    monkeypatch.setattr("imgcls.runtime.physical_cores", lambda: 8)  # a core to spare: prefetch in a thread
    monkeypatch.setattr(loaders.torch, "get_num_threads", lambda: 1)

    def produce() -> Iterator[int]:
        yield from range(3)  # one taken, two fill the queue; then the end (or an error) waits
        if fail:
            raise ValueError("a bad batch")

    before = _threads()
    stream = loaders._prefetch(produce(), depth=2)
    assert next(stream) == 0
    time.sleep(0.3)  # the producer fills the queue and waits to hand over the end
    stream.close()  # the consumer stops early (an exception in the training step, early stopping)
    deadline = time.monotonic() + 3
    while _threads() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not (_threads() - before), "the prefetch thread is still blocked"


def test_prefetch_passes_every_item_and_the_producers_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imgcls.runtime.physical_cores", lambda: 8)
    monkeypatch.setattr(loaders.torch, "get_num_threads", lambda: 1)
    assert list(loaders._prefetch(iter(range(10)), depth=2)) == list(range(10))

    def bad() -> Iterator[int]:
        yield 1
        raise ValueError("decoder bug")

    with pytest.raises(ValueError, match="decoder bug"):
        list(loaders._prefetch(bad()))


def test_epoch_order_is_a_fixed_permutation_split_evenly_between_ranks() -> None:
    rows = np.arange(103)
    a = loaders.epoch_order(rows, seed=1, epoch=2)
    assert sorted(a.tolist()) == rows.tolist() and loaders.epoch_order(rows, seed=1, epoch=2).tolist() == a.tolist()
    assert loaders.epoch_order(rows, seed=1, epoch=3).tolist() != a.tolist()
    parts = [loaders.epoch_order(rows, seed=1, epoch=2, rank=r, world=2) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 51 and not set(parts[0]) & set(parts[1])
    assert [len(b) for b in loaders.batches_of(a, 25, drop_last=True)] == [25] * 4
    assert [len(b) for b in loaders.batches_of(a, 25, drop_last=False)] == [25] * 4 + [3]
