"""Test data built on the fly: small labelled image sets and every awkward kind of file."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Per-class base colours: classes are separable by colour, so a few epochs learn them.
COLOURS = [
    (220, 40, 40),
    (40, 200, 60),
    (50, 70, 230),
    (230, 200, 40),
    (160, 60, 200),
    (40, 200, 210),
]


def class_image(k: int, rng: np.random.Generator, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A noisy image whose mean colour says its class, with a class-specific stripe pattern."""
    w, h = size
    base = np.array(COLOURS[k % len(COLOURS)], dtype=np.float64)
    arr = base + rng.normal(0, 25, size=(h, w, 3))
    stripe = (np.arange(w) // (3 + k)) % 2 == 0
    arr[:, stripe] *= 0.7
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def square_scene(
    rng: np.random.Generator, colour: tuple[int, int, int], *, size: int = 64, side: int = 16, noise: float = 20,
    at: tuple[int, int] | None = None, corner_below: int | None = None,
) -> Image.Image:  # fmt: skip
    """Gray noise (sd ``noise``) with one ``side``-px square of ``colour`` at ``at`` (default: a
    random corner below ``corner_below``, else ``size - side``): the only thing that tells the
    classes apart."""
    img = rng.normal(128, noise, (size, size, 3)).clip(0, 255).astype(np.uint8)
    x, y = at if at is not None else rng.integers(0, corner_below or size - side, 2)
    img[y : y + side, x : x + side] = colour
    return Image.fromarray(img)


def image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog"),
    per_class: int = 8,
    *,
    size: tuple[int, int] = (48, 40),
    seed: int = 0,
    fmt: str = "JPEG",
) -> Path:
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = "jpg" if fmt == "JPEG" else fmt.lower()
            class_image(k, rng, size).save(d / f"{name}_{i:03d}.{ext}", fmt, quality=92)
    return root


def jpeg_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A few hundred bytes that claim width x height 8-bit gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * 16
    idat = zlib.compress(row * 4)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png16_rgb(values: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write these): values uint16 (H, W, 3)."""
    h, w, _ = values.shape
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )  # fmt: skip


def corrupt_png() -> bytes:
    """A PNG whose header is fine but whose compressed pixel data is garbage."""
    good = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(good, "PNG")
    data = bytearray(good.getvalue())
    start = data.index(b"IDAT") + 4
    for i in range(start + 2, min(start + 40, len(data) - 12)):
        data[i] ^= 0x5A
    return bytes(data)


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """A 40x20 image, left half red and right half blue, with an EXIF orientation tag."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(Image.fromarray(arr), exif=exif.tobytes())


def broken_files(folder: Path) -> dict[str, str]:
    """Write every kind of unusable file into ``folder``; returns name -> expected reason word."""
    folder.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(class_image(0, np.random.default_rng(1), (64, 64)))
    files = {
        "zero.jpg": (b"", "empty"),
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
        "notes.jpg": (b"this is not an image at all\n" * 10, "not an image"),
        "corrupt.png": (corrupt_png(), "corrupt"),
        "bomb.png": (png_bomb(), "too many pixels"),
        "drawing.svg": (
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
            "not an image",
        ),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: reason for name, (_, reason) in files.items()}


def unusual_files(folder: Path, k: int = 0) -> list[str]:
    """Valid images in awkward modes, names and containers; all must decode to RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(k + 10)
    base = class_image(k, rng, (40, 32))
    names = []

    def save(name: str, img: Image.Image, fmt: str, **kw: object) -> None:
        img.save(folder / name, fmt, **kw)
        names.append(name)

    save("upper.JPG", base, "JPEG")
    save("long.JpEg", base, "JPEG")
    save("čáp_ñandú_鹿.jpg", base, "JPEG")
    save("misnamed_png.jpg", base, "PNG")
    save("gray.png", base.convert("L"), "PNG")
    save("palette.gif", base.convert("P"), "GIF")
    save("cmyk.jpg", base.convert("CMYK"), "JPEG")
    save("alpha.png", base.convert("RGBA"), "PNG")
    save("lum_alpha.png", base.convert("LA"), "PNG")
    save("bilevel.bmp", base.convert("1"), "BMP")
    save("image.tiff", base, "TIFF")
    save("image.webp", base, "WEBP")
    gray16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save("gray16.png", Image.fromarray(gray16), "PNG")
    (folder / "rgb16.png").write_bytes(png16_rgb(np.asarray(base, dtype=np.uint16) * 257))
    names.append("rgb16.png")
    (folder / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    names.append("rotated.jpg")
    return names


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img = struct.pack(">BBBBIII", 0, 0, 8, 3, *images.shape) + images.astype(np.uint8).tobytes()
    lab = struct.pack(">BBBBI", 0, 0, 8, 1, len(labels)) + labels.astype(np.uint8).tobytes()
    for name, data in ((f"{prefix}-images-idx3-ubyte", img), (f"{prefix}-labels-idx1-ubyte", lab)):
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def idx_dataset(folder: Path, n_train: int = 60, n_test: int = 20, classes: int = 3, seed: int = 0) -> Path:
    """Tiny MNIST-format data: class k is a bright square at position k."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % classes
        x = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, 4 + 6 * k : 10 + 6 * k, 4:24] = 230
        return x, y

    write_idx(folder, *make(n_train), "train")
    write_idx(folder, *make(n_test), "t10k")
    return folder
