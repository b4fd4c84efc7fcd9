"""COCO Camera Traps JSON (the LILA format): ``images`` (``id``, ``file_name``, ``location``,
``seq_id``, ``datetime``), ``categories`` (``id``, ``name``; blanks are a category such as
"empty") and ``annotations`` (``image_id``, ``category_id``).

An image's labels are the categories of its annotations. For multi-class training an image with
several different categories, or none, is skipped with that reason.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from imgcls.data.table import DataTable, listed_path, make_targets
from imgcls.errors import UserError


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 JSON text") from None


def is_coco_camera_traps(data: Any) -> bool:
    return isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data)


def read_coco(
    path: Path, *, multilabel: bool | None = None, image_root: Path | None = None, data: Any = None
) -> DataTable:
    data = load_json(path) if data is None else data
    if not is_coco_camera_traps(data):
        raise UserError(f"{path}: not COCO Camera Traps JSON (needs images, annotations, categories)")
    try:
        categories = {c["id"]: str(c["name"]) for c in data["categories"]}
        per_image: dict[Any, list[str]] = defaultdict(list)
        for a in data["annotations"]:
            name = categories.get(a["category_id"])
            if name is None:
                raise UserError(f"{path}: annotation {a.get('id')} has unknown category {a['category_id']}")
            if name not in per_image[a["image_id"]]:
                per_image[a["image_id"]].append(name)
        images = list(data["images"])
        base = image_root or path.parent
        if multilabel is None:
            multilabel = any(len(v) > 1 for v in per_image.values())
        paths: list[str] = []
        labels: list[list[str]] = []
        columns: dict[str, list[str]] = {
            "location": [],
            "sequence": [],
            "datetime": [],
            "image_id": [],
        }
        skipped: list[tuple[str, str]] = []
        for im in images:
            file = listed_path(base, str(im["file_name"]))
            names = per_image.get(im["id"], [])
            if not names:
                skipped.append((file, "no annotation"))
                continue
            if not multilabel and len(names) > 1:
                skipped.append((file, f"several categories ({', '.join(names)}) in a single-label task"))
                continue
            paths.append(file)
            labels.append(names)
            columns["location"].append(str(im.get("location", "") or ""))
            columns["sequence"].append(str(im.get("seq_id", "") or ""))
            columns["datetime"].append(str(im.get("datetime", "") or ""))
            columns["image_id"].append(str(im["id"]))
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: malformed COCO Camera Traps entry (missing {e})") from None
    if not paths:
        raise UserError(f"{path}: no annotated images")
    used = {n for names in labels for n in names}
    class_names = sorted(used)
    return DataTable(
        kind="coco",
        root=path.parent,
        paths=paths,
        targets=make_targets(labels, class_names, multilabel),
        class_names=class_names,
        multilabel=multilabel,
        columns=columns,
        skipped=skipped,
    )
