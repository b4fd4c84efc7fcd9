"""``--corrections corrections.csv``: what a review decided, applied to the data.

The file is a manifest (``path,label``) with an ``action`` column, as ``imgcls review`` writes
it: ``relabel`` (the image takes the new label; ``cat;dog`` for multi-label data), ``reject``
(the image is left out, listed in ``skipped.csv`` with the reason), ``accept`` (the row's label
is confirmed: the label the page showed, the data's own or, for a prediction, the model's guess,
which the image then takes). A row with a label and no action (added by hand) is a ``relabel``,
as training reads it; actions are read in any case. An optional ``box`` column (``x y w h``, normalised, as the audit
writes it) names one detection crop of the image; without it a decision holds for every crop of
the image (an ``accept`` of a whole frame then confirms each crop's own label). Relative paths
resolve against the file's folder, as in a manifest; images held inside a data file (IDX:
``train-images-idx3-ubyte#17``) are named by that id. A label the data did not have becomes a new
class.

The last decision about an image counts, whole-image and per-crop decisions alike: the rows are
applied in file order (``imgcls review`` writes them in the order they were decided), so a crop
accepted after its whole image was rejected is kept, and a whole image rejected after one of its
crops was relabelled is left out, crops and all. A row repeated later in the file replaces the
earlier one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from imgcls.data.sources.manifest import parse_labels, read_rows
from imgcls.data.table import REVIEWED, DataTable, format_box, listed_path, make_targets, parse_box
from imgcls.errors import UserError

ACTIONS = ("accept", "relabel", "reject")


@dataclass
class Applied:
    """What applying a corrections file did."""

    relabelled: int = 0
    rejected: int = 0
    accepted: int = 0
    unknown: list[str] = field(default_factory=list)  # paths the data does not have

    def describe(self) -> str:
        extra = f"; {len(self.unknown)} of its images are not in the data" if self.unknown else ""
        return f"{self.relabelled} relabelled, {self.rejected} left out, {self.accepted} confirmed{extra}"


def row_key(table: DataTable, i: int) -> tuple[str, str]:
    """(path, box) by which a decision names row ``i``: the resolved file path, or the id of an
    image held in a data file."""
    path = table.paths[i] if table.pixels is not None else os.path.realpath(table.paths[i])
    return path, format_box(table.boxes[i]) if table.boxes is not None else ""


def is_data_file_id(raw: str, base: Path | None = None) -> bool:
    """Whether ``raw`` names an image held inside a data file (``train-images-idx3-ubyte#17``):
    a relative name with a ``#`` that is not a file of its own (relative to ``base``, else here)."""
    return "#" in raw and not os.path.isabs(raw) and not os.path.exists(base / raw if base else raw)


def decision_path(base: Path, raw: str) -> str:
    """The name by which a decision names an image: the resolved file path (relative to ``base``
    unless absolute), or the id of an image held in a data file (``train-images-idx3-ubyte#17``)."""
    return raw if is_data_file_id(raw, base) else os.path.realpath(listed_path(base, raw))


def read_corrections(path: str | Path) -> dict[tuple[str, str], tuple[str, list[str]]]:
    """(image path, box) -> (action, labels) of every decision in the file, in the order they
    count: a key given again moves to its last row, and that row's decision counts."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"corrections file not found: {path}")
    header, rows, lines = read_rows(p)
    lower = [h.lower() for h in header]
    if "path" not in lower or "action" not in lower:
        raise UserError(f"{p}: a corrections file needs 'path', 'label' and 'action' columns (imgcls review writes it)")
    out: dict[tuple[str, str], tuple[str, list[str]]] = {}
    for row, line in zip(rows, lines, strict=True):
        values = {k.lower(): (v or "").strip() for k, v in row.items()}
        labels = parse_labels(values.get("label", ""))
        action = values.get("action", "").lower()
        if not action and labels:
            action = "relabel"  # a row added by hand with its label and no action: the label counts, as in training
        if not action:
            raise UserError(f"{p}, line {line}: no label and no action (accept, relabel or reject)")
        if action not in ACTIONS:
            raise UserError(f"{p}, line {line}: unknown action {action!r} (accept, relabel or reject)")
        if action == "relabel" and not labels:
            raise UserError(f"{p}, line {line}: relabel with no label")
        box = parse_box(values.get("box", ""))
        if box == "?":
            raise UserError(f"{p}, line {line}: box {values['box']!r} is not four numbers (x y w h)")
        key = (decision_path(p.parent, values["path"]), box)
        out.pop(key, None)  # the later row counts, and counts later
        out[key] = (action, labels)
    return out


def apply_corrections(table: DataTable, path: str | Path) -> tuple[DataTable, Applied]:
    """The table with the file's decisions applied (see the module docstring)."""
    decisions = read_corrections(path)
    done = Applied()
    rows: dict[tuple[str, str], list[int]] = {}
    for i in range(len(table)):
        key = row_key(table, i)
        rows.setdefault(key, []).append(i)
        if key[1]:
            rows.setdefault((key[0], ""), []).append(i)  # a decision without a box: every crop
    done.unknown = [p for p, box in decisions if (p, box) not in rows]
    final: dict[int, tuple[str, list[str]]] = {}  # row -> the last decision naming it
    for key, (action, labels) in decisions.items():
        for i in rows.get(key, []):
            # a whole frame accepted confirms each crop's own label: the label the page showed for
            # the frame (a leak's) is one crop's, and must not become the others'
            whole_frame = not key[1] and row_key(table, i)[1]
            final[i] = (action, [] if action == "accept" and whole_frame else labels)
    labels_of = [table.label_names(i) for i in range(len(table))]
    names = list(table.class_names)
    keep = np.ones(len(table), dtype=bool)
    skipped = list(table.skipped)
    for i, (action, labels) in sorted(final.items()):
        if action == "reject":
            keep[i] = False
            skipped.append((table.paths[i], f"{REVIEWED} ({Path(path).name})"))
            done.rejected += 1
        elif labels and labels != labels_of[i]:  # relabelled, or a model's guess confirmed
            labels_of[i] = labels
            names += [n for n in labels if n not in names]
            done.relabelled += 1
        else:
            done.accepted += 1
    if not table.multilabel and any(len(lab) != 1 for lab in labels_of):
        raise UserError(f"{path}: several labels for one image, and the data is single-label")
    corrected = replace(table, targets=make_targets(labels_of, names, table.multilabel), class_names=names)
    return replace(corrected.subset(np.flatnonzero(keep)), skipped=skipped), done
