"""Preprocessing and augmentation, built from the model's :class:`PreprocessConfig`.

Evaluation transform (train-time validation, evaluate, predict, export checks, serve): resize
the shorter side to ``S = floor(size / crop_pct)`` and center-crop ``S`` (or letterbox the whole
frame into ``S`` with ``resize_mode='pad'``), then center-crop ``size``, scale to [0, 1] and
normalise per channel: ``(x / 255 - mean) / std``.

Training keeps each image as the uint8 ``S x S`` square of the first step (decoded once, see
:mod:`imgcls.data.store`), so the evaluation transform on it is just the center crop, and
augmentation runs on whole batches: one ``grid_sample`` applies every image's own random
resized crop and flip (an affine map per image), far cheaper than per-image PIL calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from imgcls.config import AUGMENT_PRESETS, PreprocessConfig
from imgcls.data.preprocess import eval_array, prepare_square, square_size
from imgcls.runtime import to_device

__all__ = [
    "PRESETS",
    "AugmentSpec",
    "BatchAugment",
    "Normalize",
    "center_batch",
    "describe_augment",
    "eval_array",
    "eval_transform",
    "prepare_square",
    "square_size",
    "to_nchw",
]


class Normalize:
    """uint8 (B, C, H, W) batch -> float ``(x / 255 - mean) / std``; 1-channel input is
    replicated to RGB, as decoding does for grayscale files."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.device not in self._on:  # copied once per device: a copy per batch would wait for the GPU
            self._on[x.device] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._on[x.device]
        return (x - mean) / std


def to_nchw(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W[, C]) uint8 -> (B, C, H, W) tensor (a view where possible)."""
    if isinstance(batch, np.ndarray):
        arr = np.ascontiguousarray(batch)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    else:
        t = batch
    if t.ndim == 3:
        t = t.unsqueeze(-1)
    return t.permute(0, 3, 1, 2)


def center_batch(x: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """Evaluation transform on stored squares (B, C, S0, S0): resize to S if S0 differs (IDX
    images are stored at their own size), center-crop ``size``; still uint8-valued floats."""
    s = square_size(cfg)
    size = cfg.image_size
    if x.shape[-1] != s or x.shape[-2] != s:
        mode = "bicubic" if cfg.interpolation == "bicubic" else "bilinear"
        x = F.interpolate(x.float(), size=(s, s), mode=mode, antialias=True, align_corners=False)
        x = x.clamp(0, 255)
    top = (x.shape[-2] - size) // 2
    left = (x.shape[-1] - size) // 2
    return x[..., top : top + size, left : left + size]


@dataclass
class AugmentSpec:
    """Random resized crop (area ``scale``, aspect ``ratio``) or, with ``translate`` > 0, a
    random shift by up to that fraction of the side (zero padding: the pad-and-crop recipe);
    horizontal flip; optional TrivialAugment. Presets in :data:`PRESETS`."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    translate: float = 0.0
    hflip: float = 0.5
    trivial_augment: bool = False
    enabled: bool = True


PRESETS = {
    "none": AugmentSpec(enabled=False, hflip=0.0),
    "flip": AugmentSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0)),
    "light": AugmentSpec(scale=(0.35, 1.0)),
    "standard": AugmentSpec(scale=(0.08, 1.0)),
    "strong": AugmentSpec(scale=(0.08, 1.0), trivial_augment=True),
    # small images (28-32 px): shift by up to 8% of the side (2-3 px) and flip, the classic
    # pad-and-crop recipe of CIFAR / Fashion-MNIST training
    "small": AugmentSpec(translate=0.08),
    # the same shifts without the flip, for images whose mirror image is another class or none
    # (digits, letters, text, road signs): a mirrored 2, 3, 5 or 7 is not that digit
    "shift": AugmentSpec(translate=0.08, hflip=0.0),
}


assert tuple(PRESETS) == AUGMENT_PRESETS, "the presets' names are listed in imgcls.config"


def describe_augment(name: str) -> str:
    """A preset's name as a run's start line shows it, naming the horizontal flips where the
    preset makes them: flips teach that a mirror image is the same class, which is wrong for
    digits and text, so a user should see them before trusting the recipe ('small (horizontal
    flips on)'; choose 'shift' to keep the shifts without them)."""
    spec = PRESETS.get(name)
    if spec is None or not spec.enabled or spec.hflip <= 0 or name == "flip":
        return name
    return f"{name} (horizontal flips on)"


class BatchAugment:
    """Training transform on a uint8 batch of squares -> normalised float (B, 3, size, size)."""

    def __init__(self, cfg: PreprocessConfig, spec: AugmentSpec) -> None:
        self.cfg = cfg
        self.spec = spec
        self.normalize = Normalize(cfg)

    def _thetas(self, b: int, g: torch.Generator) -> torch.Tensor:
        """Per-image affine maps (output grid -> input coordinates in [-1, 1])."""
        s = self.spec
        flip = torch.where(torch.rand(b, generator=g) < s.hflip, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        if s.translate > 0:
            # the evaluation crop's scale (size / S of the square), shifted at random
            keep = self.cfg.image_size / square_size(self.cfg)
            shift = (torch.rand(b, 2, generator=g) * 2 - 1) * (2 * s.translate)
            theta[:, 0, 0] = keep * flip
            theta[:, 1, 1] = keep
            theta[:, :, 2] = shift
            return theta
        area = torch.empty(b).uniform_(s.scale[0], s.scale[1], generator=g)
        log_r = torch.empty(b).uniform_(math.log(s.ratio[0]), math.log(s.ratio[1]), generator=g)
        ratio = torch.exp(log_r)
        # crop width / height as fractions of the square, clamped to fit (as torchvision falls
        # back to the whole image when a draw does not fit)
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
        theta[:, 0, 0] = w * flip
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        return theta

    def _trivial(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        from torchvision.transforms import v2

        ta = v2.TrivialAugmentWide()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([ta(img) for img in x.to(torch.uint8)])

    def __call__(self, x: torch.Tensor, g: torch.Generator, size: int | None = None) -> torch.Tensor:
        """``x``: uint8 (B, C, S0, S0) on any device; ``g``: a CPU generator (the run's RNG);
        ``size``: the output size when it is not the configured one (progressive resizing: the
        resampling draws the smaller image directly)."""
        size = size or self.cfg.image_size
        if not self.spec.enabled:
            out = center_batch(x, self.cfg)
            if size != self.cfg.image_size:
                out = F.interpolate(out.float(), size=(size, size), mode="bilinear", antialias=True)
            return self.normalize(out)
        if self.spec.trivial_augment:
            x = self._trivial(x, g)
        theta = to_device(self._thetas(x.shape[0], g), x.device)  # drawn on the CPU: the same on any device
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
        mode = "bicubic" if self.cfg.interpolation == "bicubic" else "bilinear"
        pad = "zeros" if self.spec.translate > 0 else "reflection"
        out = F.grid_sample(x.float(), grid, mode=mode, padding_mode=pad, align_corners=False)
        return self.normalize(out.clamp_(0, 255))


def eval_transform(cfg: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
    """A per-image callable PIL -> normalised float tensor (3, size, size), for notebooks and
    libraries that want torchvision-style transforms."""
    normalize = Normalize(cfg)

    def transform(img: Image.Image) -> torch.Tensor:
        arr = eval_array(img.convert("RGB"), cfg)
        return normalize(to_nchw(arr[None]))[0]

    return transform
