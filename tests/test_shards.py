"""``--shard K/N``'s merge and its guards, without a model where none is needed: two tasks
finishing together, a merge cut short, parts made with different settings, the line naming the
shards still missing, and a merged output met again with other settings or new inputs (the whole
array as SLURM runs it: test_multinode.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import imgcls.predict.shards as shards
from imgcls.cli import main
from imgcls.errors import UserError
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


def test_parts_made_with_different_engines_are_not_merged(tmp_path: Path) -> None:
    final = tmp_path / "p.csv"
    settings = [{"model": "x", "engine": "onnxruntime fp32"}, {"model": "x", "engine": "torch bf16 (cuda)"}]
    _parts(final, 2, settings)
    with pytest.raises(UserError) as e:
        shards.merge_if_complete(final, 2, writer_for(final, None, {}), settings[1])
    message = str(e.value)
    assert "\n" not in message and "onnxruntime fp32" in message and "torch bf16 (cuda)" in message
    assert "--overwrite" in message and "not merged" in message
    assert not final.exists() and not (tmp_path / ".p.csv.merging").exists()
    assert all(part_path(final, r, 2).exists() and shards._mark(final, r, 2).exists() for r in range(2))


def test_the_waiting_line_names_the_shards_not_done(tmp_path: Path) -> None:
    """An array counted from 1 runs shards 1-15 of 16: each says it waits for shard 0."""
    final = tmp_path / "p.csv"
    for r in range(1, 16):
        shards._mark(final, r, 16).write_text("{}\n")
    line = shards.merge_if_complete(final, 16, writer_for(final, None, {}), {})
    assert line.startswith("15 of 16 shards of") and "waiting for shard 0 of 16" in line
    for r in range(16):
        shards._mark(final, r, 16).unlink(missing_ok=True)
    for r in (2, 5):
        shards._mark(final, r, 8).write_text("{}\n")
    line = shards.merge_if_complete(final, 8, writer_for(final, None, {}), {})
    assert "waiting for shards 0-1, 3-4, 6-7 of 8" in line
    with pytest.raises(
        UserError, match=r"K must be 0 to 15; an array counted from 1 never runs shard 0: run --shard 0/16"
    ):
        shards.parse_shard("16/16")  # the array's task 16


def test_a_merged_output_made_with_other_settings_is_refused_not_complete(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--shard met a finished --out from other settings: refused as plain predict refuses it
    (it said "complete" and predicted nothing); with the same settings it counts the inputs that
    --out lacks."""
    images = tmp_path / "imgs"
    shutil.copytree(trained["data"] / "cat", images)
    out = tmp_path / "p.csv"
    base = ["predict", "--model", str(trained["model"]), str(images), "--out", str(out), "--workers", "0"]
    assert main(base) == 0
    before = out.read_text()
    capsys.readouterr()
    assert main([*base, "--top-k", "2"]) == 2  # plain predict refuses it ...
    assert "holds predictions made with other settings" in capsys.readouterr().err
    assert main([*base, "--top-k", "2", "--shard", "0/1"]) == 2  # ... and so does a shard
    err = capsys.readouterr().err
    assert "holds predictions made with other settings (top_k was 5, now 2)" in err and "complete" not in err
    other = tmp_path / "other"  # the same model with one weight changed
    shutil.copytree(trained["model"], other)
    weights = bytearray((other / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (other / "model.safetensors").write_bytes(bytes(weights))
    assert main([*base[:2], str(other), *base[3:], "--shard", "0/1"]) == 2
    assert "holds predictions made with other settings (another model)" in capsys.readouterr().err
    assert main([*base, "--shard", "0/1"]) == 0
    assert "is complete (merged from its shards): nothing to do" in capsys.readouterr().err
    shutil.copy(images / sorted(os.listdir(images))[0], images / "new.png")
    assert main([*base, "--shard", "0/1"]) == 0
    err = capsys.readouterr().err
    assert "1 of shard 0/1's 11 inputs are not in" in err and "predicted 0 images" in err
    assert out.read_text() == before
