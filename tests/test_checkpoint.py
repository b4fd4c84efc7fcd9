"""Checkpoints: written in the background, atomically, read back with weights_only
(imgcls.engine.checkpoint)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from imgcls.engine.checkpoint import CheckpointWriter, load_checkpoint, save_checkpoint
from imgcls.errors import UserError


def test_round_trip_and_rng_state(tmp_path: Path) -> None:
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.manual_seed(7)
    writer = CheckpointWriter(tmp_path)
    writer.save({"model": weights, "position": {"epoch": 2, "step": 5}})
    weights["w"] += 100  # training goes on while the write runs: the snapshot is what was saved
    writer.wait()
    expected = torch.rand(3)  # what the RNG gives right after the save
    torch.manual_seed(0)
    state = load_checkpoint(tmp_path)
    assert state is not None and state["position"] == {"epoch": 2, "step": 5}
    assert torch.equal(state["model"]["w"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(torch.rand(3), expected)  # the RNG state came back with it
    assert load_checkpoint(tmp_path / "none") is None


def test_foreign_or_broken_checkpoints_are_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, {"model": {}})
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    torch.save({**state, "format": 99}, tmp_path / "state.pt")
    with pytest.raises(UserError, match="not an imgcls checkpoint of format 1"):
        load_checkpoint(tmp_path)
    (tmp_path / "state.pt").write_bytes(pickle.dumps({"a": 1})[:10])
    with pytest.raises(UserError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path)


def test_a_failed_background_write_is_raised_and_leaves_the_last_checkpoint(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path)
    writer.save({"model": {"w": torch.zeros(2)}})
    writer.wait()
    before = (tmp_path / "state.pt").read_bytes()
    writer.save({"model": {"w": torch.zeros(2)}, "bad": lambda: None})  # not serialisable
    with pytest.raises(Exception, match=r"lambda|pickle|Can.t"):
        writer.wait()
    assert (tmp_path / "state.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
