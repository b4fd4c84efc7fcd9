"""JPEG decoding and the evaluation transform on a torch device, a batch at a time: nvJPEG through
``torchvision.io.decode_jpeg(list, device="cuda")`` on a GPU (on the CPU the same code runs on
torchvision's libjpeg, which is what the tests drive).

A 12-MP camera-trap frame costs a CPU core about 25 ms even in draft mode; a GPU decodes a batch of
them at several hundred a second beside the CPU's decoders (:mod:`imgcls.predict.decoders` decides
how the files are shared). The result is the model's uint8 input, as :func:`imgcls.data.preprocess.
eval_array` makes it on the CPU: EXIF orientation applied, the shorter side resized to
``floor(size / crop_pct)`` (antialiased, the same output size and crop offsets as Pillow's path) or
the frame letterboxed on the neutral gray, the center crop. The pixels are close to the CPU's, not
equal to the bit: nvJPEG's inverse DCT and chroma upsampling, a full-size decode instead of draft
mode and torch's antialiased resize instead of Pillow's each move a few levels.

What it refuses, for the CPU to decode (``None`` in its answer): anything but an RGB JPEG (PNG,
grayscale, CMYK...), a JPEG without its end marker (truncated: the CPU path says so), an image
over the pixel limit (the CPU path then says why), a file it cannot read, and whatever nvJPEG
fails on; a batch that fails is retried an image at a time, so one bad
file costs only itself. Interpolations torch has no antialiased kernel for (lanczos, box) are not
offered to it at all (:func:`supports`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from imgcls.config import PreprocessConfig
from imgcls.data.image import BACKGROUND, MAX_PIXELS, ImageError, open_image
from imgcls.data.preprocess import square_size

_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


def supports(cfg: PreprocessConfig) -> bool:
    """Whether the device path can make this model's inputs (its interpolation has a torch kernel)."""
    return cfg.interpolation in _MODES and cfg.resize_mode in ("crop", "pad")


def available(device: str) -> bool:
    """Whether ``device`` is a CUDA device here and torchvision has its nvJPEG decoder."""
    if not device.startswith("cuda"):
        return False
    try:
        import torch
        import torchvision.io  # noqa: F401  (registers torch.ops.image)

        return bool(torch.cuda.is_available()) and hasattr(torch.ops.image, "decode_jpegs_cuda")
    except (ImportError, RuntimeError, AttributeError):
        return False


def _screen(data: bytes, max_pixels: int | None) -> int | None:
    """The EXIF orientation (1-8) of an RGB JPEG the device may decode, else None."""
    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None  # not a JPEG, or one cut short: the CPU path says what is wrong (or copes)
    try:
        img = open_image(data, max_pixels=max_pixels)
    except ImageError:
        return None
    with img:
        if img.format != "JPEG" or img.mode != "RGB":
            return None
        try:
            orientation = int(img.getexif().get(0x0112, 1))
        except Exception:  # damaged EXIF: Pillow's own path would skip it too
            orientation = 1
    return orientation if 1 <= orientation <= 8 else 1


def _orient(x: Any, orientation: int) -> Any:
    """Pillow's ``exif_transpose`` on a (C, H, W) tensor."""
    if orientation in (2, 4):
        return x.flip(-1 if orientation == 2 else -2)
    if orientation == 3:
        return x.flip(-1).flip(-2)
    if orientation == 5:
        return x.transpose(-1, -2)
    if orientation == 6:  # rotate 90 degrees clockwise
        return x.transpose(-1, -2).flip(-1)
    if orientation == 7:
        return x.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:  # rotate 90 degrees counter-clockwise
        return x.transpose(-1, -2).flip(-2)
    return x


def _resize(x: Any, size: tuple[int, int], mode: str) -> Any:
    """(C, H, W) uint8 -> float (C, h, w), antialiased when it shrinks (as Pillow always is)."""
    import torch.nn.functional as F

    if (x.shape[-2], x.shape[-1]) == size:
        return x.float()
    kw = {"antialias": True, "align_corners": False} if mode != "nearest" else {}
    return F.interpolate(x[None].float(), size=size, mode=mode, **kw)[0]


