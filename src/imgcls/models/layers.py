"""Small factories that turn option names into layers (as timm's ``layers/create_norm.py`` and
``layers/create_attn.py`` do), so an architecture takes ``norm="group"`` instead of being forked.

Normalization follows the taxonomy of Wu & He, "Group Normalization" (ECCV 2018, fig. 2): all
four normalise activations by a mean and variance, over different sets of axes of an (N, C, H, W)
tensor, and then apply a learned per-channel scale and shift:

- ``batch``:    over (N, H, W) for each channel; uses batch statistics in training and running
                averages at inference (Ioffe & Szegedy 2015).
- ``group``:    over (H, W) and a group of C/G channels, per example; G = 32 as in the paper
                (fewer when the channel count is not a multiple of 32).
- ``layer``:    over (C, H, W) per example: group norm with one group (Ba et al. 2016).
- ``instance``: over (H, W) per example and channel: group norm with C groups (Ulyanov et al.).
- ``none``:     no normalization (the original AlexNet / VGG / LeNet).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from imgcls.errors import UserError
from imgcls.models.options import ATTNS, NORMS

__all__ = ["ATTNS", "NORMS", "attn_factory", "check_attn", "check_norm", "norm_factory", "timm_norm_name"]

NormFactory = Callable[..., nn.Module]


def _group_norm(num_channels: int, **_: Any) -> nn.Module:
    return nn.GroupNorm(math.gcd(num_channels, 32), num_channels)


def _layer_norm(num_channels: int, **_: Any) -> nn.Module:
    return nn.GroupNorm(1, num_channels)


def _instance_norm(num_channels: int, **_: Any) -> nn.Module:
    # GroupNorm with one channel per group is instance norm with an affine transform; unlike
    # nn.InstanceNorm2d it has no running statistics, so train and eval behave the same.
    return nn.GroupNorm(num_channels, num_channels)


def _batch_norm(num_channels: int, **_: Any) -> nn.Module:
    return nn.BatchNorm2d(num_channels)


def _no_norm(num_channels: int, **_: Any) -> nn.Module:
    return nn.Identity()


_NORM_FACTORIES: dict[str, NormFactory] = {
    "batch": _batch_norm,
    "group": _group_norm,
    "layer": _layer_norm,
    "instance": _instance_norm,
    "none": _no_norm,
}

# The same layers under timm's own names, so a timm model built with them stays loadable by
# ``timm.create_model("local-dir:...")`` (its config then names a layer timm knows).
_TIMM_NORM_NAMES = {"batch": "batchnorm2d", "group": "groupnorm", "layer": "groupnorm1"}


def check_norm(kind: str) -> str:
    if kind not in _NORM_FACTORIES:
        raise UserError(f"unknown norm {kind!r}; choose one of: {', '.join(NORMS)}")
    return kind


def check_attn(kind: str) -> str:
    if kind not in ATTNS:
        raise UserError(f"unknown attention {kind!r}; choose one of: {', '.join(ATTNS)}")
    return kind


def norm_factory(kind: str) -> NormFactory:
    """``norm_factory("group")(64)`` -> a normalization layer for 64 channels."""
    return _NORM_FACTORIES[check_norm(kind)]


def timm_norm_name(kind: str) -> str | None:
    """timm's name for the same layer, or None where timm has no name for it."""
    return _TIMM_NORM_NAMES.get(check_norm(kind))


def attn_factory(kind: str | None) -> Callable[[int], nn.Module] | None:
    """Channel attention after a conv stage: 'se' (Squeeze-and-Excitation, Hu et al. 2018),
    'eca' (Wang et al. 2020) or 'cbam' (Woo et al. 2018), built by timm's ``get_attn``."""
    if kind is None or check_attn(kind) == "none":
        return None
    from timm.layers import get_attn

    layer = get_attn(kind)
    assert layer is not None
    return layer
