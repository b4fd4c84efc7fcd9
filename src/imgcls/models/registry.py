"""The architecture registry: name -> builder, registered explicitly.

A family module (``lenet.py``, ``vgg.py``, ``resnet.py``...) calls :func:`register_model` once
per variant; registering a name twice is an error (as in torchvision's ``models/_api.py``).
Besides the registered names, ``timm/NAME`` and ``torchvision/NAME`` reach any classifier of
those libraries. Family modules import timm / torchvision inside their builders, so importing the
registry stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

from torch import nn

from imgcls.errors import UserError

#: Builders are keyword-only: ``build(num_classes=..., norm=..., attn=..., drop_rate=...)``.
Builder = Callable[..., nn.Module]

_FAMILY_MODULES = (
    "lenet", "smallnet", "cifar_resnet", "alexnet", "vgg", "resnet", "convnext", "efficientnet", "external",
)  # fmt: skip
#: ``timm/NAME`` and ``torchvision/NAME``: a library's own classifiers, resolved on demand by the
#: functions the ``external`` module registers here
_SOURCES: dict[str, Callable[[str], ModelEntry]] = {}


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    ``options`` lists the keyword options the builder honours beyond num_classes/drop_rate
    (``norm``, ``attn``). ``timm_weights`` / ``torchvision_weights`` name the published ImageNet
    weights (a timm model name with tag, a torchvision ``Weights`` enum member), or None.
    ``timm_name`` is set where the model *is* that timm architecture, so a saved model directory
    is loadable with ``timm.create_model("local-dir:...")``.
    """

    name: str
    family: str
    source: str
    build: Builder
    description: str
    options: tuple[str, ...] = ()
    default_norm: str | None = None
    default_attn: str | None = None
    timm_name: str | None = None
    timm_weights: str | None = None
    torchvision_weights: str | None = None


#: Preprocessing for the torchvision ImageNet classifiers (their ``Weights.transforms()``).
TORCHVISION_CFG: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
    "crop_pct": 224 / 256,
    "crop_mode": "center",
}


def attach_cfg(model: nn.Module, cfg: dict[str, Any]) -> nn.Module:
    """Give a non-timm model timm's ``pretrained_cfg`` attribute (preprocessing, classifier)."""
    setattr(model, "pretrained_cfg", dict(cfg))  # noqa: B010 (nn.Module's typed __setattr__)
    return model


_REGISTRY: dict[str, ModelEntry] = {}
_loaded = False


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add an architecture; a duplicate name is an error."""
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    if "/" in entry.name:
        raise ValueError(f"model name {entry.name!r} must not contain '/' (reserved for sources)")
    _REGISTRY[entry.name] = entry
    return entry


def register_source(prefix: str, resolve: Callable[[str], ModelEntry]) -> None:
    """``PREFIX/NAME`` architectures: ``resolve(NAME)`` makes their entry."""
    _SOURCES[prefix] = resolve


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _FAMILY_MODULES:
            importlib.import_module(f"imgcls.models.{mod}")


def _natural(name: str) -> list[object]:
    # resnet18 < resnet34 < resnet101: compare digit runs as numbers
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names in natural order, optionally filtered by a shell-style pattern such as
    'vgg*' (a plain word matches as a substring)."""
    _ensure_loaded()
    names = sorted(_REGISTRY, key=_natural)
    if pattern:
        pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch(n, pat)]
    return names


def get_entry(name: str) -> ModelEntry:
    """The entry for a registered name, ``timm/NAME`` or ``torchvision/NAME``."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    source, _, rest = name.partition("/")
    if rest and source in _SOURCES:
        return _SOURCES[source](rest)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(
        f"unknown architecture {name!r}{hint} (see 'imgcls models'; any timm or torchvision "
        "classifier works as timm/NAME or torchvision/NAME)"
    )
