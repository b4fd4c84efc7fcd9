"""AlexNet (Krizhevsky et al. 2012) exactly as torchvision lays it out, so torchvision's
ImageNet weights load unchanged (61,100,840 parameters at 1000 classes)."""

from __future__ import annotations

from typing import Any

from torch import nn

from imgcls.models.registry import TORCHVISION_CFG, ModelEntry, attach_cfg, register_model


def _build(*, num_classes: int, drop_rate: float = 0.0, **_: Any) -> nn.Module:
    from torchvision.models import alexnet

    # drop_rate 0 keeps torchvision's (and the paper's) 0.5 dropout in the classifier.
    model = alexnet(weights=None, num_classes=num_classes, dropout=drop_rate or 0.5)
    return attach_cfg(model, {**TORCHVISION_CFG, "classifier": "classifier.6", "first_conv": "features.0"})


register_model(
    ModelEntry(
        name="alexnet",
        family="alexnet",
        source="torchvision",
        build=_build,
        description="AlexNet (torchvision layout)",
        torchvision_weights="AlexNet_Weights.IMAGENET1K_V1",
    )
)
