"""LeNet: the classic small CNN of the PyTorch "Training a classifier" tutorial (after LeCun et
al. 1998): conv 3->6 (5x5), 2x2 max-pool, conv 6->16 (5x5), 2x2 max-pool, fully connected
400 -> 120 -> 84 -> classes, ReLU; 32x32 input. Neither timm nor torchvision has it.

Options: ``norm`` after each convolution (default none, as in the original) and ``attn``
(e.g. Squeeze-and-Excitation) after each conv stage.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from imgcls.models.layers import attn_factory, norm_factory
from imgcls.models.registry import ModelEntry, attach_cfg, register_model


class LeNet(nn.Module):
    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        norm: str = "none",
        attn: str | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        make_norm = norm_factory(norm)
        make_attn = attn_factory(attn)
        self.conv1 = nn.Conv2d(in_chans, 6, kernel_size=5)
        self.norm1 = make_norm(6)
        self.act1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.attn1 = make_attn(6) if make_attn else nn.Identity()
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.norm2 = make_norm(16)
        self.act2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2)
        self.attn2 = make_attn(16) if make_attn else nn.Identity()
        # Identity at the classic 32x32 input (the maps are already 5x5); lets other sizes run,
        # as torchvision's AlexNet and VGG do with their adaptive pools.
        self.pool = nn.AdaptiveAvgPool2d((5, 5))
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.act3 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(120, 84)
        self.act4 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc3 = nn.Linear(84, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.pool1(self.act1(self.norm1(self.conv1(x)))))
        x = self.attn2(self.pool2(self.act2(self.norm2(self.conv2(x)))))
        return self.act4(self.fc2(self.act3(self.fc1(self.flatten(self.pool(x))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.drop(self.forward_features(x)))


def _build(*, num_classes: int, norm: str | None, attn: str | None, **kw: Any) -> nn.Module:
    model = LeNet(num_classes=num_classes, norm=norm or "none", attn=attn, **kw)
    # The tutorial normalises with mean = std = 0.5 per channel.
    cfg = {
        "input_size": (3, 32, 32),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "classifier": "fc3",
        "first_conv": "conv1",
    }
    return attach_cfg(model, cfg)


register_model(
    ModelEntry(
        name="lenet",
        family="lenet",
        source="imgcls",
        build=_build,
        description="LeNet-style CNN of the PyTorch tutorial, 32x32 input",
        options=("norm", "attn"),
        default_norm="none",
    )
)
