"""He et al.'s CIFAR-10 networks (He, Zhang, Ren, Sun 2016, "Deep Residual Learning for Image
Recognition", section 4.2): ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56``, ``resnet110``
and their *plain* counterparts ``plain20`` ... ``plain110``, for small images (32x32).

6n+2 weighted layers: a 3x3 convolution with 16 filters, then three stages of n blocks of two 3x3
convolutions on maps of 32, 16 and 8 pixels with 16, 32 and 64 filters (the first convolution of
the second and third stage has stride 2), global average pooling and a fully connected layer.
Each convolution is followed by batch normalisation; the weights are initialised as in He et al.
2015 (``kaiming_normal_``, fan-out), as the paper's networks were.

A residual block adds its input to its output before the last ReLU (an identity shortcut). Where
the size changes the shortcut is the paper's **option A**, as in its CIFAR experiments: the input
subsampled by 2 and padded with zero channels, no parameters, so a residual network has exactly
the parameters of its plain counterpart (resnet20 0.27M, resnet56 0.85M, resnet110 1.7M at 10
classes: Table 6). A plain block is the same two convolutions without the shortcut: the
networks of the paper's Figure 6, whose *training* error rises with depth (the degradation
problem) while the residual ones' falls. Neither timm nor torchvision has them.

Options: ``norm`` in place of batch normalisation and ``attn`` (channel attention after each
block's second normalisation, before the shortcut is added, as timm places it).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from imgcls.models.layers import attn_factory, norm_factory
from imgcls.models.registry import ModelEntry, attach_cfg, register_model

DEPTHS = (20, 32, 44, 56, 110)
WIDTHS = (16, 32, 64)


class ShortcutA(nn.Module):
    """Option A: subsample by ``stride`` and pad the new channels with zeros (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2)) if self.pad else x


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm [-> attention] (+ shortcut) -> ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, *, residual: bool, norm: str, attn: str | None) -> None:
        super().__init__()
        make_norm, make_attn = norm_factory(norm), attn_factory(attn)
        bias = norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = make_norm(cout)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias)
        self.bn2 = make_norm(cout)
        self.attn = make_attn(cout) if make_attn else nn.Identity()
        self.act2 = nn.ReLU(inplace=True)
        self.residual = residual
        self.shortcut: nn.Module | None = None
        if residual:
            self.shortcut = ShortcutA(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attn(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act2(out)


class CifarResNet(nn.Module):
    """The 6n+2-layer network; ``residual=False`` gives the plain counterpart."""

    def __init__(
        self,
        depth: int,
        *,
        residual: bool = True,
        num_classes: int = 10,
        norm: str = "batch",
        attn: str | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2, not {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 3, padding=1, bias=norm == "none")
        self.bn1 = norm_factory(norm)(WIDTHS[0])
        self.act1 = nn.ReLU(inplace=True)
        stages, cin = [], WIDTHS[0]
        for k, width in enumerate(WIDTHS):
            blocks = []
            for b in range(n):
                stride = 2 if k > 0 and b == 0 else 1
                blocks.append(BasicBlock(cin, width, stride, residual=residual, norm=norm, attn=attn))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(WIDTHS[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.flatten(self.pool(self.forward_features(x)))))


def _build(*, depth: int, residual: bool, num_classes: int, norm: str | None, attn: str | None, **kw: Any) -> nn.Module:
    model = CifarResNet(depth, residual=residual, num_classes=num_classes, norm=norm or "batch", attn=attn, **kw)
    cfg = {
        "input_size": (3, 32, 32),
        # CIFAR-10's channel statistics (the paper subtracts the per-pixel mean)
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "classifier": "fc",
        "first_conv": "conv1",
    }
    return attach_cfg(model, cfg)


for _depth in DEPTHS:
    for _prefix, _residual in (("resnet", True), ("plain", False)):
        _kind = "ResNet with identity shortcuts (option A)" if _residual else "plain net (no shortcuts)"
        register_model(
            ModelEntry(
                name=f"{_prefix}{_depth}",
                family=f"cifar_{_prefix}",
                source="imgcls",
                build=functools.partial(_build, depth=_depth, residual=_residual),
                description=f"He et al.'s CIFAR {_kind}, {_depth} layers, 16/32/64 channels, 32x32 input",
                options=("norm", "attn"),
                default_norm="batch",
            )
        )
