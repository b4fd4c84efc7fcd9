"""What a review walks, in order: an audit's likely label errors (most likely wrong first), its
leaks (the held-out copy of a training image), then the least confident predictions of a
``predict`` output (CSV, JSON lines or JSON; camera-trap outputs give one item per classified
detection crop)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imgcls.data.corrections import format_box, is_data_file_id, parse_box
from imgcls.errors import UserError


@dataclass
class Item:
    """One image (or detection crop) to decide on."""

    path: str  # absolute file path, or the id of an image held in a data file (``name#17``)
    kind: str  # label (a likely label error), leak (a held-out copy), prediction (low confidence)
    label: str  # the label it has now: given, or predicted
    why: str  # one line: why it is in the queue
    box: str = ""  # ``x y w h`` of a detection crop, "" for the whole image
    suggested: str = ""  # the label the evidence points to, where there is one
    candidates: list[str] = field(default_factory=list)  # the likeliest labels, for the number keys
    other: str = ""  # leak: the training image it copies

    @property
    def key(self) -> str:
        return item_key(self.path, self.box)

    def public(self, index: int, cwd: str) -> dict[str, Any]:
        d = asdict(self)
        d.update(index=index, key=self.key, name=_shown(self.path, cwd), other_name=_shown(self.other, cwd))
        return d


def item_key(path: str, box: str = "") -> str:
    """The one name of a review's row: the image as a corrections file names it (the resolved
    path, or the id of an image in a data file) and, for a detection crop, its box."""
    name = path if is_data_file_id(path) else os.path.realpath(path)  # as decision_path reads it
    return f"{name}|{box}" if box else name


def _shown(path: str, cwd: str) -> str:
    if not path:
        return ""
    rel = os.path.relpath(path, cwd) if os.path.isabs(path) else path
    return path if rel.startswith("..") else rel


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def from_audit(folder: str | Path) -> tuple[list[Item], dict[str, Any]]:
    """The audit's suspects and its summary (classes, data folder, crop margin)."""
    root = Path(folder)
    summary_file = root / "summary.json"
    if not summary_file.is_file():
        raise UserError(f"{root}: not an audit folder (no summary.json; run imgcls audit --out {root})")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    items = []
    for r in _csv_rows(root / "label_issues.csv"):
        why = (
            f"label quality {float(r['quality']):.3f}: the models say {r['suggested']} ({float(r['p_suggested']):.2f})"
        )
        items.append(Item(path=r["path"], kind="label", label=r["given"], why=why, box=parse_box(r.get("box", "")),
                          suggested=r["suggested"], candidates=[r["suggested"], r["given"]]))  # fmt: skip
    for r in _csv_rows(root / "duplicates.csv"):
        if r.get("leak") != "True":
            continue
        held_out = "b" if r["split_b"] != "train" else "a"
        kept = "a" if held_out == "b" else "b"
        what = "an exact copy" if r["kind"] == "exact" else f"a near copy ({r['distance']} bits apart)"
        why = f"{r[f'split_{held_out}']} image, {what} of a {r[f'split_{kept}']} image: a leak"
        label = r.get(f"label_{held_out}", "")
        leak = Item(path=r[f"path_{held_out}"], kind="leak", label=label, why=why,
                    candidates=[label] if label else [], other=r[f"path_{kept}"])  # fmt: skip
        same = next((it for it in items if it.key == leak.key), None)
        if same is None:
            items.append(leak)
        elif not same.other:  # a suspect that is also a leak: one image, one decision, both reasons shown
            same.why, same.other = f"{same.why}; also {why}", leak.other
    return items, summary


def from_predictions(path: str | Path, limit: int) -> list[Item]:
    """The ``limit`` least confident rows (or detection crops) of a ``predict`` output."""
    return read_predictions(path, limit)[0]


def read_predictions(path: str | Path, limit: int) -> tuple[list[Item], list[str]]:
    """The ``limit`` least confident rows (or detection crops) of a ``predict`` output, and the
    classes its model gave (the labels of every row's top classes; a camera-trap frame without a
    detection says ``blank`` by the pipeline's rule, not the model's, and adds no class)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"predictions file not found: {path}")
    found, classes = [], {}
    for r in _prediction_rows(p):
        if r.get("error") or r.get("score") in (None, ""):
            continue
        dets = [d for d in r.get("detections") or [] if d.get("score") is not None and d.get("bbox")]
        for d in dets or [r]:
            top = d.get("top_k") or {}
            if isinstance(top, str):
                top = json.loads(top) if top else {}
            if dets or "detections" not in r:
                classes.update(dict.fromkeys(top))
            box = format_box(d["bbox"]) if d is not r else ""
            found.append(
                (float(d["score"]), _resolve(str(r["path"]), p.parent), box, str(d.get("label", "")), list(top))
            )
    found.sort(key=lambda f: f[0])
    items = [Item(path=path_, kind="prediction", label=label, why=f"predicted {label} with probability {score:.2f}",
                  box=box, candidates=top or [label]) for score, path_, box, label, top in found[:limit]]  # fmt: skip
    return items, list(classes)


def _prediction_rows(p: Path) -> list[dict[str, Any]]:
    try:
        if p.suffix.lower() == ".csv":
            return _csv_rows(p)
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() in (".jsonl", ".ndjson"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise UserError(f"{p}: not a predictions file imgcls wrote ({e})") from None
    if isinstance(doc, dict) and isinstance(doc.get("predictions"), list):
        return list(doc["predictions"])
    raise UserError(f"{p}: not a predictions file imgcls wrote (CSV, JSON lines or JSON with 'predictions')")


def _resolve(path: str, base: Path) -> str:
    """A predicted path as the runner wrote it: relative to where predict ran (usually here),
    else to the output's folder."""
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.realpath(path)
    return os.path.realpath(base / path)
