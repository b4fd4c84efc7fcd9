"""benchmarks/avx2_only.py: a command sees a CPU with AVX2 and nothing above it (every library:
PyTorch, ONNX Runtime, imgcls's own probe), while a real crash still crashes."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLAGS = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "") if (
    Path("/proc/cpuinfo").is_file()) else ""  # fmt: skip


def _can_unshare() -> bool:
    """A private mount namespace is allowed here (root, and a container that permits it)."""
    if not (shutil.which("unshare") and hasattr(os, "geteuid") and os.geteuid() == 0):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


emulates = pytest.mark.skipif(
    not (" cpuid_fault" in FLAGS and " avx2" in FLAGS and shutil.which("gcc") and _can_unshare()),
    reason="needs CPUID faulting, AVX2, gcc, and unshare -m (root)",
)

PROBE = """
import ctypes, torch
from imgcls.runtime import cpu_features, cpu_tier
print(torch.backends.cpu.get_cpu_capability(), cpu_tier(), sorted(k for k, v in cpu_features().items() if v))
x = torch.nn.Conv2d(3, 8, 3)(torch.randn(2, 3, 16, 16))  # oneDNN runs under the hidden CPUID
print(tuple(x.shape), flush=True)
import subprocess
subprocess.run(["true"], check=True)  # a vfork child resets its handlers in this memory before exec
ctypes.string_at(0)  # a real fault: faulthandler reports it and the process dies of it
"""


@emulates
def test_the_command_sees_avx2_only_and_a_real_fault_still_kills_it(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "avx2_only.py"), sys.executable, "-X", "faulthandler",
                        "-c", PROBE], capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    lines = r.stdout.splitlines()
    assert lines[:2] == ["AVX2 AVX2 ['avx2']", "(2, 8, 14, 14)"], r.stdout + r.stderr
    assert r.returncode == 128 + 11 and "Fatal Python error: Segmentation fault" in r.stderr  # SIGSEGV


PLANTED = """
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen("%s", "w");
    if (f) { fputs("loaded", f); fclose(f); }
}
"""


@emulates
def test_a_library_planted_in_the_shared_temporary_folder_is_never_loaded(tmp_path: Path) -> None:
    """It built into /tmp/imgcls-bench, a name anyone can create first, and preloaded whatever
    library of the expected name it found there into a root process."""
    marker = tmp_path / "planted-ran"
    shared = tmp_path / "tmp"
    digest = hashlib.sha256((ROOT / "benchmarks" / "avx2_only.c").read_bytes()).hexdigest()[:12]
    (shared / "imgcls-bench").mkdir(parents=True)
    source = tmp_path / "planted.c"
    source.write_text(PLANTED % marker)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(shared / "imgcls-bench" / f"avx2_only-{digest}.so"),
                    str(source)], check=True)  # fmt: skip
    env = {**os.environ, "TMPDIR": str(shared)}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "avx2_only.py"), "true"], capture_output=True,
                       text=True, timeout=300, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert not marker.exists()  # the planted library never ran
    assert sorted(p.name for p in shared.iterdir()) == ["imgcls-bench"]  # and nothing is left behind


def test_each_run_builds_in_a_private_folder_of_its_own_and_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("avx2_only", ROOT / "benchmarks" / "avx2_only.py")
    assert spec is not None and spec.loader is not None
    avx2_only = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(avx2_only)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    with avx2_only.workspace() as first, avx2_only.workspace() as second:
        assert first != second and first.parent == second.parent == tmp_path
        for folder in (first, second):
            info = folder.stat()
            assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid() and not any(folder.iterdir())
    assert not first.exists() and not second.exists()
