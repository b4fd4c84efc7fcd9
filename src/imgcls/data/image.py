"""Decoding: any image file to an upright RGB ``PIL.Image``, or an :class:`ImageError` saying why
not.

- The pixel limit is checked from the header, before any pixel is decoded, so a decompression
  bomb (a small PNG that claims 50,000 x 50,000 pixels) costs microseconds, not gigabytes.
- JPEGs are decoded at a reduced scale (1/2, 1/4 or 1/8, Pillow's ``draft``) when the caller
  needs far fewer pixels than the file has: a 4000x3000 camera-trap frame needed at 256 px is
  decoded at 500x375, several times faster than a full decode.
- EXIF orientation is applied; every mode becomes RGB: grayscale is replicated, palette and CMYK
  are converted, transparency is composited on a neutral gray, 16-bit images are scaled
  (65535 -> 255, not clipped).
- The file's extension plays no part in decoding (Pillow reads the content), so ``IMG_0001.JPG``,
  ``x.jpeg`` and a PNG misnamed ``.jpg`` all work; so do non-ASCII file names.

Which files of a folder are images to try is decided here too, by one rule that training's class
folders and prediction's folder walks share (:func:`not_an_image_name`, :func:`hidden_name`): a
name whose extension is no image format's (``notes.txt``, a camera's ``.xml`` sidecar,
``Thumbs.db``, a video) is left out on purpose and counted apart from unusable images, so a card
of sidecars cannot stop a run; a name with an image format's extension, or none, is tried by its
content.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Default pixel limit (width x height): above the largest camera-trap sensors (~60 MP).
MAX_PIXELS = 100_000_000

#: Transparent pixels are composited on this neutral gray.
BACKGROUND = (128, 128, 128)

# Pillow's process-wide settings (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``)
# belong to the program that imports imgcls and are never changed here: a web app that imports
# imgcls keeps its own decompression-bomb guard. imgcls checks its own, per-call limit from the
# header on top of Pillow's (warns above MAX_IMAGE_PIXELS, refuses above twice that: 179 MP by
# default). Only the ``imgcls`` command, which owns its process, raises Pillow's limit when a
# user asks for a larger ``--max-pixels`` (see :func:`allow_pixels`).


class ImageError(Exception):
    """An image that cannot be used, with the reason (one line)."""


_IMAGE_SUFFIXES: frozenset[str] = frozenset()


def image_suffixes() -> frozenset[str]:
    """File extensions of the formats Pillow can open (``.jpg``, ``.png``, ``.tif``, ``.webp``...)."""
    global _IMAGE_SUFFIXES
    if not _IMAGE_SUFFIXES:
        Image.init()
        _IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
    return _IMAGE_SUFFIXES


def hidden_name(name: str) -> bool:
    """A file or folder a folder walk does not list at all: hidden names (``.DS_Store``, macOS's
    ``._IMG_0001.JPG`` AppleDouble twins, ``.git``) and macOS's ``__MACOSX`` archive folder."""
    return name.startswith(".") or name == "__MACOSX"


def not_an_image_name(name: str) -> str | None:
    """The extension (lower case) of a file whose name says it is no image (``.txt``, ``.xml``,
    ``.json``, ``.csv``, ``.db`` of ``Thumbs.db``, ``.ini`` of ``desktop.ini``, videos), else None:
    a name with an image format's extension, or none (``IMG_0001``), is tried by its content."""
    suffix = os.path.splitext(name)[1].lower()
    return suffix if suffix and suffix not in image_suffixes() else None


def not_images_note(by_suffix: Mapping[str, int]) -> str:
    """'3 files that are not images (.txt 2, .xml 1)', '1 file that is not an image (.txt)', or ''."""
    n = sum(by_suffix.values())
    if not n:
        return ""
    if n == 1:
        return f"1 file that is not an image ({next(k for k, v in by_suffix.items() if v)})"
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(by_suffix.items(), key=lambda kv: (-kv[1], kv[0])) if v)
    return f"{n} files that are not images ({kinds})"


def _open(source: str | Path | bytes | IO[bytes]) -> tuple[Image.Image, str]:
    if isinstance(source, bytes):
        if not source:
            raise ImageError("empty file (0 bytes)")
        return Image.open(io.BytesIO(source)), "<bytes>"
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise ImageError("file not found") from None
        except OSError as e:
            raise ImageError(f"cannot read file ({e.strerror or e})") from None
        if path.is_dir():
            raise ImageError("a folder, not a file")
        if size == 0:
            raise ImageError("empty file (0 bytes)")
        return Image.open(path), str(path)
    return Image.open(source), "<stream>"


def allow_pixels(max_pixels: int | None) -> None:
    """Raise Pillow's process-wide bomb guard so that images up to ``max_pixels`` (None: any)
    open. For programs that own their process (the ``imgcls`` command); the library itself never
    calls it."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    if max_pixels is None:
        Image.MAX_IMAGE_PIXELS = None
    elif max_pixels > limit:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)


def _bomb_message(error: Exception, max_pixels: int | None) -> str:
    """Pillow's own guard refused the image (above twice ``PIL.Image.MAX_IMAGE_PIXELS``)."""
    import re

    pillow = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    limit = min(max_pixels, pillow) if max_pixels else pillow
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "the image"
    return f"too many pixels: {size} exceeds the limit of {limit / 1e6:.0f} MP (decompression bomb?)"


