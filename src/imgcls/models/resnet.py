"""ResNet (He et al. 2016) and Squeeze-and-Excitation ResNet (Hu et al. 2018), built by timm.

timm's ResNet has torchvision's module names, so torchvision's ImageNet weights load into these
models unchanged as well as timm's. Options: ``norm`` (resolved by :mod:`imgcls.models.layers`,
passed under timm's own name where timm has one) and ``attn`` (timm's per-block ``attn_layer``;
``resnet50`` with ``attn="se"`` is exactly ``seresnet50``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from imgcls.models.external import build_timm
from imgcls.models.layers import norm_factory, timm_norm_name
from imgcls.models.registry import ModelEntry, register_model


def _builder(timm_name: str) -> Any:
    def build(*, num_classes: int, norm: str | None, attn: str | None, drop_rate: float = 0.0, **_: Any) -> nn.Module:
        kw: dict[str, Any] = {}
        if norm and norm != "batch":
            kw["norm_layer"] = timm_norm_name(norm) or norm_factory(norm)
        if attn is not None:
            kw["block_args"] = {"attn_layer": None if attn == "none" else attn}
        return build_timm(timm_name, num_classes=num_classes, drop_rate=drop_rate, **kw)

    return build


_TV_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V2",
    "resnet152": "ResNet152_Weights.IMAGENET1K_V2",
}
_DEPTHS = (18, 34, 50, 101, 152)

for _depth in _DEPTHS:
    for _prefix, _attn, _desc in (("resnet", None, "ResNet"), ("seresnet", "se", "SE-ResNet")):
        _name = f"{_prefix}{_depth}"
        register_model(
            ModelEntry(
                name=_name,
                family=_prefix,
                source="timm",
                build=_builder(_name),
                description=f"{_desc}-{_depth}",
                options=("norm", "attn"),
                default_norm="batch",
                default_attn=_attn,
                timm_name=_name,
                timm_weights=_name,
                torchvision_weights=_TV_WEIGHTS.get(_name),
            )
        )
