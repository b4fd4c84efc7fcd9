"""MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST...): ``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]`` and the ``t10k-`` pair for the test split. The images stay in
memory as one uint8 array, as they are on disk (Fashion-MNIST: 47 MB).

Class names come from a ``classes.txt`` beside the files (one per line) when there is one; a
folder whose name mentions "fashion" gets Fashion-MNIST's ten names; otherwise the digits.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from imgcls.data.table import DataTable
from imgcls.errors import UserError

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_PREFIXES = {"train": "train", "test": "t10k"}


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        for candidate in (root / name, root / name.replace("-idx", ".idx")):
            if candidate.is_file():
                return candidate
    return None


def is_idx_dir(root: Path) -> bool:
    return _find(root, "train-images-idx3-ubyte") is not None or (_find(root, "t10k-images-idx3-ubyte") is not None)


def read_idx_file(path: Path) -> np.ndarray:
    """Parse one IDX file (magic: 0x0000 0x08 (uint8) ndim, then big-endian sizes)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise UserError(f"{path}: truncated ({len(data) - header} bytes of data, expected {expected})")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _class_names(root: Path, num: int) -> list[str]:
    listing = root / "classes.txt"
    if listing.is_file():
        names = [ln.strip() for ln in listing.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(names) < num:
            raise UserError(f"{listing}: {len(names)} names for labels 0..{num - 1}")
        return names
    if "fashion" in str(root.resolve()).lower() and num <= 10:
        return FASHION_MNIST_CLASSES
    return [str(i) for i in range(num)]


def read_idx(root: Path) -> DataTable:
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    paths: list[str] = []
    split: list[str | None] = []
    for split_name, prefix in _PREFIXES.items():
        img_file = _find(root, f"{prefix}-images-idx3-ubyte")
        lbl_file = _find(root, f"{prefix}-labels-idx1-ubyte")
        if img_file is None:
            continue
        if lbl_file is None:
            raise UserError(f"{root}: {img_file.name} has no {prefix}-labels-idx1-ubyte beside it")
        x, y = read_idx_file(img_file), read_idx_file(lbl_file)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"{root}: {img_file.name} and {lbl_file.name} do not match")
        images.append(x)
        labels.append(y.astype(np.int64))
        paths.extend(f"{img_file.name}#{i}" for i in range(len(x)))
        split.extend([split_name] * len(x))
    targets = np.concatenate(labels)
    return DataTable(
        kind="idx",
        root=root,
        paths=paths,
        targets=targets,
        class_names=_class_names(root, int(targets.max()) + 1),
        split=split,
        pixels=np.concatenate(images),
    )
