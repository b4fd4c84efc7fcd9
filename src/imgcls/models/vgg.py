"""VGG: the ConvNet configurations A-E of Simonyan & Zisserman, "Very Deep Convolutional Networks
for Large-Scale Image Recognition" (ICLR 2015, table 1).

The network is torchvision's ``VGG`` container (adaptive 7x7 pool, 4096-4096-classes classifier,
its initialisation) around a ``features`` stack built here, because torchvision has only
configurations A, B, D, E (with or without batch norm) and no options. The stack keeps
torchvision's module order, so with the default options the state dict of ``vgg11``, ``vgg13``,
``vgg16``, ``vgg19`` and their ``_bn`` variants equals torchvision's and its weights load
unchanged. Built here only:

- ``vgg11_lrn`` (A-LRN): configuration A with local response normalisation after the first
  convolution (Krizhevsky et al. 2012 parameters: n = 5, alpha = 1e-4, beta = 0.75, k = 2).
- ``vgg16_c`` (C): 16 layers where the third convolution of blocks 3-5 is 1x1 (134M parameters).
- ``norm`` (batch, group, layer, instance, none) after each convolution and ``attn`` (e.g.
  Squeeze-and-Excitation) at the end of each block, before its max-pool.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from imgcls.models.layers import attn_factory, norm_factory
from imgcls.models.registry import TORCHVISION_CFG, ModelEntry, attach_cfg, register_model

M = "M"  # 2x2 max-pool, stride 2

# Output channels per conv (3x3 unless given as (channels, kernel)), "M" ends a block.
# fmt: off
CONFIGS: dict[str, list[Any]] = {
    "A": [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "B": [64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "C": [64, 64, M, 128, 128, M, 256, 256, (256, 1), M, 512, 512, (512, 1), M,
          512, 512, (512, 1), M],
    "D": [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
    "E": [64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M,
          512, 512, 512, 512, M],
}
# fmt: on


def make_features(config: list[Any], *, norm: str, attn: str | None, lrn: bool) -> nn.Sequential:
    """The convolutional stack of a VGG configuration (torchvision's module order)."""
    make_norm = norm_factory(norm)
    make_attn = attn_factory(attn)
    layers: list[nn.Module] = []
    in_ch = 3
    for item in config:
        if item == M:
            if make_attn is not None:
                layers.append(make_attn(in_ch))
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_ch, k = item if isinstance(item, tuple) else (item, 3)
        layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=k, padding=k // 2))
        if norm != "none":
            layers.append(make_norm(out_ch))
        layers.append(nn.ReLU(inplace=True))
        if lrn and in_ch == 3:
            # PyTorch divides alpha by n, the paper's formula does not: alpha = n * 1e-4 here
            # reproduces a / (k + 1e-4 * sum a^2) ** 0.75.
            layers.append(nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0))
        in_ch = out_ch
    return nn.Sequential(*layers)


def _builder(config: str, lrn: bool, default_norm: str) -> Any:
    def build(*, num_classes: int, norm: str | None, attn: str | None, drop_rate: float = 0.0, **_: Any) -> nn.Module:
        from torchvision.models.vgg import VGG

        norm = norm or default_norm
        features = make_features(CONFIGS[config], norm=norm, attn=attn, lrn=lrn)
        model = VGG(features, num_classes=num_classes, dropout=drop_rate or 0.5)
        return attach_cfg(model, {**TORCHVISION_CFG, "classifier": "classifier.6", "first_conv": "features.0"})

    return build


# name: (configuration, LRN, default norm, torchvision weights, description)
_VARIANTS: dict[str, tuple[str, bool, str, str | None, str]] = {
    "vgg11": ("A", False, "none", "VGG11_Weights.IMAGENET1K_V1", "VGG configuration A, 11 layers"),
    "vgg11_lrn": ("A", True, "none", None, "VGG A-LRN: A with local response normalisation"),
    "vgg13": ("B", False, "none", "VGG13_Weights.IMAGENET1K_V1", "VGG configuration B, 13 layers"),
    "vgg16_c": ("C", False, "none", None, "VGG configuration C: 16 layers, three 1x1 convs"),
    "vgg16": ("D", False, "none", "VGG16_Weights.IMAGENET1K_V1", "VGG configuration D, 16 layers"),
    "vgg19": ("E", False, "none", "VGG19_Weights.IMAGENET1K_V1", "VGG configuration E, 19 layers"),
    "vgg11_bn": ("A", False, "batch", "VGG11_BN_Weights.IMAGENET1K_V1", "VGG A with batch norm"),
    "vgg13_bn": ("B", False, "batch", "VGG13_BN_Weights.IMAGENET1K_V1", "VGG B with batch norm"),
    "vgg16_bn": ("D", False, "batch", "VGG16_BN_Weights.IMAGENET1K_V1", "VGG D with batch norm"),
    "vgg19_bn": ("E", False, "batch", "VGG19_BN_Weights.IMAGENET1K_V1", "VGG E with batch norm"),
}

for _name, (_cfg, _lrn, _norm, _weights, _desc) in _VARIANTS.items():
    register_model(
        ModelEntry(
            name=_name,
            family="vgg",
            source="torchvision" if _weights else "imgcls",
            build=_builder(_cfg, _lrn, _norm),
            description=_desc,
            options=("norm", "attn"),
            default_norm=_norm,
            torchvision_weights=_weights,
        )
    )
