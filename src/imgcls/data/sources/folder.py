"""Class-folder trees (ImageFolder layout): ``ROOT/CLASS/**/FILE``, and the variant with
``ROOT/train|val|test/CLASS/**/FILE`` whose splits are taken as given.

A file whose name says it is no image (``notes.txt``, a camera's ``.xml`` sidecar, ``Thumbs.db``:
:func:`imgcls.data.image.not_an_image_name`, the rule prediction's folder walks use too) is left
out on purpose and listed with that reason, apart from unusable images, so it never counts toward
``--max-skipped``; every other visible file is a candidate the decoder decides on (a PNG named
``.jpg``, ``IMG_0001`` without an extension). A class folder with no candidate left is no class.
Class names are the folder names in sorted order, as torchvision's ImageFolder orders them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from imgcls.data.image import hidden_name, not_an_image_name
from imgcls.data.table import NOT_AN_IMAGE, SPLIT_ALIASES, DataTable
from imgcls.errors import UserError

log = logging.getLogger(__name__)


def _visible(name: str) -> bool:
    return not hidden_name(name)


def _files_under(folder: Path, left_out: list[tuple[str, str]]) -> list[str]:
    """The candidate images below ``folder`` (sorted; symlinked folders followed once); files
    that are no image by their name go to ``left_out`` with the reason."""
    from imgcls.io import walk_tree

    found: list[str] = []
    for d, names in walk_tree(folder, _visible):
        for f in names:
            if _visible(f):
                _sort_file(os.path.join(d, f), found, left_out)
    return found


def _sort_file(path: str, candidates: list[str], left_out: list[tuple[str, str]]) -> None:
    other = not_an_image_name(os.path.basename(path))
    if other is None:
        candidates.append(path)
    else:
        left_out.append((path, f"{NOT_AN_IMAGE} ({other})"))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p.name))


def split_folders(root: Path) -> dict[str, Path] | None:
    """{'train': ROOT/train, ...} when ROOT holds only split folders (including train)."""
    subs = _subdirs(root)
    if not subs:
        return None
    names = {p.name.lower() for p in subs}
    if not names <= set(SPLIT_ALIASES) or "train" not in {SPLIT_ALIASES[n] for n in names}:
        return None
    return {SPLIT_ALIASES[p.name.lower()]: p for p in subs}


def read_folder(root: Path) -> DataTable:
    splits = split_folders(root)
    trees = splits if splits is not None else {"": root}
    per_class: dict[str, list[tuple[str, str]]] = {}  # class -> [(path, split)]
    skipped: list[tuple[str, str]] = []
    empty: set[str] = set()
    for split, tree in trees.items():
        loose: list[str] = []
        for f in sorted(p for p in tree.iterdir() if p.is_file() and _visible(p.name)):
            _sort_file(str(f), loose, skipped)
        skipped.extend((f, "not inside a class folder") for f in loose)
        for class_dir in _subdirs(tree):
            files = _files_under(class_dir, skipped)
            if not files:
                empty.add(class_dir.name)
                continue
            per_class.setdefault(class_dir.name, []).extend((f, split) for f in files)
    for name in sorted(empty - set(per_class)):
        log.warning("class folder %r holds no images: left out of the classes", name)
    if not per_class:
        raise UserError(
            f"{root}: no class folders with files (expected ROOT/CLASS/IMAGE files, or "
            "ROOT/train/CLASS/... with val/ and test/ beside it)"
        )
    class_names = sorted(per_class)
    paths: list[str] = []
    targets: list[int] = []
    split_col: list[str | None] = []
    for k, name in enumerate(class_names):
        for path, split in per_class[name]:
            paths.append(os.path.abspath(path))
            targets.append(k)
            split_col.append(split or None)
    order = np.argsort(np.array(paths, dtype=object), kind="stable")
    return DataTable(
        kind="split-folders" if splits is not None else "folder",
        root=root,
        paths=[paths[i] for i in order],
        targets=np.array(targets, dtype=np.int64)[order],
        class_names=class_names,
        split=[split_col[i] for i in order] if splits is not None else None,
        skipped=skipped,
    )
