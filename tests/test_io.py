"""Atomic writes (imgcls.io) and the model directory written as a whole (imgcls.artifacts)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from imgcls.io import atomic_dir, atomic_write_text, atomic_write_with, current_umask


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


def test_under_torchrun_only_rank_0_probes_and_checks_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ranks checking one --out at once: rank 1 used to meet rank 0's probe file ('already
    exists and is not empty') or a folder its clean-up had just removed, and exit 2."""
    from imgcls.config import RunConfig
    from imgcls.engine.fit import prepare_run_dir
    from imgcls.errors import UserError
    from imgcls.io import check_writable

    run = tmp_path / "run"
    run.mkdir()
    (run / ".imgcls-probe-x1").write_bytes(b"")  # rank 0 probing at this moment
    cfg = RunConfig()
    cfg.train.out = str(run)
    with pytest.raises(UserError, match="already exists and is not empty"):
        prepare_run_dir(cfg, resume=False)  # no torchrun: refused as before
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert prepare_run_dir(cfg, resume=False) == (run, None)
    missing = tmp_path / "new" / "out.csv"
    assert check_writable(missing) == missing and not (tmp_path / "new").exists()  # rank 1 writes nothing
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="already exists and is not empty"):
        prepare_run_dir(cfg, resume=False)


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_a_folders_files_follow_the_umask_whatever_the_library_that_wrote_them(
    tmp_path: Path, umask: int, file_mode: int, dir_mode: int
) -> None:
    """safetensors creates its file 0600 whatever the umask: a model directory's weights were
    unreadable to the group and the world beside a 0644 config.json (umask 022), while a user
    who chose 077 keeps 0600 everywhere."""
    import torch
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        target = tmp_path / "model"
        with atomic_dir(target) as d:
            save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
            (d / "config.json").write_text("{}")
            (d / "sub").mkdir(mode=0o700)
            fd = os.open(d / "sub" / "part.bin", os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        assert {p.name: mode(p) for p in target.rglob("*")} == {
            "model.safetensors": file_mode, "config.json": file_mode, "sub": dir_mode, "part.bin": file_mode,
        }  # fmt: skip
        assert mode(target) == dir_mode
        os.chmod(target / "config.json", 0o640)  # the user's own choice for a file the next write replaces
        with atomic_dir(target, replaces=("config.json", "model.safetensors")) as d:
            save_file({"w": torch.ones(2)}, str(d / "model.safetensors"))
            (d / "config.json").write_text("{}")
        assert mode(target / "config.json") == 0o640 and mode(target / "model.safetensors") == file_mode
    finally:
        os.umask(old)


SAVE_TWICE = """
import os, sys
from pathlib import Path
from imgcls.io import atomic_dir
d = Path(sys.argv[1])
with atomic_dir(d) as t:
    (t / "model.safetensors").write_bytes(b"1")
    (t / "own.bin").write_bytes(b"x")
    os.chmod(t / "own.bin", 0o444)  # a writer that makes its file read-only
os.chmod(d / "model.safetensors", 0o444)  # chmod a-w, or a cp -r of read-only files
with atomic_dir(d) as t:
    (t / "model.safetensors").write_bytes(b"2")
    (t / "own.bin").write_bytes(b"y")
    os.chmod(t / "own.bin", 0o444)
print((d / "model.safetensors").read_bytes().decode(), oct(os.stat(d / "model.safetensors").st_mode & 0o777))
"""


def test_a_read_only_file_in_a_folder_does_not_break_its_next_save(tmp_path: Path) -> None:
    """The new file takes the old one's mode (0444 after ``chmod a-w``); _settle applied it and then
    opened the file for writing to fsync it, which a user who may not write it cannot (EACCES): the
    next save of the model folder failed. It syncs first, through a read-only open. Root ignores
    file modes (CAP_DAC_OVERRIDE), so as root the save runs in a process started without that
    capability (``setpriv``), where the mode is enforced as for any user; as another user, as is."""
    import shutil
    import subprocess
    import sys

    argv = [sys.executable, "-c", SAVE_TWICE, str(tmp_path / "model")]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: file modes cannot be enforced")
        argv = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2", "0o444"]
