"""read_image: every awkward file kind decodes correctly or fails with its reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data import ImageError, read_image
from imgcls.data.image import BACKGROUND
from imgfactory import (
    broken_files,
    exif_rotated_jpeg,
    jpeg_bytes,
    png16_rgb,
    png_bomb,
    unusual_files,
)


def test_unusual_but_valid_files_decode_to_rgb(tmp_path: Path) -> None:
    names = unusual_files(tmp_path)
    reference = np.asarray(read_image(tmp_path / "upper.JPG"), dtype=np.float64)
    for name in names:
        img = read_image(tmp_path / name)
        assert img.mode == "RGB", name
        if name not in ("rotated.jpg",):
            assert img.size == (40, 32), name
        arr = np.asarray(img, dtype=np.float64)
        if name in ("gray.png", "lum_alpha.png", "gray16.png", "bilevel.bmp"):
            assert np.allclose(arr[..., 0], arr[..., 1]), name  # gray replicated
        elif name != "rotated.jpg":
            # same picture in another container or mode: close to the JPEG reference
            assert np.abs(arr.mean((0, 1)) - reference.mean((0, 1))).max() < 6, name


@pytest.mark.parametrize("name", ["zero.jpg", "truncated.jpg", "notes.jpg", "corrupt.png", "bomb.png", "drawing.svg"])
def test_broken_files_raise_image_error_with_reason(tmp_path: Path, name: str) -> None:
    expected = broken_files(tmp_path)
    with pytest.raises(ImageError, match=expected[name]):
        read_image(tmp_path / name)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)


def test_decompression_bomb_is_refused_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    loads: list[object] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or real_load(self))
    with pytest.raises(ImageError, match="too many pixels: 3600 MP exceeds the limit of 100 MP"):
        read_image(png_bomb())  # 60,000 x 60,000: Pillow's own guard and imgcls's agree
    small = png_bomb(200, 100)
    with pytest.raises(ImageError, match="too many pixels: 200x100 = 0 MP exceeds the limit of 0 MP"):
        read_image(small, max_pixels=10_000)
    assert loads == []  # refused from the header: not one pixel was decoded


def test_pillows_process_wide_settings_are_left_to_the_host_program() -> None:
    import subprocess
    import sys

    code = (
        "from PIL import Image, ImageFile\n"
        "Image.MAX_IMAGE_PIXELS = 12345; ImageFile.LOAD_TRUNCATED_IMAGES = True\n"
        "import imgcls, imgcls.data, imgcls.data.image, imgcls.predict, imgcls.evaluate, imgcls.serve.app\n"
        "print(Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["12345", "True"]


def test_pillows_guard_still_applies_and_the_command_can_raise_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from imgcls.data.image import allow_pixels

    def png(w: int, h: int) -> bytes:
        buf = io.BytesIO()
        Image.new("L", (w, h), 90).save(buf, format="PNG")
        return buf.getvalue()

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # a host program's strict guard
    with pytest.raises(ImageError, match="too many pixels: 0 MP exceeds the limit of 0 MP"):
        read_image(png(200, 100), max_pixels=None)  # 20,000 px: over twice the host's limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # between Pillow's limit and twice it: no warning leaks
        assert read_image(png(80, 100), max_pixels=None).size == (80, 100)
    allow_pixels(50_000)  # what the imgcls command does for --max-pixels 50000
    assert Image.MAX_IMAGE_PIXELS == 50_000
    assert read_image(png(200, 100), max_pixels=50_000).size == (200, 100)
    allow_pixels(1_000)  # never lowers it
    assert Image.MAX_IMAGE_PIXELS == 50_000


def test_exif_orientation_is_applied() -> None:
    img = read_image(exif_rotated_jpeg(6))  # orientation 6: rotate 90 degrees clockwise
    assert img.size == (20, 40)
    arr = np.asarray(img).astype(int)
    top, bottom = arr[:10].mean((0, 1)), arr[-10:].mean((0, 1))
    assert top[0] > 200 and top[2] < 60  # red half on top after rotation
    assert bottom[2] > 200 and bottom[0] < 60


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "PNG")
    arr = np.asarray(read_image(buf.getvalue()))[..., 0]
    assert arr.tolist() == [[0, 1, 4, 128, 255]]  # round(v / 257); clipping would give 255s
    rgb = np.array([[[1000, 32768, 65535]]], dtype=np.uint16)
    arr = np.asarray(read_image(png16_rgb(rgb)))[0, 0]
    assert np.allclose(arr, [4, 128, 255], atol=1)


def test_transparency_is_composited_on_neutral_gray() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[1, 1] = (0, 255, 0, 0)  # fully transparent green
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    arr = np.asarray(read_image(buf.getvalue()))
    assert tuple(arr[0, 0]) == (255, 0, 0)
    assert tuple(arr[1, 1]) == BACKGROUND
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=1)
    arr = np.asarray(read_image(buf.getvalue()))
    assert tuple(arr[0, 0]) == (255, 0, 0) and tuple(arr[0, 1]) == BACKGROUND


def test_cmyk_is_converted() -> None:
    cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    arr = np.asarray(read_image(jpeg_bytes(cyan))).astype(int)
    assert arr[..., 0].mean() < 40 and arr[..., 1].mean() > 200 and arr[..., 2].mean() > 200


def test_jpeg_draft_decodes_at_reduced_size_but_never_below_request() -> None:
    data = jpeg_bytes(Image.new("RGB", (4000, 3000), (90, 120, 150)))
    assert read_image(data).size == (4000, 3000)
    small = read_image(data, min_size=256)
    assert small.size == (500, 375)  # 1/8 scale; shorter side 375 >= 256
    assert read_image(data, min_size=1000).size == (2000, 1500)
    rotated = Image.new("RGB", (3000, 4000))
    assert min(read_image(jpeg_bytes(rotated), min_size=300).size) >= 300
