"""ConvNeXt (Liu et al. 2022) and ConvNeXt V2 (Woo et al. 2023, global response normalisation),
built by timm; their LayerNorm is part of the design, so they take no norm option."""

from __future__ import annotations

from typing import Any

from torch import nn

from imgcls.models.external import build_timm
from imgcls.models.registry import ModelEntry, register_model


def _builder(timm_name: str) -> Any:
    def build(*, num_classes: int, drop_rate: float = 0.0, **_: Any) -> nn.Module:
        return build_timm(timm_name, num_classes=num_classes, drop_rate=drop_rate)

    return build


_SIZES = {
    "convnext": ("tiny", "small", "base", "large"),
    "convnextv2": ("tiny", "base", "large"),
}

for _family, _sizes in _SIZES.items():
    for _size in _sizes:
        _name = f"{_family}_{_size}"
        register_model(
            ModelEntry(
                name=_name,
                family=_family,
                source="timm",
                build=_builder(_name),
                description=f"ConvNeXt{' V2' if _family.endswith('v2') else ''} {_size}",
                timm_name=_name,
                timm_weights=_name,
            )
        )
