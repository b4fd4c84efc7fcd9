"""The decoded-image cache: bounded by size (least recently used entries go), listed and cleared
with ``imgcls cache`` (imgcls.data.store)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgcls.cli import main
from imgcls.config import PreprocessConfig
from imgcls.data import load_source
from imgcls.data.store import build_store, cache_entries
from imgfactory import image_folder

CFG = PreprocessConfig(input_size=(3, 32, 32), crop_pct=1.0)


def test_the_cache_keeps_under_its_size_by_dropping_the_least_recently_used(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    tables = [load_source(image_folder(tmp_path / f"d{k}", ("a", "b"), 5, seed=k)) for k in range(3)]
    one = 10 * 32 * 32 * 3 + 128  # an entry: 10 squares of 32 px (and the .npy header)
    for k, t in enumerate(tables[:2]):
        build_store(t, CFG, cache_dir=cache, max_bytes=10**9)
        os.utime(cache / f"{cache_entries(cache)[0].key}.json", (time.time() - 100 + k, time.time() - 100 + k))
    assert len(cache_entries(cache)) == 2
    build_store(tables[0], CFG, cache_dir=cache, max_bytes=10**9)  # a hit: d0 is now the most recent
    store, _ = build_store(tables[2], CFG, cache_dir=cache, max_bytes=int(2.5 * one))  # room for two
    left = cache_entries(cache)
    assert [e.data for e in left] == [str(tables[2].root), str(tables[0].root)]  # d1 was the least recent
    assert store.path is not None and store.path.is_file() and left[0].images == 10 and left[0].side == 32
    # the entry in use is never removed, even when it alone is over the limit
    build_store(tables[1], CFG, cache_dir=cache, max_bytes=1)
    assert [e.data for e in cache_entries(cache)] == [str(tables[1].root)]


def test_cache_info_and_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    for k in range(2):
        build_store(load_source(image_folder(tmp_path / f"d{k}", ("a", "b"), 3, seed=k)), CFG, cache_dir=cache)
    mine = {
        "notes.txt": "not ours",
        "labels.json": '{"shape": [1, 2], "reasons": []}',
        "features.npy": "",
        ".features.999999999.1.npy.tmp": "",
    }  # a user's files in the folder given as --cache-dir
    for name, text in mine.items():
        (cache / name).write_text(text)
    old = cache_entries(cache)[-1]
    os.utime(cache / f"{old.key}.json", (time.time() - 40 * 86400, time.time() - 40 * 86400))
    assert main(["cache", "info", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "2 entries" in out and "6 images of 32x32 px" in out and str(tmp_path / "d0") in out
    assert main(["cache", "clear", "--cache-dir", str(cache), "--older-than", "30d"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert [e.key for e in cache_entries(cache)] != [old.key] and len(cache_entries(cache)) == 1
    orphan = cache / f"{'0' * 32}.npy"  # a data file whose record was never written (killed between)
    orphan.write_bytes(b"\0" * 64)
    assert [e.data for e in cache_entries(cache) if e.files == [orphan]] == ["(no readable record)"]
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert cache_entries(cache) == [] and sorted(p.name for p in cache.iterdir()) == sorted(mine)
    # eviction goes by the same entries: a user's files are never what it removes
    build_store(load_source(image_folder(tmp_path / "d2", ("a", "b"), 3, seed=2)), CFG, cache_dir=cache, max_bytes=1)
    assert len(cache_entries(cache)) == 1 and all((cache / name).exists() for name in mine)


def _pid_pixels(real: Any) -> Any:
    """A decode_square that writes the decoding process's id, whole, in the square's first bytes
    (the rest 0): pid % 251 could match a worker's (a 1-in-125 failure)."""

    def decode(*args: Any, **kwargs: Any) -> np.ndarray:
        out = np.zeros_like(real(*args, **kwargs))
        out.reshape(-1)[:8] = np.frombuffer(os.getpid().to_bytes(8, "little"), np.uint8)
        return out

    return decode


def test_the_store_is_decoded_by_worker_processes_into_one_shared_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Processes, not threads: threads held the GIL a fifth of each decode and did not scale
    (benchmarks/bench_decode.py). The squares and the reasons are the same for any number of
    workers, cached in memory or on disk, with an unusable file among them."""
    import imgcls.data.store as store_module

    data = image_folder(tmp_path / "d", ("a", "b"), 12)
    (data / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    table = load_source(data)
    one, bad_one = build_store(table, CFG, cache="memory", workers=1)
    for cache in ("memory", "disk"):
        two, bad_two = build_store(table, CFG, cache=cache, cache_dir=tmp_path / "cache", workers=2)
        assert np.array_equal(np.asarray(two.array), np.asarray(one.array)) and bad_two == bad_one
        assert len(bad_one) == 1 and np.array_equal(two.ok, one.ok)
    monkeypatch.setattr(store_module, "decode_square", _pid_pixels(store_module.decode_square))
    seen: list[int] = []
    store, _ = build_store(table, CFG, cache="memory", workers=2, progress=seen.append)
    squares = np.asarray(store.array)[store.ok].reshape(int(store.ok.sum()), -1)[:, :8]
    decoders = {int.from_bytes(sq.astype(np.uint8).tobytes(), "little") for sq in squares}
    assert decoders and 0 not in decoders and os.getpid() not in decoders  # every square came from a worker
    assert seen[-1] == len(table) and seen == sorted(seen)
