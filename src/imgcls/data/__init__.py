"""Data: sources, splits, robust decoding, preprocessing, augmentation and loaders.

Names are imported on first use, so ``imgcls.data.image`` (Pillow only) can be used without
importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgcls._lazy import lazy_getattr

_NAMES = {
    "TrainingData": "imgcls.data.dataset",
    "prepare_training_data": "imgcls.data.dataset",
    "MAX_PIXELS": "imgcls.data.image",
    "ImageError": "imgcls.data.image",
    "read_image": "imgcls.data.image",
    "load_source": "imgcls.data.sources",
    "Splits": "imgcls.data.splits",
    "make_splits": "imgcls.data.splits",
    "DataTable": "imgcls.data.table",
    "PRESETS": "imgcls.data.transforms",
    "AugmentSpec": "imgcls.data.transforms",
    "eval_transform": "imgcls.data.transforms",
}

__all__ = [
    "MAX_PIXELS",
    "PRESETS",
    "AugmentSpec",
    "DataTable",
    "ImageError",
    "Splits",
    "TrainingData",
    "eval_transform",
    "load_source",
    "make_splits",
    "prepare_training_data",
    "read_image",
]

if TYPE_CHECKING:
    from imgcls.data.dataset import TrainingData, prepare_training_data
    from imgcls.data.image import MAX_PIXELS, ImageError, read_image
    from imgcls.data.sources import load_source
    from imgcls.data.splits import Splits, make_splits
    from imgcls.data.table import DataTable
    from imgcls.data.transforms import PRESETS, AugmentSpec, eval_transform


__getattr__ = lazy_getattr(__name__, _NAMES)
