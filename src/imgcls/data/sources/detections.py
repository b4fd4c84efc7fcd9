"""MegaDetector batch output in, detection crops out.

MegaDetector (https://github.com/agentmorris/MegaDetector) writes one JSON file per batch:
``detection_categories`` (``{"1": "animal", "2": "person", "3": "vehicle"}``) and ``images``,
each with ``file`` (relative to the folder the detector ran on) and ``detections``:
``category``, ``conf`` and a normalised ``bbox`` ``[x_min, y_min, width, height]``; an image the
detector could not read has ``failure`` instead.

With ``--detections FILE --det-threshold T`` training, evaluation and prediction work on the
crops of the detections at or above ``T`` (of the chosen categories, ``animal`` by default): a
square around each box with a margin. An image without such a detection is blank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.data.sources.coco import load_json
from imgcls.data.table import NO_DETECTION, DataTable, listed_path
from imgcls.errors import UserError


@dataclass
class Detection:
    category: str  # the category's name: animal, person, vehicle
    conf: float
    bbox: tuple[float, float, float, float]

    @property
    def area(self) -> float:
        return self.bbox[2] * self.bbox[3]


def clip_box(box: list[float]) -> tuple[float, float, float, float] | None:
    """The part of ``[x, y, w, h]`` inside the unit square, or None when nothing is left."""
    if len(box) != 4 or not all(np.isfinite(box)):
        return None
    x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
    x1, y1 = min(1.0, float(box[0]) + float(box[2])), min(1.0, float(box[1]) + float(box[3]))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return x0, y0, x1 - x0, y1 - y0


@dataclass
class Detections:
    """A MegaDetector results file, indexed by each image's absolute path."""

    path: Path
    categories: dict[str, str]
    images: dict[str, list[Detection]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # absolute path -> the file's own name
    info: dict[str, Any] = field(default_factory=dict)
    dropped: int = 0  # boxes outside the frame or of zero area

    def lookup(self, image: str) -> list[Detection] | None:
        """The image's detections ([] when none), or None when the file does not list it."""
        return self.images.get(os.path.realpath(image))

    def above(self, image: str, threshold: float, categories: tuple[str, ...]) -> list[Detection] | None:
        dets = self.lookup(image)
        if dets is None:
            return None
        return [d for d in dets if d.conf >= threshold and d.category in categories]


def read_detections(path: str | Path, image_root: str | Path | None = None) -> Detections:
    """Parse a MegaDetector batch-output JSON file (any format version from 1.0)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"detections file not found: {path}")
    data = load_json(p)
    if not isinstance(data, dict) or "images" not in data or not isinstance(data["images"], list):
        raise UserError(f"{p}: not a MegaDetector results file (needs an 'images' list)")
    categories = {
        str(k): str(v)
        for k, v in (data.get("detection_categories") or {"1": "animal", "2": "person", "3": "vehicle"}).items()
    }
    base = Path(image_root) if image_root else p.parent
    out = Detections(path=p, categories=categories, info=dict(data.get("info") or {}))
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "file" not in im:
            raise UserError(f"{p}: image entry {i} has no 'file'")
        key = listed_path(base, str(im["file"]))
        out.files[key] = str(im["file"])
        if im.get("failure"):
            out.failures[key] = str(im["failure"])
            out.images[key] = []
            continue
        dets = []
        for d in im.get("detections") or []:
            try:
                box = clip_box([float(v) for v in d["bbox"]])
                conf = float(d["conf"])
                cat = categories.get(str(d["category"]), str(d["category"]))
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{p}: malformed detection in {im['file']!r} (needs category, conf, bbox)") from None
            if box is None:
                out.dropped += 1
                continue
            dets.append(Detection(cat, conf, box))
        out.images[key] = dets
    return out


def parse_categories(text: str) -> tuple[str, ...]:
    """``"animal,person"`` -> ``("animal", "person")``."""
    return tuple(c.strip() for c in text.split(",") if c.strip())


def crop_settings(provenance: dict[str, Any], threshold: float | None, margin: float | None) -> tuple[float, float]:
    """The detection threshold and crop margin: as given, else those the model was trained on
    (its provenance records them), else 0.2 and 0.1."""
    trained = dict(provenance.get("detection_crops") or {})
    return (
        threshold if threshold is not None else float(trained.get("threshold", 0.2)),
        margin if margin is not None else float(trained.get("margin", 0.1)),
    )


def crop_table(
    table: DataTable,
    detections: Detections,
    *,
    threshold: float = 0.2,
    categories: tuple[str, ...] = ("animal",),
    margin: float = 0.1,
) -> DataTable:
    """One row per detection crop at or above ``threshold`` (the image's label carries over);
    an image without one is skipped with the reason (blank by the detector, or not listed). A
    row that already names its crop (a labels file written by ``imgcls review --label`` over
    suggested crops) is that crop, kept as it is."""
    if table.pixels is not None:
        raise UserError("--detections needs image files, not IDX data")
    rows: list[int] = []
    boxes: list[tuple[float, float, float, float]] = []
    confs: list[str] = []
    index: list[str] = []
    skipped = list(table.skipped)
    for i, path in enumerate(table.paths):
        if table.boxes is not None and not np.isnan(table.boxes[i]).any():
            rows.append(i)
            boxes.append(tuple(float(v) for v in table.boxes[i]))  # type: ignore[arg-type]
            confs.append("")
            index.append("")
            continue
        failure = detections.failures.get(os.path.realpath(path))
        if failure is not None:
            skipped.append((path, f"the detector failed on it ({failure})"))
            continue
        kept = detections.above(path, threshold, categories)
        if kept is None:
            skipped.append((path, f"not in the detections file {detections.path.name}"))
            continue
        if not kept:
            skipped.append((path, f"{NO_DETECTION}{'/'.join(categories)} detection at or above {threshold:g}"))
            continue
        for j, d in enumerate(kept):
            rows.append(i)
            boxes.append(d.bbox)
            confs.append(f"{d.conf:.4f}")
            index.append(str(j))
    if not rows:
        raise UserError(
            f"no detection at or above --det-threshold {threshold:g} in {detections.path.name} for these images"
        )
    sub = table.subset(rows)
    columns = dict(sub.columns)
    columns["image"] = [table.paths[i] for i in rows]
    columns["detection_conf"] = confs
    columns["detection"] = index
    # every crop keeps its image's path (it reads that file); the 'image' column keeps the
    # crops of one image together when splitting
    return replace(
        sub,
        boxes=np.array(boxes, dtype=np.float64),
        crop_margin=margin,
        columns=columns,
        skipped=skipped,
    )


def detection_tradeoff(
    table: DataTable, detections: Detections, categories: tuple[str, ...], steps: int = 20
) -> list[dict[str, float]]:
    """Per detection threshold: the share of animal images that keep a detection (animal
    recall) and the share of blank images left without one (blanks removed). Images whose label
    is a blank class count as blank; images the file does not list are left out."""
    from imgcls.decisions import BLANK_NAMES, tradeoff

    best: list[float] = []
    is_blank: list[bool] = []
    for i, path in enumerate(table.paths):
        dets = detections.lookup(path)
        if dets is None:
            continue
        best.append(max((d.conf for d in dets if d.category in categories), default=0.0))
        is_blank.append(all(n.strip().lower() in BLANK_NAMES for n in table.label_names(i)))
    points = tradeoff(
        np.asarray(best), np.asarray(is_blank, dtype=bool), np.linspace(0.05, 0.95, steps), blank_at_or_above=False
    )
    for point in points:
        point["threshold"] = round(point["threshold"], 4)
    return points


def detection_crops(cfg: Any, table: DataTable) -> DataTable:
    """The table hook of training and auditing: with ``--detections``, the MegaDetector crops
    (``cfg`` a :class:`~imgcls.config.RunConfig`) instead of whole images."""
    d = cfg.data
    if not d.detections:
        return table
    dets = read_detections(d.detections, d.image_root)
    categories = parse_categories(d.det_categories)
    return crop_table(table, dets, threshold=d.det_threshold, categories=categories, margin=d.crop_margin)
