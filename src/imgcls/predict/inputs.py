"""What to predict: the image files that inputs name.

Inputs are any mix of files, folders (walked recursively), glob patterns and ``.txt`` / ``.csv``
lists, enumerated lazily: a million inputs never become a million-element list. In folders, files
that are no image by their name (sidecars, thumbnails databases, videos) are left out and
counted, by the rule training's class folders use (:func:`imgcls.data.image.not_an_image_name`);
a file named explicitly, or in a list, is always tried.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from imgcls.data.image import hidden_name, image_suffixes, not_an_image_name
from imgcls.errors import UserError

__all__ = ["check_inputs", "check_output_apart", "count_inputs", "image_suffixes", "iter_inputs", "not_an_image_name"]

LIST_SUFFIXES = (".txt", ".csv")
_GLOB_CHARS = "*?["


# ------------------------------------------------------------------------------------- inputs
def _walk(folder: Path, left_out: Counter[str] | None = None) -> Iterator[str]:
    """The image files below ``folder`` (symlinked folders followed, each once; hidden ones not
    listed); sidecar and other non-image files (by name) are left out, and counted by extension
    in ``left_out``."""
    from imgcls.io import walk_tree

    for dirpath, filenames in walk_tree(folder, lambda name: not hidden_name(name)):
        for f in filenames:
            if hidden_name(f):
                continue
            other = not_an_image_name(f)
            if other is not None:
                if left_out is not None:
                    left_out[other] += 1
                continue
            yield os.path.join(dirpath, f)


def _read_list(path: Path) -> Iterator[str]:
    base = path.parent
    if path.suffix.lower() == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            lower = [h.strip().lower() for h in header]
            col = lower.index("path") if "path" in lower else 0
            if "path" not in lower and header:  # no header: the first line is a path too
                yield str(base / header[0].strip())
            for row in reader:
                if row and row[col].strip():
                    yield str(base / row[col].strip())
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                yield str(base / line)


def iter_inputs(inputs: Sequence[str], left_out: Counter[str] | None = None) -> Iterator[str]:
    """Every image path the inputs name, in a stable order (a lazy generator). Folders are
    walked (non-image files left out, counted in ``left_out``); a file named explicitly, or in a
    list, is always tried (a missing one becomes a row with its error)."""
    for item in inputs:
        p = Path(item)
        if any(c in item for c in _GLOB_CHARS) and not p.exists():
            for match in sorted(glob.iglob(item, recursive=True)):
                yield from _walk(Path(match), left_out) if os.path.isdir(match) else (match,)
        elif p.is_dir():
            yield from _walk(p, left_out)
        elif p.suffix.lower() in LIST_SUFFIXES and p.is_file():
            yield from _read_list(p)
        else:
            yield item


def check_inputs(inputs: Sequence[str]) -> None:
    """A named input that does not exist (or a pattern that matches nothing) is a mistake to say
    at once, not a row."""
    for item in inputs:
        if any(c in item for c in _GLOB_CHARS) and not Path(item).exists():
            if next(glob.iglob(item, recursive=True), None) is None:
                raise UserError(f"{item}: the pattern matches no file")
        elif not Path(item).exists():
            raise UserError(f"{item}: no such file or folder")


def check_output_apart(inputs: Sequence[str], out: str | Path | None) -> None:
    """``--out`` must not be one of the named inputs: the output would replace the list it is
    read from (with ``--overwrite``, before a row of it was read)."""
    if out is None or not Path(out).exists():
        return
    for item in inputs:
        p = Path(item)
        if p.is_file() and os.path.samefile(p, out):
            raise UserError(f"--out {out} is also an input ({item}); choose another --out")


def count_inputs(inputs: Sequence[str]) -> int:
    return sum(1 for _ in iter_inputs(inputs))
