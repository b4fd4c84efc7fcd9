"""``--shard K/N``'s merge and its guards, without a model where none is needed: two tasks
finishing together, a merge cut short, parts made with different settings, the line naming the
shards still missing, and a merged output met again with other settings or new inputs (the whole
array as SLURM runs it: test_multinode.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import imgcls.predict.shards as shards
from imgcls.outputs import CsvWriter, resume_record, writer_for
from imgcls.predict.runner import part_path

HEADER = "path,label,score,top_k,error\n"


def _parts(final: Path, world: int, settings: list[dict[str, Any]] | None = None) -> None:
    """``world`` finished parts of ``final``, one row each (img0.jpg ...), marked done, each with
    its settings record (``settings[r]``, else the same for all)."""
    for r in range(world):
        part = part_path(final, r, world)
        part.write_text(HEADER + f"img{r}.jpg,cat,0.9,,\n")
        resume_record(part).write_text(json.dumps(settings[r] if settings else {"model": "x", "engine": "e"}))
        shards._mark(final, r, world).write_text('{"rows": 1}\n')


def test_a_task_that_takes_the_lock_after_another_merged_leaves_the_output_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B saw every mark; A merged and released the lock before B's exclusive create: B must not
    merge again (it emptied --out and crashed on A's deleted parts)."""
    final = tmp_path / "p.csv"
    _parts(final, 2)
    real_open, said = os.open, []

    def a_merges_first(path: Any, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".merging") and not said:
            said.append("A")  # A's own lock goes straight through
            said[0] = shards.merge_if_complete(final, 2, writer_for(final, None, {}), {"model": "x"})
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", a_merges_first)
    line = shards.merge_if_complete(final, 2, writer_for(final, None, {}), {"model": "x"})
    monkeypatch.undo()
    assert said == [f"merged the 2 shards into {final}"]
    assert "merged by another task" in line
    assert final.read_text() == HEADER + "img0.jpg,cat,0.9,,\nimg1.jpg,cat,0.9,,\n"
    assert not (tmp_path / ".p.csv.merging").exists()


def test_a_merge_cut_short_keeps_the_previous_output_and_the_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merge writes a sibling and renames it over --out: a merge that fails (a full disk)
    leaves --out as it was, never emptied, and the parts to merge again."""
    final = tmp_path / "p.csv"
    final.write_text(HEADER + "old.jpg,dog,0.8,,\n")
    _parts(final, 2)

    def disk_full(self: CsvWriter, records: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CsvWriter, "write_records", disk_full)
    with pytest.raises(OSError, match="No space"):
        shards.merge_if_complete(final, 2, writer_for(final, None, {}), {"model": "x"})
    assert final.read_text() == HEADER + "old.jpg,dog,0.8,,\n"
    assert all(part_path(final, r, 2).exists() and shards._mark(final, r, 2).exists() for r in range(2))
    monkeypatch.undo()
    assert shards.merge_if_complete(final, 2, writer_for(final, None, {}), {"model": "x"}).startswith("merged")
    assert final.read_text() == HEADER + "img0.jpg,cat,0.9,,\nimg1.jpg,cat,0.9,,\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".p.csv.settings.json", "p.csv"]
