"""Device and precision choice (imgcls.runtime) on CPUs with and without bf16 units."""

from __future__ import annotations

import pytest
import torch

from imgcls import runtime
from imgcls.errors import UserError

AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize(("flags", "capability", "expected"), [(AMX, "AVX512", "bf16"), (ZEN4, "AVX512", "bf16"),
                                                                (AVX2, "AVX2", "fp32")])  # fmt: skip
def test_auto_precision_follows_the_cpus_bf16_units(
    monkeypatch: pytest.MonkeyPatch, flags: frozenset, capability: str, expected: str
) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) == expected
    assert runtime.resolve_precision("fp32", cpu) == "fp32" and runtime.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UserError, match="fp16 is for GPUs"):
        runtime.resolve_precision("fp16", cpu)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN held to the AVX2 tier: bf16 would be emulated
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_amx")
    assert runtime.resolve_precision("auto", cpu) == expected


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_gpus(monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert runtime.resolve_precision("auto", torch.device("cuda")) == expected


def test_device_choice() -> None:
    assert runtime.resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert runtime.resolve_device("auto").type == "cpu"
        with pytest.raises(UserError, match="no CUDA GPU"):
            runtime.resolve_device("cuda")
    with pytest.raises(UserError, match="unknown device"):
        runtime.resolve_device("tpu")
    with pytest.raises(UserError, match="unknown precision"):
        runtime.resolve_precision("int4", torch.device("cpu"))
