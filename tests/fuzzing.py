"""Fuzzing the two doors that take untrusted input: image decoding and the web service.

The decode fuzzer starts from real files of every container imgcls reads (JPEG, PNG, GIF, BMP,
TIFF, WebP; 8- and 16-bit, palette, alpha, CMYK, EXIF-rotated) and mutates their bytes the way
damaged or hostile files differ from good ones: bit flips, overwritten header fields (sizes,
colour types), truncation, inserted and deleted runs, duplicated chunks. hypothesis drives the
mutations (a bounded, derandomised run in ``make test``; ``benchmarks/fuzz_decode.py`` runs it
for minutes). The one rule: ``read_image`` returns an RGB image or raises ``ImageError`` —
anything else is a bug.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import strategies as st

from imgfactory import broken_files, png_bomb, unusual_files

#: decodes above this many pixels are refused from the header (keeps the fuzzer's memory small)
FUZZ_MAX_PIXELS = 4_000_000


def seed_corpus() -> list[bytes]:
    """The bytes of real files of every kind imgcls reads, good and broken."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        names = unusual_files(folder / "good") + [f"../bad/{n}" for n in broken_files(folder / "bad")]
        corpus = [(folder / "good" / n).read_bytes() for n in names]
    return [c for c in corpus if c] + [png_bomb(3000, 3000)]


@st.composite
def mutated_files(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """A file of the corpus with 1-6 mutations."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "header", "truncate", "insert", "delete", "duplicate"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "header":  # sizes, bit depths, colour types, offsets live in the first bytes
            j = draw(st.integers(0, min(len(data), 64) - 1))
            data[j] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        else:
            n = draw(st.integers(1, 256))
            data[i:i] = data[i : i + n]
    return bytes(data)


def decode_once(data: bytes, min_size: int | None) -> None:
    """The fuzzing target: an RGB image or ImageError, nothing else."""
    from imgcls.data import ImageError, read_image

    try:
        img = read_image(data, min_size=min_size, max_pixels=FUZZ_MAX_PIXELS)
    except ImageError:
        return
    assert img.mode == "RGB" and img.size[0] > 0 and img.size[1] > 0
