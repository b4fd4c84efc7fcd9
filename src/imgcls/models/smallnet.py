"""SmallNet: a fast VGG-style network for small images (28-64 px: MNIST-like, CIFAR-like).

After Keller Jordan's airbench (https://github.com/KellerJordan/cifar10-airbench): a 3x3 stem,
then three stages of conv -> 2x2 max-pool -> norm -> GELU -> conv -> norm -> GELU that double
the width while halving the resolution, a global max-pool and a linear classifier. About 1.2M
parameters and 65M multiply-adds at 28x28, so on two CPU cores with bfloat16 it trains at
roughly 900 images/s: the default architecture for images of 64 px or less (Fashion-MNIST:
see BENCHMARKS.md). Neither timm nor torchvision has it.

``smallnet_075`` and ``smallnet_050`` are the same network at 0.75 and 0.5 of the width (timm's
naming of width multipliers, as in ``mobilenetv3_large_075``): 1.8x and 3.7x the training
throughput of ``smallnet`` in fp32 on two AVX2 cores, 1.6x and 3.3x in bf16 (BENCHMARKS.md). A
``--time-budget`` run chooses between them when the machine cannot train the full width for
enough epochs (:mod:`imgcls.engine.candidates`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from imgcls.models.layers import attn_factory, norm_factory
from imgcls.models.registry import ModelEntry, attach_cfg, register_model


class ConvBlock(nn.Module):
    """conv -> pool -> norm -> act -> conv -> norm -> act [-> attention]"""

    def __init__(self, cin: int, cout: int, *, norm: str, attn: str | None) -> None:
        super().__init__()
        make_norm = norm_factory(norm)
        make_attn = attn_factory(attn)
        bias = norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = make_norm(cout)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias)
        self.norm2 = make_norm(cout)
        self.act2 = nn.GELU()
        self.attn = make_attn(cout) if make_attn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.pool(self.conv1(x))))
        return self.attn(self.act2(self.norm2(self.conv2(x))))


class SmallNet(nn.Module):
    def __init__(
        self,
        *,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (64, 128, 256),
        stem: int = 32,
        norm: str = "batch",
        attn: str | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 3, padding=1, bias=norm == "none"),
            norm_factory(norm)(stem),
            nn.GELU(),
        )
        chans = (stem, *widths)
        self.stages = nn.Sequential(*[ConvBlock(chans[i], chans[i + 1], norm=norm, attn=attn) for i in range(3)])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten(1)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.stages(self.stem(x))))
        return self.fc(self.drop(x))


def _build(*, num_classes: int, norm: str | None, attn: str | None, **kw: Any) -> nn.Module:
    model = SmallNet(num_classes=num_classes, norm=norm or "batch", attn=attn, **kw)
    cfg = {
        "input_size": (3, 28, 28),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "classifier": "fc",
        "first_conv": "stem.0",
    }
    return attach_cfg(model, cfg)


WIDTHS = {"smallnet": (64, 128, 256), "smallnet_075": (48, 96, 192), "smallnet_050": (32, 64, 128)}

for _name, _widths in WIDTHS.items():
    _share = "" if _name == "smallnet" else f" at {int(_name[-3:]) / 100:g} of the width"
    register_model(
        ModelEntry(
            name=_name,
            family="smallnet",
            source="imgcls",
            build=functools.partial(_build, widths=_widths, stem=_widths[0] // 2),
            description=f"fast VGG-style net for 28-64 px images (after airbench){_share}",
            options=("norm", "attn"),
            default_norm="batch",
        )
    )
