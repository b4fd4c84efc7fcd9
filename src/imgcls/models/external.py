"""Architectures that live in timm or torchvision: the shared timm builder, and the dynamic
``timm/NAME`` / ``torchvision/NAME`` entries that reach any classifier of those libraries."""

from __future__ import annotations

from typing import Any

from torch import nn

from imgcls.errors import UserError
from imgcls.models.registry import TORCHVISION_CFG, ModelEntry, attach_cfg, register_source


def build_timm(timm_name: str, *, num_classes: int, drop_rate: float = 0.0, **kw: Any) -> nn.Module:
    """``timm.create_model`` without weights; the model carries timm's ``pretrained_cfg``."""
    import timm

    kw = {k: v for k, v in kw.items() if v is not None}
    if drop_rate:
        kw["drop_rate"] = drop_rate
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kw)


def timm_entry(timm_name: str) -> ModelEntry:
    import timm

    if not timm.is_model(timm_name):
        # timm names may carry a pretrained tag: resnet50.a1_in1k
        base = timm_name.split(".", 1)[0]
        if not timm.is_model(base):
            raise UserError(f"timm has no model {timm_name!r} (see timm.list_models())")

    def build(*, num_classes: int, drop_rate: float = 0.0, **_: Any) -> nn.Module:
        return build_timm(timm_name, num_classes=num_classes, drop_rate=drop_rate)

    return ModelEntry(
        name=f"timm/{timm_name}",
        family="timm",
        source="timm",
        build=build,
        description=f"timm {timm_name}",
        timm_name=timm_name.split(".", 1)[0],
        timm_weights=timm_name,
    )


def _last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UserError(f"{type(model).__name__} has no Linear classifier to resize")
    return names[-1]


def torchvision_entry(tv_name: str) -> ModelEntry:
    import torchvision.models as tvm

    if tv_name not in tvm.list_models(module=tvm):
        raise UserError(
            f"torchvision has no image classifier {tv_name!r} "
            "(see torchvision.models.list_models(module=torchvision.models))"
        )
    weights = tvm.get_model_weights(tv_name)
    default = weights.DEFAULT
    tr = default.transforms()
    crop = int(tr.crop_size[0])
    cfg = {
        **TORCHVISION_CFG,
        "input_size": (3, crop, crop),
        "mean": tuple(tr.mean),
        "std": tuple(tr.std),
        "interpolation": str(tr.interpolation.value),
        "crop_pct": crop / int(tr.resize_size[0]),
    }

    def build(*, num_classes: int, **_: Any) -> nn.Module:
        model = tvm.get_model(tv_name, weights=None, num_classes=num_classes)
        return attach_cfg(model, {**cfg, "classifier": _last_linear(model)})

    return ModelEntry(
        name=f"torchvision/{tv_name}",
        family="torchvision",
        source="torchvision",
        build=build,
        description=f"torchvision {tv_name}",
        torchvision_weights=f"{type(default).__name__}.{default.name}",
    )


register_source("timm", timm_entry)
register_source("torchvision", torchvision_entry)