def open_image(source: str | Path | bytes | IO[bytes], *, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Open (header only) and check the pixel limit; nothing is decoded yet."""
    try:
        with warnings.catch_warnings():
            # Pillow warns between its limit and twice it (imgcls's own limit decides below) and
            # about damaged metadata it skips (TIFF tags, EXIF): the image decodes or fails alone
            warnings.simplefilter("ignore")
            img, _ = _open(source)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(_bomb_message(e, max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageError("not an image, or an image format Pillow cannot read") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot open image ({e})") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise ImageError(f"invalid image size {w}x{h}")
    if max_pixels and w * h > max_pixels:
        img.close()
        raise ImageError(
            f"too many pixels: {w}x{h} = {w * h / 1e6:.0f} MP exceeds the limit of "
            f"{max_pixels / 1e6:.0f} MP (decompression bomb?)"
        )
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit: scale the full 0..65535 range to 0..255 (clipping would turn most of a
        # 16-bit image white). Pillow reads 16-bit grayscale PNG/TIFF as I;16 or I.
        arr = np.asarray(img, dtype=np.float64)
        arr8 = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(arr) <= 1.0 else 1.0
        arr8 = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode in ("P", "L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def read_image(
    source: str | Path | bytes | IO[bytes],
    *,
    min_size: int | tuple[int, int] | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> Image.Image:
    """Decode an image to an upright RGB ``PIL.Image`` or raise :class:`ImageError`.

    ``min_size``: the smallest shorter side the caller needs (or the smallest (width, height));
    JPEGs much larger than that are decoded at reduced scale (never below ``min_size``).
    ``max_pixels``: refuse larger images (checked from the header), None for no limit.
    """
    img = open_image(source, max_pixels=max_pixels)
    try:
        if min_size and img.format == "JPEG":
            # draft() keeps both sides >= the request, so the shorter side stays >= min_size
            # whatever the EXIF orientation turns out to be.
            request = (min_size, min_size) if isinstance(min_size, int) else min_size
            img.draft("RGB", request)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Palette images with Transparency..."
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except Image.DecompressionBombError as e:  # a frame larger than the header said (GIF...)
        raise ImageError(_bomb_message(e, max_pixels)) from None
    except (OSError, ValueError, SyntaxError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg:
            raise ImageError(f"truncated image data ({msg})") from None
        raise ImageError(f"corrupt image data ({msg})") from None
    except (MemoryError, EOFError, IndexError, struct.error) as e:
        raise ImageError(f"corrupt image data ({type(e).__name__}: {e})") from None


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Resize so the shorter side is ``size`` (aspect ratio kept), with antialiasing."""
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    new = (size, new[1]) if w <= h else (new[0], size)
    return img.resize(new, _RESAMPLE.get(interpolation, Image.Resampling.BILINEAR), reducing_gap=3.0)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def letterbox(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Fit the whole frame into a ``size`` square, padding the rest with the neutral gray."""
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = img.resize(new, _RESAMPLE.get(interpolation, Image.Resampling.BILINEAR), reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    canvas.paste(resized, ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


def fit_square(img: Image.Image, size: int, *, interpolation: str = "bilinear", mode: str = "crop") -> Image.Image:
    """The ``size`` x ``size`` square the eval transform crops from: shorter side to ``size`` and
    center crop (``mode='crop'``), or the whole frame letterboxed (``mode='pad'``)."""
    if mode == "pad":
        return letterbox(img, size, interpolation)
    return center_crop(resize_shorter(img, size, interpolation), size)


_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def crop_square(img: Image.Image, box: tuple[float, float, float, float], margin: float = 0.1) -> Image.Image:
    """The square around a normalised ``(x, y, w, h)`` box (MegaDetector's convention: top-left
    corner, width, height as fractions of the image), enlarged by ``margin`` of its longer side
    on every side; parts outside the frame are padded with the neutral gray. The square keeps
    the animal's proportions when the crop is resized to the model's input."""
    w, h = img.size
    x0, y0, bw, bh = box
    side = max(bw * w, bh * h) * (1 + 2 * margin)
    side = max(side, 2.0)
    cx, cy = (x0 + bw / 2) * w, (y0 + bh / 2) * h
    left, top = round(cx - side / 2), round(cy - side / 2)
    s = round(side)
    inside = (max(0, left), max(0, top), min(w, left + s), min(h, top + s))
    canvas = Image.new("RGB", (s, s), BACKGROUND)
    if inside[2] > inside[0] and inside[3] > inside[1]:
        canvas.paste(img.crop(inside), (inside[0] - left, inside[1] - top))
    return canvas


def crop_draft_size(box: tuple[float, float, float, float], need: int) -> tuple[int, int]:
    """The decode size (for :func:`read_image`'s ``min_size``) at which a crop of ``box`` still
    has ``need`` pixels on each side."""
    bw, bh = max(float(box[2]), 1e-3), max(float(box[3]), 1e-3)
    return int(need / bw) + 1, int(need / bh) + 1


def read_view(
    path: str | Path, box: Sequence[float] | None = None, *, margin: float = 0.1, need: int = 96
) -> Image.Image:
    """An image for a person to look at (a thumbnail, a review page): the whole image, or the
    square crop around ``box`` (x, y, w, h) as training saw it, decoded no larger than ``need``
    px requires."""
    if box is None:
        return read_image(path, min_size=need)
    x, y, w, h = (float(v) for v in box)
    return crop_square(read_image(path, min_size=crop_draft_size((x, y, w, h), need)), (x, y, w, h), margin)
