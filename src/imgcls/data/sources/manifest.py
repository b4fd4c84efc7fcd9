"""CSV manifests: ``path,label`` plus optional ``split``, ``location``, ``sequence``,
``datetime`` and any other columns (usable with ``--split-by COLUMN``).

A review's ``corrections.csv`` is a manifest too: its rows with ``action`` ``reject`` are left
out (the reviewed images of a ``predict`` output become training data this way).

Multi-label rows join their labels with ``;`` (``cat;dog``); an empty label is a multi-label row
with no positive label. Relative paths resolve against the CSV's folder, or ``image_root``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from imgcls.data.table import LISTED_AGAIN, REVIEWED, SPLIT_ALIASES, DataTable, listed_path, make_targets, parse_box
from imgcls.errors import UserError

PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "filepath")
LABEL_COLUMNS = ("label", "labels", "class", "category", "species")
KNOWN = ("split", "location", "sequence", "datetime")


def _pick(header: list[str], names: tuple[str, ...]) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    return next((lower[n] for n in names if n in lower), None)


def parse_labels(text: str) -> list[str]:
    return [s.strip() for s in text.split(";") if s.strip()]


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """(header, rows, the line each row starts on). A malformed file is a one-line error naming
    the line: an unterminated quote (which would swallow every later row into one field), a
    quote in the middle of a field, a row with more fields than the header, a value holding a
    line break."""
    header: list[str] = []
    rows: list[dict[str, str]] = []
    lines: list[int] = []
    start = 1
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            for values in reader:
                if not header:
                    header = [h.strip() for h in values]
                elif any(v.strip() for v in values):
                    if len(values) > len(header):
                        raise UserError(
                            f"{path}, line {start}: {len(values)} fields where the header has {len(header)} "
                            "(a comma inside a value needs quotes)"
                        )
                    if any("\n" in v or "\r" in v for v in values):
                        raise UserError(
                            f"{path}, line {start}: a quoted value runs over {reader.line_num - start + 1} lines "
                            "(a quote that is never closed?)"
                        )
                    rows.append(dict(zip(header, values, strict=False)))
                    lines.append(start)
                start = reader.line_num + 1
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text CSV file") from None
    except csv.Error as e:
        what = "a quote that is never closed" if "end of data" in str(e) else str(e)
        raise UserError(f"{path}, line {start}: malformed CSV ({what})") from None
    return header, rows, lines


def _once_each(
    keep: list[int], splits: list[str | None], paths: list[str], labels: list[list[str]], lines: list[int],
    skipped: list[tuple[str, str]], boxes: list[str] | None = None,
) -> tuple[list[int], list[str | None]]:  # fmt: skip
    """Each image (each crop: path and ``boxes``) once: a row repeating an earlier one's path and
    labels is skipped (it would count twice, and could land in training and validation both); a
    path given different labels on different rows is skipped on every row, since neither label
    can be trusted. Both go to ``skipped`` with the line they clash with."""
    first: dict[tuple[str, str], int] = {}  # (path, box) -> its first kept position
    drop: set[int] = set()
    for k, p in enumerate(paths):
        j = first.setdefault((p, boxes[k] if boxes is not None else ""), k)
        if j == k:
            continue
        drop.add(k)
        if sorted(labels[k]) == sorted(labels[j]):
            skipped.append((p, f"{LISTED_AGAIN} (first on line {lines[j]})"))
            continue
        drop.add(j)  # neither label can be trusted
        was, now = "; ".join(labels[j]) or "(none)", "; ".join(labels[k]) or "(none)"
        skipped.append((p, f"labelled {was} on line {lines[j]} and {now} on line {lines[k]} "
                           "(for several labels, join them with ';' in one row)"))  # fmt: skip
    keep_out = [i for k, i in enumerate(keep) if k not in drop]
    splits_out = [s for k, s in enumerate(splits) if k not in drop]
    return keep_out, splits_out


def crop_box(text: str) -> bool:
    """Whether ``text`` is empty (the whole image) or a detection crop's box as imgcls writes it:
    x y w h, each a share of the image (0 to 1), inside it, not empty."""
    box = parse_box(text)
    if box in ("", "?"):
        return box == ""
    x, y, w, h = (float(v) for v in box.split())
    eps = 1e-3
    return x >= -eps and y >= -eps and w > 0 and h > 0 and x + w <= 1 + eps and y + h <= 1 + eps


def _crop_column(header: list[str], rows: list[dict[str, str]], action_col: str | None) -> str | None:
    """The ``box`` column when it names crops: in a labels or corrections file (an ``action``
    column), else when most of its values are crop boxes (a row whose box is not one is then
    skipped with the reason, never read as its whole image); a ``box`` column of anything else
    (pixel boxes, ids) stays an ordinary column."""
    col = _pick(header, ("box",))
    if col is None or action_col is not None:
        return col
    given = [(r.get(col) or "").strip() for r in rows]
    crops = sum(1 for v in given if v and crop_box(v))
    return col if crops > sum(1 for v in given if v) - crops else None


def _row_problem(
    row: dict[str, str], labels: list[str], multilabel: bool, split_col: str | None, action_col: str | None,
    box_col: str | None, name: str,
) -> tuple[str, str | None]:  # fmt: skip
    """Why a row with a path is not used ("" when it is), and its split."""
    if action_col is not None and (row.get(action_col) or "").strip().lower() == "reject":
        return f"{REVIEWED} ({name})", None
    if not multilabel and len(labels) != 1:
        why = "no label" if not labels else f"several labels ({'; '.join(labels)})"
        return f"{why} in a single-label manifest", None
    split = None
    if split_col is not None and (row.get(split_col) or "").strip():
        value = (row.get(split_col) or "").strip().lower()
        if value not in SPLIT_ALIASES:
            return f"unknown split {value!r}", None
        split = SPLIT_ALIASES[value]
    if box_col is not None and not crop_box(row.get(box_col) or ""):
        return f"box {row.get(box_col)!r} is not a crop box: x y w h, each a share of the image (0 to 1)", None
    return "", split


def read_manifest(path: Path, *, multilabel: bool | None = None, image_root: Path | None = None) -> DataTable:
    header, rows, line_of = read_rows(path)
    path_col, label_col = _pick(header, PATH_COLUMNS), _pick(header, LABEL_COLUMNS)
    if path_col is None or label_col is None:
        raise UserError(f"{path}: needs a 'path' and a 'label' column (found: {', '.join(header) or 'nothing'})")
    base = image_root or path.parent
    labels = [parse_labels(r.get(label_col) or "") for r in rows]
    if multilabel is None:
        multilabel = any(len(lab) > 1 for lab in labels)
    extra = [h for h in header if h not in (path_col, label_col)]
    split_col = _pick(header, ("split",))
    action_col = _pick(header, ("action",))
    box_col = _crop_column(header, rows, action_col)
    keep: list[int] = []
    skipped: list[tuple[str, str]] = []
    splits: list[str | None] = []
    for i, row in enumerate(rows):
        raw = (row.get(path_col) or "").strip()
        if not raw:
            skipped.append((f"{path.name}:{line_of[i]}", "empty path"))
            continue
        why, split = _row_problem(row, labels[i], multilabel, split_col, action_col, box_col, path.name)
        if why:
            skipped.append((listed_path(base, raw), why))
            continue
        keep.append(i)
        splits.append(split)
    box_of = [parse_box(rows[i].get(box_col) or "") if box_col is not None else "" for i in range(len(rows))]
    keep, splits = _once_each(keep, splits, [listed_path(base, rows[i][path_col]) for i in keep],
                              [labels[i] for i in keep], [line_of[i] for i in keep], skipped,
                              [box_of[i] for i in keep])  # fmt: skip
    if not keep:
        raise UserError(f"{path}: no usable rows")
    class_names = sorted({n for i in keep for n in labels[i]})
    if not class_names:
        raise UserError(f"{path}: no labels in the '{label_col}' column")
    columns = {
        (h.strip().lower() if h.strip().lower() in KNOWN else h): [(rows[i].get(h) or "").strip() for i in keep]
        for h in extra
        if h not in (split_col, action_col, box_col)
    }
    boxes = None
    if box_col is not None and any(box_of[i] for i in keep):  # a crop per row that names its box
        boxes = np.array([[float(v) for v in box_of[i].split()] if box_of[i] else [np.nan] * 4 for i in keep])
    return DataTable(
        kind="csv",
        root=path.parent,
        paths=[listed_path(base, rows[i][path_col]) for i in keep],
        targets=make_targets([labels[i] for i in keep], class_names, multilabel),
        class_names=class_names,
        multilabel=multilabel,
        split=splits if any(s is not None for s in splits) else None,
        columns=columns,
        boxes=boxes,
        skipped=skipped,
    )
