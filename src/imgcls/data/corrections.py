"""``--corrections corrections.csv``: what a review decided, applied to the data.

The file is a manifest (``path,label``) with an ``action`` column, as ``imgcls review`` writes
it: ``relabel`` (the image takes the new label; ``cat;dog`` for multi-label data), ``reject``
(the image is left out, listed in ``skipped.csv`` with the reason), ``accept`` (kept as it is).
Relative paths resolve against the file's folder, as in a manifest. A label the data did not have
becomes a new class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from imgcls.data.sources.manifest import parse_labels, read_rows
from imgcls.data.table import DataTable, listed_path, make_targets
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


def read_corrections(path: str | Path) -> dict[str, tuple[str, list[str]]]:
    """Resolved image path -> (action, labels) of every decision in the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"corrections file not found: {path}")
    header, rows, lines = read_rows(p)
    lower = [h.lower() for h in header]
    if "path" not in lower or "action" not in lower:
        raise UserError(f"{p}: a corrections file needs 'path', 'label' and 'action' columns (imgcls review writes it)")
    out: dict[str, tuple[str, list[str]]] = {}
    for row, line in zip(rows, lines, strict=True):
        values = {k.lower(): (v or "").strip() for k, v in row.items()}
        action = values.get("action", "")
        if action not in ACTIONS:
            raise UserError(f"{p}, line {line}: unknown action {action!r} (accept, relabel or reject)")
        labels = parse_labels(values.get("label", ""))
        if action == "relabel" and not labels:
            raise UserError(f"{p}, line {line}: relabel with no label")
        out[os.path.realpath(listed_path(p.parent, values["path"]))] = (action, labels)
    return out


def apply_corrections(table: DataTable, path: str | Path) -> tuple[DataTable, Applied]:
    """The table with the file's decisions applied (see the module docstring)."""
    decisions = read_corrections(path)
    done = Applied()
    index = {os.path.realpath(p): i for i, p in enumerate(table.paths)}
    done.unknown = [p for p in decisions if p not in index]
    names = list(table.class_names)
    for action, labels in decisions.values():
        if action == "relabel":
            names += [n for n in labels if n not in names]
    labels_of = [table.label_names(i) for i in range(len(table))]
    keep = np.ones(len(table), dtype=bool)
    skipped = list(table.skipped)
    for p, (action, labels) in decisions.items():
        i = index.get(p)
        if i is None:
            continue
        if action == "relabel":
            labels_of[i] = labels
            done.relabelled += 1
        elif action == "reject":
            keep[i] = False
            skipped.append((table.paths[i], f"left out by the review ({Path(path).name})"))
            done.rejected += 1
        else:
            done.accepted += 1
    if not table.multilabel and any(len(lab) != 1 for lab in labels_of):
        raise UserError(f"{path}: several labels for one image, and the data is single-label")
    corrected = replace(table, targets=make_targets(labels_of, names, table.multilabel), class_names=names)
    return replace(corrected.subset(np.flatnonzero(keep)), skipped=skipped), done
