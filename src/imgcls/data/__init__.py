"""Data: sources, splits, robust decoding, preprocessing, augmentation and loaders."""

from imgcls.data.dataset import TrainingData, prepare_training_data
from imgcls.data.image import MAX_PIXELS, ImageError, read_image
from imgcls.data.sources import load_source
from imgcls.data.splits import Splits, make_splits
from imgcls.data.table import DataTable
from imgcls.data.transforms import PRESETS, AugmentSpec, eval_transform

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
