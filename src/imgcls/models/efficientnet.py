"""EfficientNet B0-B3 (Tan & Le 2019), built by timm (same parameter counts as torchvision's)."""

from __future__ import annotations

from typing import Any

from torch import nn

from imgcls.models.external import build_timm
from imgcls.models.registry import ModelEntry, register_model


def _builder(timm_name: str) -> Any:
    def build(*, num_classes: int, drop_rate: float = 0.0, **_: Any) -> nn.Module:
        return build_timm(timm_name, num_classes=num_classes, drop_rate=drop_rate)

    return build


for _i in range(4):
    _name = f"efficientnet_b{_i}"
    register_model(
        ModelEntry(
            name=_name,
            family="efficientnet",
            source="timm",
            build=_builder(_name),
            description=f"EfficientNet-B{_i}",
            timm_name=_name,
            timm_weights=_name,
        )
    )
