"""Run a command as if this machine's CPU had AVX2 and nothing above it (no AVX-512, VNNI,
AVX512-BF16 or AMX): the tier of many users' CPUs, emulated on a newer one.

``ONEDNN_MAX_CPU_ISA=AVX2`` holds only PyTorch's oneDNN to that tier: ONNX Runtime's kernels
(MLAS), libjpeg-turbo and imgcls's own tier probe (``/proc/cpuinfo``) still see the real CPU.
This wrapper hides the features from every one of them: CPUID itself answers without them
(``avx2_only.c``, loaded with ``LD_PRELOAD``; Linux's CPUID faulting) and the command sees a
``/proc/cpuinfo`` without their flags (bind-mounted in a private mount namespace). The silicon is
still the newer core running AVX2 code, so figures are those of its AVX2 paths, an emulation, not
a measurement on an AVX2-only CPU; benchmarks record ``emulated`` in their machine line.

Needs Linux on x86-64 with CPUID faulting (``cpuid_fault`` in ``/proc/cpuinfo``: Intel since Ivy
Bridge, AMD Zen 4), ``gcc``, and root or ``unshare`` rights for the mount::

    .venv/bin/python benchmarks/avx2_only.py .venv/bin/python benchmarks/bench_int8.py
    .venv/bin/python benchmarks/avx2_only.py .venv/bin/python benchmarks/bench_predict.py --runs 1

Before the command it checks that the hiding holds (PyTorch reports AVX2, imgcls's tier is AVX2)
and stops otherwise.
"""

from __future__ import annotations

import contextlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "avx2_only.c"
HIDDEN = re.compile(r" (avx512[a-z0-9_]*|avx_vnni[a-z0-9_]*|amx[a-z0-9_]*)(?=\s)")  # the flags hidden
EMULATED = "AVX2 only: CPUID and /proc/cpuinfo without AVX-512, VNNI, AVX512-BF16, AMX (benchmarks/avx2_only.py)"
CHECK = (
    "import torch; from imgcls.runtime import cpu_tier; "
    "print(torch.backends.cpu.get_cpu_capability(), cpu_tier(), sep='|')"
)


def refuse(why: str) -> None:
    raise SystemExit(f"avx2_only.py: {why}")


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A fresh folder only this user can enter (``mkdtemp``: an unpredictable name, mode 0700),
    removed afterwards. The library is preloaded into a root process, so it is never taken from
    a shared folder: a fixed name under /tmp can be created first by anyone, with their library
    of the expected name inside."""
    with tempfile.TemporaryDirectory(prefix="imgcls-avx2-") as work:
        yield Path(work)


def build(work: Path) -> Path:
    """The preload library, compiled from the source into ``work`` (a private folder)."""
    if shutil.which("gcc") is None:
        refuse("gcc is needed to build avx2_only.c")
    lib = work / "avx2_only.so"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(lib), str(SOURCE), "-ldl", "-lpthread"], check=True
    )
    return lib


def hidden_cpuinfo(work: Path) -> Path:
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    out = work / "cpuinfo"
    out.write_text("".join(HIDDEN.sub("", line) if line.startswith("flags") else line
                           for line in text.splitlines(keepends=True)), encoding="utf-8")  # fmt: skip
    return out


def wrapped(lib: Path, cpuinfo: Path, command: list[str]) -> list[str]:
    """The command under ``unshare -m``, with the hidden cpuinfo mounted and the library preloaded."""
    script = 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "avx2_only", str(cpuinfo), "env", f"LD_PRELOAD={lib}",
            f"IMGCLS_BENCH_EMULATED={EMULATED}", *command]  # fmt: skip


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        refuse("needs Linux on x86-64")
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    if " cpuid_fault" not in flags:
        refuse("this kernel or CPU has no CPUID faulting ('cpuid_fault' is not in /proc/cpuinfo)")
    if " avx2" not in flags:
        refuse("this CPU has no AVX2 to emulate the tier with")
    if shutil.which("unshare") is None:
        refuse("needs unshare (util-linux) for a private /proc/cpuinfo")
    with workspace() as work:
        lib, cpuinfo = build(work), hidden_cpuinfo(work)
        check = subprocess.run(wrapped(lib, cpuinfo, [sys.executable, "-c", CHECK]), capture_output=True, text=True)
        seen = check.stdout.strip()
        if check.returncode != 0 or seen != "AVX2|AVX2":
            refuse(f"the features are not hidden (PyTorch|imgcls see {seen or '?'}): {check.stderr.strip()[-300:]}")
        print(f"avx2_only.py: {EMULATED}", file=sys.stderr, flush=True)
        rc = subprocess.run(wrapped(lib, cpuinfo, argv)).returncode
    return 128 - rc if rc < 0 else rc  # killed by a signal: the shell's 128 + N


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
