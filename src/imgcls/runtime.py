"""Device, precision, threads and memory format: one place, used by training and inference.

``precision="auto"`` picks bfloat16 autocast where the hardware computes it natively — CPUs with
AVX512-BF16 or AMX (3-4x faster than float32 for conv nets on such a CPU, see BENCHMARKS.md)
and GPUs that support it — and float32 elsewhere. Conv nets use the channels-last memory format,
which oneDNN and cuDNN run faster. Every choice can be overridden.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from imgcls.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: prediction through ONNX never needs it
    import torch
    from torch import nn

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s), or "" where /proc/cpuinfo does not say."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def cpu_features() -> dict[str, bool]:
    """The CPU features that decide which precision is fast: AMX, AVX512-BF16, VNNI (int8 dot
    products, AVX-512 or AVX), AVX-512, AVX2."""
    flags = cpu_flags()
    return {
        "amx": "amx_tile" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "vnni": bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags),
        "avx512": "avx512f" in flags,
        "avx2": "avx2" in flags,
    }


def cpu_tier() -> str:
    """The CPU's tier for numeric work, in words: ``AMX``, ``AVX512-BF16``, ``AVX512-VNNI``,
    ``AVX512``, ``AVX2-VNNI``, ``AVX2`` or ``baseline``; ``ONEDNN_MAX_CPU_ISA=AVX2`` shows as
    ``AVX2 (held by ONEDNN_MAX_CPU_ISA)`` (PyTorch's tier; ONNX Runtime ignores the variable)."""
    f = cpu_features()
    if f["amx"]:
        tier = "AMX"
    elif f["avx512_bf16"]:
        tier = "AVX512-BF16"
    elif f["avx512"]:
        tier = "AVX512-VNNI" if f["vnni"] else "AVX512"
    elif f["avx2"]:
        tier = "AVX2-VNNI" if f["vnni"] else "AVX2"
    else:
        tier = "baseline"
    limit = _onednn_below_bf16()
    return f"{limit} (held by ONEDNN_MAX_CPU_ISA; the CPU is {tier})" if limit else tier


def _onednn_below_bf16() -> str:
    """``ONEDNN_MAX_CPU_ISA`` where it holds oneDNN below the tiers with bf16 units, else ""."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return limit if limit and limit not in _ONEDNN_BF16_TIERS else ""


#: oneDNN's ISA tiers (``ONEDNN_MAX_CPU_ISA``) that include native bf16 instructions
_ONEDNN_BF16_TIERS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                      "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
                      "AVX10_2_512_AMX_2", "ALL", "DEFAULT")  # fmt: skip


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 matrix units: AMX tiles or AVX512-BF16, and oneDNN is
    allowed to use them (``ONEDNN_MAX_CPU_ISA=AVX2`` holds it to a lower tier, where bf16 would
    be emulated and slower than float32). Imports torch only where /proc/cpuinfo cannot tell."""
    if _onednn_below_bf16():
        return False
    flags = cpu_flags()
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        return True
    if flags:
        return False
    with contextlib.suppress(Exception):
        import torch

        return bool(torch.backends.cpu.get_cpu_capability() == "AVX512_BF16")
    return False


def process_started() -> float:
    """``time.monotonic()`` at the moment this process started (Linux; now elsewhere), so a
    time budget covers interpreter start-up and imports too."""
    import time

    now = time.monotonic()
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        return now - max(0.0, age)
    except (OSError, ValueError, IndexError):
        return now


def physical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class DeviceFacts:
    """What the batch plan and the store's placement need to know of a device: its kind, its
    name and its memory (for a CPU, the machine's RAM as ``/proc/meminfo`` says)."""

    type: str  # cpu | cuda
    name: str
    free_bytes: int
    total_bytes: int


def device_facts(device: torch.device | str) -> DeviceFacts:
    """The facts of ``device`` now: a CUDA device's free and total memory
    (``torch.cuda.mem_get_info``), or the machine's available and total RAM."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(dev)
        return DeviceFacts("cuda", torch.cuda.get_device_name(dev), int(free), int(total))
    info: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
    total = info.get("MemTotal", 0)
    return DeviceFacts(dev.type, cpu_name() or dev.type, info.get("MemAvailable", total), total)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; from the CPU to a GPU through pinned memory without waiting: a
    blocking copy would wait for every step already queued on the GPU, leaving it idle while
    the next batch is prepared (the copy is ordered before later work on the stream anyway)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass
class Runtime:
    device: torch.device
    precision: str  # resolved: bf16 | fp16 | fp32
    channels_last: bool

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        import torch

        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        import torch

        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        non_blocking = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=non_blocking)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def describe(self) -> str:
        return f"{self.device.type}, {self.precision}{', channels_last' if self.channels_last else ''}"


def resolve_device(device: str | None) -> torch.device:
    import torch

    device = device or "auto"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here (use --device cpu)")
    if device not in DEVICES and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    return torch.device(device)


def resolve_precision(precision: str | None, device: torch.device) -> str:
    import torch

    precision = precision or "auto"
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 is for GPUs; on a CPU use bf16 or fp32")
    return precision


def is_conv_net(model: nn.Module) -> bool:
    import torch

    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def make_runtime(
    model: nn.Module | None = None,
    *,
    device: str | None = "auto",
    precision: str | None = "auto",
    channels_last: bool | None = None,
) -> Runtime:
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if channels_last is None:
        channels_last = model is not None and is_conv_net(model)
    return Runtime(device=dev, precision=prec, channels_last=channels_last)


def set_threads(threads: int | None = None) -> int:
    """Intra-op threads: one per core available to this process (unless told otherwise)."""
    import torch

    n = threads or physical_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def set_deterministic(on: bool) -> None:
    """Bit-exact repeatability where the kernels allow it (slower on GPUs)."""
    import torch

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def inference_mode(model: nn.Module) -> Iterator[None]:
    import torch

    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was)
