"""The dataset index every source produces: one row per image, stored column by column (a
million rows cost a few hundred MB of Python strings, not a million objects)."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


def listed_path(base: Path, raw: str) -> str:
    """The absolute, symlink-resolved path of a file named in a listing (CSV manifest, COCO
    Camera Traps or MegaDetector JSON), relative to ``base`` unless absolute. Listings written
    on Windows use backslashes (``cam1\\IMG_0001.JPG``); on other systems they are read as
    folder separators unless a file with the literal name exists."""
    raw = raw.strip()
    if "\\" in raw and os.sep == "/" and not (base / raw).exists():
        raw = raw.replace("\\", "/")
    return str((base / raw).resolve())


def format_box(box: object) -> str:
    """``x y w h`` (4 decimals) of a crop box; "" for the whole image (None or NaN)."""
    if box is None:
        return ""
    values = [float(v) for v in box]  # type: ignore[attr-defined]
    if len(values) != 4 or any(math.isnan(v) for v in values):
        return ""
    return " ".join(f"{v:.4f}" for v in values)


def parse_box(text: str) -> str:
    """A box as written in a CSV file, normalised to :func:`format_box`'s form; "" for none."""
    text = text.strip().strip("[]").replace(",", " ")
    if not text:
        return ""
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        return "?"
    return format_box(values) if len(values) == 4 and all(math.isfinite(v) for v in values) else "?"


#: the reason recorded for an image a review rejected (not counted as unusable)
REVIEWED = "left out by the review"
#: the start of the reason recorded for a frame without a detection to crop (a blank, not a fault)
NO_DETECTION = "blank: no "
#: the start of the reason recorded for a manifest row repeating an earlier one (path and labels)
LISTED_AGAIN = "listed again"
#: the start of the reason recorded for a file a folder holds whose name says it is no image
#: (``notes.txt``, a camera's ``.xml``: :func:`imgcls.data.image.not_an_image_name`)
NOT_AN_IMAGE = "not an image by its name"
#: the start of the reason recorded for an observation no crop holds (Camtrap DP: one without a
#: box, in an image whose other observations have boxes): only that label is left out, the
#: image's crops are used
NO_CROP = "an observation without a box"


def left_out_on_purpose(reason: str) -> bool:
    """A skip that is the data's design (a review's rejection, a frame without a detection to
    crop, a row listing an image a second time, a file that is no image by its name, an
    observation no crop holds), not an unusable file."""
    return reason.startswith((REVIEWED, NO_DETECTION, LISTED_AGAIN, NOT_AN_IMAGE, NO_CROP))


def count_left_out(skipped: list[tuple[str, str]]) -> int:
    """How many of ``skipped`` (path, reason) were left out on purpose."""
    return sum(1 for _, why in skipped if left_out_on_purpose(why))


def not_images(skipped: list[tuple[str, str]]) -> Counter[str]:
    """The files of ``skipped`` left out as no image by their name, counted by extension."""
    return Counter(os.path.splitext(p)[1].lower() for p, why in skipped if why.startswith(NOT_AN_IMAGE))


SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


@dataclass
class DataTable:
    """Labelled images from one source.

    ``targets`` is an int64 vector of class indices (multi-class, binary) or a uint8 multi-hot
    matrix (N, K) for multi-label data. ``paths`` are absolute file paths, or ids such as
    ``train-images-idx3-ubyte#17`` for images held in ``pixels`` (uint8, (N, H, W[, C])).
    ``split`` holds the split each row came with (train/val/test) or None when the source has
    none. ``columns`` carries optional per-image metadata (location, sequence, datetime...).
    ``boxes`` (N, 4) holds normalised x, y, w, h crop boxes for detection crops, NaN = whole image;
    crops are squares around the box, ``crop_margin`` of its longer side added on every side.
    ``skipped`` lists (path, reason) for inputs the source itself could not use. Rows read from
    several data specs (``train --data A --data B``) say which in ``origin`` (an index into
    ``origins``, the specs as given); None for one spec.
    """

    kind: str
    root: Path
    paths: list[str]
    targets: np.ndarray
    class_names: list[str]
    multilabel: bool = False
    split: list[str | None] | None = None
    columns: dict[str, list[str]] = field(default_factory=dict)
    pixels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    crop_margin: float = 0.1
    skipped: list[tuple[str, str]] = field(default_factory=list)
    origin: np.ndarray | None = None
    origins: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: Sequence[int] | np.ndarray) -> DataTable:
        """Rows ``index`` (in that order); ``skipped`` is kept whole."""
        idx = np.asarray(index, dtype=np.int64)
        return replace(
            self,
            paths=[self.paths[i] for i in idx],
            targets=self.targets[idx],
            split=[self.split[i] for i in idx] if self.split is not None else None,
            columns={k: [v[i] for i in idx] for k, v in self.columns.items()},
            pixels=self.pixels[idx] if self.pixels is not None else None,
            boxes=self.boxes[idx] if self.boxes is not None else None,
            origin=self.origin[idx] if self.origin is not None else None,
        )

    def origin_counts(self, rows: np.ndarray) -> list[tuple[str, int]]:
        """(spec, how many of ``rows`` came from it) for every spec, in the order given; empty
        for a table read from one spec."""
        if self.origin is None:
            return []
        counts = np.bincount(self.origin[rows], minlength=len(self.origins))
        return [(spec, int(c)) for spec, c in zip(self.origins, counts, strict=True)]

    def rows_in_split(self, name: str) -> np.ndarray:
        if self.split is None:
            return np.zeros(0, dtype=np.int64)
        return np.array([i for i, s in enumerate(self.split) if s == name], dtype=np.int64)

    def available_splits(self) -> list[str]:
        if self.split is None:
            return []
        present = {s for s in self.split if s}
        return [s for s in SPLITS if s in present]

    def label_names(self, i: int) -> list[str]:
        if self.multilabel:
            return [self.class_names[k] for k in np.flatnonzero(self.targets[i])]
        return [self.class_names[int(self.targets[i])]]

    def class_counts(self) -> dict[str, int]:
        if self.multilabel:
            sums = self.targets.sum(axis=0)
            return {n: int(c) for n, c in zip(self.class_names, sums, strict=True)}
        counts = Counter(int(t) for t in self.targets)
        return {n: counts.get(i, 0) for i, n in enumerate(self.class_names)}

    def stratify_key(self) -> np.ndarray:
        """One class per row for stratification (the rarest label of a multi-label row)."""
        if not self.multilabel:
            return self.targets
        freq = self.targets.sum(axis=0)
        keys = np.full(len(self), -1, dtype=np.int64)
        for i in range(len(self)):
            on = np.flatnonzero(self.targets[i])
            if on.size:
                keys[i] = int(on[np.argmin(freq[on])])
        return keys


def make_targets(labels: Sequence[Sequence[str]], class_names: Sequence[str], multilabel: bool) -> np.ndarray:
    """Label names per row -> int64 indices (multi-class) or a uint8 multi-hot matrix."""
    index = {n: i for i, n in enumerate(class_names)}
    if multilabel:
        out = np.zeros((len(labels), len(class_names)), dtype=np.uint8)
        for r, names in enumerate(labels):
            for n in names:
                out[r, index[n]] = 1
        return out
    return np.array([index[names[0]] for names in labels], dtype=np.int64)
