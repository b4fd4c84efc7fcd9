"""Atomic writes (imgcls.io) and the model directory written as a whole (imgcls.artifacts)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from imgcls.artifacts import load_model, save_model
from imgcls.config import PreprocessConfig
from imgcls.io import atomic_dir, atomic_write_text, atomic_write_with, current_umask
from imgcls.models import create_model


@pytest.fixture
def umask_002() -> object:
    old = os.umask(0o002)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_users_umask_and_keep_an_existing_mode(tmp_path: Path, umask_002: object) -> None:
    assert current_umask() == 0o002
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_with(tmp_path / "b.bin", lambda name: Path(name).write_bytes(b"x"))
    assert mode(tmp_path / "a.txt") == 0o664 and mode(tmp_path / "b.bin") == 0o664  # not mkstemp's 0600
    os.chmod(tmp_path / "a.txt", 0o640)
    atomic_write_text(tmp_path / "a.txt", "two")
    assert mode(tmp_path / "a.txt") == 0o640 and (tmp_path / "a.txt").read_text() == "two"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.txt"
    atomic_write_text(target, "old")

    def fail(name: str) -> None:
        Path(name).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.txt"]


def test_a_folder_is_replaced_as_a_whole(tmp_path: Path, umask_002: object) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as d:
        (d / "config.json").write_text("v1")
        (d / "model.safetensors").write_text("w1")
        (d / "model.onnx").write_text("export of w1")
    assert mode(target) == 0o775 and mode(target / "config.json") == 0o664
    (target / "NOTES.md").write_text("the user's notes")
    with pytest.raises(RuntimeError), atomic_dir(target, replaces=("config.json", "model.safetensors")) as d:
        (d / "model.safetensors").write_text("w2")
        raise RuntimeError("killed between the two files")
    assert (target / "config.json").read_text() == "v1" and (target / "model.safetensors").read_text() == "w1"
    with atomic_dir(target, replaces=("config.json", "model.safetensors", "model.onnx")) as d:
        (d / "model.safetensors").write_text("w2")
        (d / "config.json").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["NOTES.md", "config.json", "model.safetensors"]
    assert (target / "config.json").read_text() == "v2" and (target / "NOTES.md").read_text() == "the user's notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left


def test_save_model_interrupted_before_the_config_keeps_the_old_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imgcls.artifacts as artifacts

    pre = PreprocessConfig(input_size=(3, 32, 32))
    torch.manual_seed(0)
    first = create_model("lenet", num_classes=3)
    save_model(first, tmp_path / "model", label_names=["a", "b", "c"], preprocess=pre)
    assert mode(tmp_path / "model" / "config.json") == 0o666 & ~current_umask()
    second = create_model("lenet", num_classes=3)
    real_dumps = json.dumps

    def dumps(obj: object, **kw: object) -> str:
        if isinstance(obj, dict) and obj.get("label_names") == ["x", "y", "z"]:
            raise KeyboardInterrupt  # killed after the weights, before the config
        return real_dumps(obj, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(artifacts.json, "dumps", dumps)
    with pytest.raises(KeyboardInterrupt):
        save_model(second, tmp_path / "model", label_names=["x", "y", "z"], preprocess=pre)
    monkeypatch.undo()
    model, info = load_model(tmp_path / "model")
    assert info.label_names == ["a", "b", "c"]
    for k, v in first.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
