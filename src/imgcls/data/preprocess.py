"""The evaluation transform up to normalisation, with Pillow and NumPy only (no torch), so
prediction through ONNX Runtime starts without importing torch.

Resize the shorter side to ``S = floor(size / crop_pct)`` and center-crop ``S`` (or letterbox the
whole frame into ``S`` with ``resize_mode='pad'``), center-crop ``size``; then
``(x / 255 - mean) / std`` per channel.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from imgcls.config import PreprocessConfig
from imgcls.data.image import center_crop, fit_square


def square_size(cfg: PreprocessConfig) -> int:
    """Side of the square the center crop is taken from (timm: floor(size / crop_pct))."""
    return max(cfg.image_size, math.floor(cfg.image_size / cfg.crop_pct))


def prepare_square(img: Image.Image, cfg: PreprocessConfig, size: int | None = None) -> np.ndarray:
    """The uint8 (S, S, 3) square of an RGB image (first half of the evaluation transform)."""
    s = size or square_size(cfg)
    return np.asarray(fit_square(img, s, interpolation=cfg.interpolation, mode=cfg.resize_mode))


def eval_array(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """The evaluation transform up to normalisation: uint8 (size, size, 3)."""
    s = square_size(cfg)
    square = fit_square(img, s, interpolation=cfg.interpolation, mode=cfg.resize_mode)
    return np.asarray(center_crop(square, cfg.image_size))


def normalize_np(batch: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W), normalised."""
    x = batch.astype(np.float32).transpose(0, 3, 1, 2)
    mean = np.asarray(cfg.mean, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
    std = np.asarray(cfg.std, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
    return np.ascontiguousarray((x - mean) / std)
