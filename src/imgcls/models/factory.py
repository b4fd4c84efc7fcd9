"""``create_model``: a registry name plus options to a ready ``nn.Module``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from imgcls.config import PreprocessConfig
from imgcls.errors import UserError
from imgcls.models.layers import check_attn, check_norm
from imgcls.models.registry import ModelEntry, get_entry
from imgcls.models.weights import LoadReport, load_pretrained


def _check_options(entry: ModelEntry, norm: str | None, attn: str | None) -> None:
    for option, value in (("norm", norm), ("attn", attn)):
        if value is not None and option not in entry.options:
            raise UserError(
                f"{entry.name} has no {option} option (it applies to the ResNet, SE-ResNet, VGG and LeNet families)"
            )
    if norm is not None:
        check_norm(norm)
    if attn is not None:
        check_attn(attn)


def build_model(
    name: str,
    *,
    num_classes: int = 1000,
    pretrained: bool | str | Path | None = False,
    norm: str | None = None,
    attn: str | None = None,
    drop_rate: float = 0.0,
    partial: bool = False,
    class_names: list[str] | None = None,
    positive: str | None = None,
) -> tuple[nn.Module, LoadReport | None]:
    """Like :func:`create_model`, also returning what the pretrained-weight load did;
    ``class_names``: the outputs' classes, matched by name against a model directory's."""
    if int(num_classes) < 1:
        raise UserError(f"num_classes must be at least 1, not {num_classes}")
    entry = get_entry(name)
    _check_options(entry, norm, attn)
    model = entry.build(num_classes=int(num_classes), norm=norm, attn=attn, drop_rate=drop_rate)
    arch: dict[str, Any] = {
        "arch": entry.name,
        "num_classes": int(num_classes),
        "norm": norm or entry.default_norm,
        "attn": attn or entry.default_attn,
        "drop_rate": drop_rate,
    }
    setattr(model, "imgcls_arch", arch)  # noqa: B010 (nn.Module's typed __setattr__)
    report = None
    if pretrained not in (None, False, "", "none", "None", "false", "no"):
        report = load_pretrained(model, entry, pretrained, partial=partial, class_names=class_names, positive=positive)
    return model, report


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    pretrained: bool | str | Path | None = False,
    norm: str | None = None,
    attn: str | None = None,
    drop_rate: float = 0.0,
) -> nn.Module:
    """Build a registered architecture with its classifier sized for ``num_classes``.

    ``pretrained``: False for random initialisation; True for the published ImageNet weights;
    ``"timm"`` / ``"torchvision"`` to pick whose; or a path to a model directory or weights file.
    ``norm`` ("batch", "group", "layer", "instance", "none") and ``attn`` ("se", "eca", "cbam",
    "none") apply to the ResNet, VGG and LeNet families. The model carries its default
    preprocessing as ``model.pretrained_cfg`` (see :func:`preprocess_config`).

    >>> model = create_model("lenet", num_classes=10)
    >>> sum(p.numel() for p in model.parameters())
    62006
    """
    model, _ = build_model(
        name, num_classes=num_classes, pretrained=pretrained, norm=norm, attn=attn,
        drop_rate=drop_rate,
    )  # fmt: skip
    return model


def preprocess_config(model: nn.Module) -> PreprocessConfig:
    """The model's default preprocessing (input size, mean, std, interpolation, crop)."""
    return PreprocessConfig.from_pretrained_cfg(dict(getattr(model, "pretrained_cfg", {}) or {}))


def classifier_name(model: nn.Module) -> str:
    return str(dict(getattr(model, "pretrained_cfg", {}) or {}).get("classifier", "fc"))