def model_input(x: Any, cfg: PreprocessConfig) -> Any:
    """An upright (3, H, W) uint8 image tensor -> the model's (size, size, 3) uint8 input, on its
    device, with :func:`imgcls.data.image.fit_square`'s sizes and offsets."""
    import torch

    s, size, mode = square_size(cfg), cfg.image_size, _MODES[cfg.interpolation]
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if cfg.resize_mode == "pad":  # letterbox: the whole frame in the square, gray around it
        scale = s / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        square = torch.tensor(BACKGROUND, dtype=torch.float32, device=x.device).view(3, 1, 1).expand(3, s, s).clone()
        left, top = (s - nw) // 2, (s - nh) // 2
        square[:, top : top + nh, left : left + nw] = _resize(x, (nh, nw), mode)
    else:  # shorter side to s (Pillow's rounding), then the center crop of s
        if min(w, h) == s:
            nw, nh = w, h
        else:
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            nw, nh = (s, nh) if w <= h else (nw, s)
        left, top = (nw - s) // 2, (nh - s) // 2
        square = _resize(x, (nh, nw), mode)[:, top : top + s, left : left + s]
    off = (s - size) // 2
    out = square[:, off : off + size, off : off + size]
    return out.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)


class DeviceDecoder:
    """Files (or their bytes) -> the model's uint8 inputs, decoded and transformed on ``device``."""

    def __init__(
        self, cfg: PreprocessConfig, device: str = "cuda", *, max_pixels: int | None = MAX_PIXELS, batch: int = 32
    ) -> None:
        if not supports(cfg):
            raise ValueError(f"the device decoder has no {cfg.interpolation!r} resize")
        self.cfg, self.device, self.max_pixels, self.batch = cfg, device, max_pixels, batch

    def decode(self, sources: Sequence[str | bytes]) -> list[np.ndarray | None]:
        """(size, size, 3) uint8 arrays in the order of ``sources``; None for each it refuses."""
        out: list[np.ndarray | None] = []
        for at in range(0, len(sources), self.batch):
            out.extend(self._batch(sources[at : at + self.batch]))
        return out

    def _batch(self, sources: Sequence[str | bytes]) -> list[np.ndarray | None]:
        import torch

        datas, orientations = [], []
        for src in sources:
            data = _read(src)
            orientations.append(_screen(data, self.max_pixels) if data is not None else None)
            datas.append(data)
        take = [i for i, o in enumerate(orientations) if o is not None]
        out: list[np.ndarray | None] = [None] * len(sources)
        if not take:
            return out
        tensors = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in take]  # type: ignore[arg-type]
        images = self._decode(tensors)
        ready = [(i, model_input(_orient(img, orientations[i]), self.cfg))  # type: ignore[arg-type]
                 for i, img in zip(take, images, strict=True) if img is not None]  # fmt: skip
        if ready:
            host = torch.stack([t for _, t in ready]).cpu().numpy()  # one copy back for the batch
            for k, (i, _) in enumerate(ready):
                out[i] = host[k]
        return out

    def _decode(self, tensors: list[Any]) -> list[Any]:
        """Decoded (3, H, W) uint8 images on the device (None where nvJPEG fails): the batch at
        once, else one at a time."""
        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 marks its decoders deprecated (torchcodec)
            try:
                return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device))
            except (RuntimeError, ValueError):
                pass
            found: list[Any] = []
            for t in tensors:
                try:
                    found.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=self.device))
                except (RuntimeError, ValueError):
                    found.append(None)
            return found


def _read(src: str | bytes) -> bytes | None:
    if isinstance(src, bytes):
        return src
    try:
        with open(src, "rb") as f:
            return f.read()
    except OSError:
        return None
