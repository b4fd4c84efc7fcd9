"""Batches made where the model is (imgcls.data.device): the same batches whether the store is
"on the device" (a tensor) or memory-mapped on the host, or streamed through the pinned path's
pipeline (CUDA's copies replaced by a CPU stand-in); the placement decision; the same batches
for any worker count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from imgcls.config import PreprocessConfig
from imgcls.data import device as placing
from imgcls.data.loaders import EvalBatches, PixelSource, TrainBatches
from imgcls.data.store import Store
from imgcls.data.table import DataTable
from imgcls.data.transforms import PRESETS, BatchAugment, square_size
from imgcls.errors import UserError
from imgcls.runtime import DeviceFacts

CFG = PreprocessConfig(input_size=(3, 32, 32))  # squares of 36 px
N = 26
GiB = 1 << 30
GPU = DeviceFacts("cuda", "a GPU", 10 * GiB, 16 * GiB)


def mapped_store(tmp_path: Path) -> Store:
    """N random squares in a memory-mapped .npy (as the disk cache holds them), two unusable."""
    side = square_size(CFG)
    array = np.lib.format.open_memmap(tmp_path / "store.npy", mode="w+", dtype=np.uint8, shape=(N, side, side, 3))
    array[:] = np.random.default_rng(0).integers(0, 256, array.shape, dtype=np.uint8)
    array.flush()
    del array
    ok = np.ones(N, bool)
    ok[[3, 10]] = False
    return Store(np.load(tmp_path / "store.npy", mmap_mode="r"), ok, tmp_path / "store.npy")


def source(store: Store | None, table: DataTable | None = None, workers: int = 0) -> PixelSource:
    table = table or DataTable("csv", Path("."), [f"{i}.jpg" for i in range(N)], np.arange(N) % 3, ["a", "b", "c"])
    return PixelSource(table=table, store=store, cfg=CFG, size=square_size(CFG), workers=workers)


def every_batch(src: PixelSource, preset: str, *, rows: int = N, sized: bool = False, short: bool = False) -> list:
    """Two epochs of training batches, epoch 1 again from its second step (a resume), and the
    validation batches: (x, y, rows) each; ``short``: the first epoch's alone."""
    targets = torch.arange(rows) % 3
    train = TrainBatches(src, targets, np.arange(rows), batch_size=8, augment=BatchAugment(CFG, PRESETS[preset]),
                         seed=5, size_at=(lambda step: 24 if step % 2 else 32) if sized else None)  # fmt: skip
    if short:
        return list(train.epoch(0))
    out = [b for epoch in (0, 1) for b in train.epoch(epoch)] + list(train.epoch(1, start_step=1))
    return out + list(EvalBatches(src, targets, np.arange(rows), 8, CFG))


def assert_same(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b)
    for (xa, ya, ra), (xb, yb, rb) in zip(a, b, strict=True):
        assert xa.dtype == xb.dtype == torch.float32 and xa.device == xb.device
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and np.array_equal(ra, rb)  # bit for bit


