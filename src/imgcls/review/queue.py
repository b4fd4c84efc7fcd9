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
    who = "the model says" if "fold" not in str(summary.get("probabilities_from", "fold")) else "the models say"
    for r in _csv_rows(root / "label_issues.csv"):
        why = f"label quality {float(r['quality']):.3f}: {who} {r['suggested']} ({float(r['p_suggested']):.2f})"
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


def from_suggestions(path: str | Path) -> tuple[list[Item], dict[str, Any]]:
    """The images of an ``imgcls suggest`` output, in its labelling order (each the model's guess
    and runner-up on the first number keys), and what suggest recorded beside it (the model and
    its classes: ``NAME.model.json``; empty when it is not there)."""
    from imgcls.suggest import about_file

    p = Path(path)
    if not p.is_file():
        raise UserError(f"suggestions file not found: {path}")
    from imgcls.data.sources.manifest import read_rows

    header, rows, lines = read_rows(p)
    if "path" not in header or "guess" not in header:
        raise UserError(f"{p}: not an imgcls suggest output (needs 'path' and 'guess' columns; found "
                        f"{', '.join(header) or 'nothing'})")  # fmt: skip
    items = []
    for r, line in zip(rows, lines, strict=True):
        raw = (r.get("path") or "").strip()
        if not raw:
            raise UserError(f"{p}, line {line}: no path")
        box = parse_box(r.get("box") or "")
        if box == "?":
            raise UserError(f"{p}, line {line}: box {r.get('box')!r} is not four numbers (x y w h)")
        guess, second = (r.get("guess") or "").strip(), (r.get("guess2") or "").strip()
        odds = ", ".join(f"{g} {float(str(q)):.2f}" for g, q in ((guess, r.get("p_guess")), (second, r.get("p_guess2")))
                         if g and _number(q))  # fmt: skip
        why = "; ".join(w for w in (f"the model: {odds}" if odds else "", (r.get("reason") or "").strip()) if w)
        items.append(Item(path=_resolve(raw, p.parent), kind="unlabelled", label=guess, why=why, box=box,
                          candidates=[c for c in (guess, second) if c]))  # fmt: skip
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        again = next(k for k in keys if keys.count(k) > 1)
        raise UserError(f"{p}: {again.split('|')[0]} is listed twice")
    about: dict[str, Any] = {}
    if about_file(p).is_file():
        try:
            about = json.loads(about_file(p).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            about = {}
    return items, about if isinstance(about, dict) else {}


def _number(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def from_predictions(path: str | Path, limit: int) -> list[Item]:
    """The ``limit`` least confident rows (or detection crops) of a ``predict`` output."""
    return read_predictions(path, limit)[0]


def read_predictions(path: str | Path, limit: int, below: float = 1.0) -> tuple[list[Item], list[str]]:
    """The ``limit`` least confident rows (or detection crops) of a ``predict`` output whose
    probability is below ``below``, and the classes its model gave (the labels of every row's top
    classes; a camera-trap frame without a detection says ``blank`` by the pipeline's rule, not
    the model's, and adds no class, nor is it offered as a label). Detection crops come from the
    JSON outputs and imgcls's MegaDetector file; a CSV keeps one row per image."""
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
    found = [f for f in found if f[0] < below][:limit]
    items = [Item(path=path_, kind="prediction", label=label, why=f"predicted {label} with probability {score:.2f}",
                  box=box, candidates=[c for c in top or [label] if not classes or c in classes])
             for score, path_, box, label, top in found]  # fmt: skip
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
    if isinstance(doc, dict) and isinstance(doc.get("images"), list) and "classification_categories" in doc:
        return _megadetector_rows(doc)
    raise UserError(f"{p}: not a predictions file imgcls wrote (CSV, JSON lines, JSON with 'predictions', or "
                    "MegaDetector JSON with classifications)")  # fmt: skip


def _megadetector_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A MegaDetector batch-output file with classifications (``predict --format megadetector``)
    as predict's rows: each classified detection a crop with its classes' probabilities."""
    names = {str(k): str(v) for k, v in doc["classification_categories"].items()}
    rows = []
    for image in doc["images"]:
        dets = []
        for d in image.get("detections") or []:
            ranked = sorted(((names.get(str(c), str(c)), float(q)) for c, q in d.get("classifications") or []),
                            key=lambda t: -t[1])  # fmt: skip
            if ranked and d.get("bbox"):
                dets.append({"bbox": d["bbox"], "label": ranked[0][0], "score": ranked[0][1], "top_k": dict(ranked)})
        error = image.get("failure")
        rows.append({"path": image.get("file", ""), "error": error, "detections": dets,
                     "score": 1.0 if dets and not error else None})  # fmt: skip
    return rows


def _resolve(path: str, base: Path) -> str:
    """A predicted path as the runner wrote it: relative to where predict ran (usually here),
    else to the output's folder."""
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.realpath(path)
    return os.path.realpath(base / path)
