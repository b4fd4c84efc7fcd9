"""The decoded-image cache: bounded by size (least recently used entries go), listed and cleared
with ``imgcls cache`` (imgcls.data.store)."""

from __future__ import annotations

import os
import time
from pathlib import Path

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