class CpuCopies:
    """A CPU stand-in for :class:`~imgcls.data.device.CudaCopies`: a 'copy' is a clone, its event
    a number; it records which copies a refill waited for."""

    def __init__(self) -> None:
        self.started = 0
        self.waited: list[int] = []

    def buffer(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.full(shape, 7, dtype=torch.uint8)

    def start(self, host: torch.Tensor) -> tuple[torch.Tensor, int]:
        self.started += 1
        return host.clone(), self.started - 1

    def wait_copied(self, done: int) -> None:
        self.waited.append(done)

    def ready(self, pixels: torch.Tensor, done: int) -> torch.Tensor:
        return pixels


@pytest.mark.parametrize("preset", ["standard", "small", "strong", "none"])
def test_the_same_batches_from_the_device_the_host_and_the_pinned_pipeline(tmp_path: Path, preset: str) -> None:
    store = mapped_store(tmp_path)
    host = source(store)
    assert host.place("cpu") == "host"  # a CPU trains from the store where it is: no copy
    on_device = source(store)
    assert on_device.place("cpu", override="device") == "device"
    held = on_device.placed.pixels  # type: ignore[union-attr]
    assert isinstance(held, torch.Tensor) and not np.shares_memory(held.numpy(), store.array)
    pinned = source(store)
    copies = CpuCopies()
    pinned.placed = placing.PinnedStore(store, torch.device("cpu"), copies)
    kind = dict(sized=preset == "standard", short=preset == "strong")  # (TrivialAugment: slow per image)
    expected = every_batch(host, preset, **kind)
    assert_same(every_batch(on_device, preset, **kind), expected)
    assert_same(every_batch(pinned, preset, **kind), expected)
    # a buffer is refilled once its last copy is done, two batches back: epoch 0's 3 batches (copies
    # 0-2), epoch 1's (3-5), epoch 1 resumed at its second step (6-7), the validation's 4 (8-11)
    assert copies.waited == ([0] if preset == "strong" else [0, 3, 8, 9])
    assert all(not set(r) & {3, 10} for _, _, r in expected)  # unusable rows are never in a batch


def test_the_same_batches_for_any_worker_count(tmp_path: Path) -> None:
    """The store built once, and the files decoded every epoch by 0 or 1 worker processes."""
    from imgcls.data import load_source
    from imgcls.data.store import build_store
    from imgfactory import image_folder

    table = load_source(image_folder(tmp_path / "data", ("a", "b", "c"), 4, size=(40, 30)))
    store, skipped = build_store(table, CFG, cache="memory", workers=2)
    assert not skipped
    expected = every_batch(source(store, table), "standard", rows=len(table))
    for workers in (0, 1):
        assert_same(every_batch(source(None, table, workers), "standard", rows=len(table)), expected)


def test_placement_decision() -> None:
    cpu = DeviceFacts("cpu", "a CPU", 64 * GiB, 128 * GiB)
    choose = placing.choose_placement
    assert choose(4 * GiB, GPU, cuda=True) == "device"
    assert choose(6 * GiB, GPU, cuda=True) == "pinned"  # more than half the free memory
    assert choose(6 * GiB, GPU, cuda=True, share=0.7) == "device"
    assert choose(1, GPU, cuda=True, override="pinned") == "pinned"
    assert choose(9 * GiB, GPU, cuda=True, override="device") == "device"  # asked for: tried
    assert choose(1, GPU, cuda=False) == "host"  # pinned memory and streams only where CUDA is
    assert choose(1, cpu, cuda=True) == "host" and choose(1, cpu, cuda=True, override="pinned") == "host"
    assert choose(1, cpu, cuda=False, override="device") == "device"  # a tensor in RAM
    with pytest.raises(UserError, match="IMGCLS_STORE='gpu'"):
        choose(1, GPU, cuda=True, override="gpu")


@pytest.mark.parametrize("cuda", [False, True])
def test_the_cuda_placements_are_taken_only_where_cuda_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cuda: bool
) -> None:
    """``place`` on a 'GPU' of 1 GiB free: a small store goes on it, a large one stays in pinned
    host memory; without CUDA both stay on the host. The CUDA classes are replaced by recorders."""
    made: list[tuple[str, Any]] = []

    def recorder(name: str) -> Any:
        return lambda store, device: made.append((name, device)) or name

    monkeypatch.setattr(placing.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(placing, "DeviceStore", recorder("device"))
    monkeypatch.setattr(placing, "PinnedStore", recorder("pinned"))
    monkeypatch.delenv(placing.PLACEMENT_ENV, raising=False)
    small_gpu = lambda device: DeviceFacts(device.type, "a GPU", GiB, 2 * GiB)  # noqa: E731
    small = mapped_store(tmp_path)  # 26 squares of 36 px: 100 KB
    big = Store(np.zeros((1, 1, 1, 1), np.uint8), np.ones(1, bool))
    big.array = np.lib.stride_tricks.as_strided(big.array, shape=(GiB, 1, 1, 1), strides=(0, 0, 0, 0))  # 1 GiB
    got = [placing.place(s, "cuda", facts=small_gpu) for s in (small, big)]
    if cuda:
        assert got == ["device", "pinned"] and [d.type for _, d in made] == ["cuda", "cuda"]
    else:
        assert [p.where for p in got] == ["host", "host"] and not made  # type: ignore[attr-defined]
    monkeypatch.setenv(placing.PLACEMENT_ENV, "pinned")
    assert (placing.place(small, "cuda", facts=small_gpu) == "pinned") == cuda
