"""benchmarks/avx2_only.py: a command sees a CPU with AVX2 and nothing above it (every library:
PyTorch, ONNX Runtime, imgcls's own probe), while a real crash still crashes."""

from __future__ import annotations

import os
import shutil
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


pytestmark = pytest.mark.skipif(
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


def test_the_command_sees_avx2_only_and_a_real_fault_still_kills_it(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "avx2_only.py"), sys.executable, "-X", "faulthandler",
                        "-c", PROBE], capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    lines = r.stdout.splitlines()
    assert lines[:2] == ["AVX2 AVX2 ['avx2']", "(2, 8, 14, 14)"], r.stdout + r.stderr
    assert r.returncode == 128 + 11 and "Fatal Python error: Segmentation fault" in r.stderr  # SIGSEGV
