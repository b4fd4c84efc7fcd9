"""One self-contained ``report.html`` (plots embedded as data URIs, no external resources)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}
h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.6rem 1rem;min-width:8rem}
.card b{display:block;font-size:1.5rem}.card span{color:#666;font-size:.85rem}
table{border-collapse:collapse;font-size:.9rem}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0}.note{color:#555;font-size:.9rem}
"""

HEADLINES = [
    ("top1", "top-1 accuracy", True),
    ("top5", "top-5 accuracy", True),
    ("balanced_accuracy", "balanced accuracy", True),
    ("macro_f1", "macro F1", False),
    ("roc_auc", "ROC-AUC", False),
    ("average_precision", "average precision", False),
    ("mAP", "mean average precision", False),
    ("micro_f1", "micro F1", False),
    ("subset_accuracy", "subset accuracy", True),
    ("hamming_loss", "Hamming loss", False),
    ("nll", "mean NLL (cross-entropy)", False),
    ("ece", "calibration error (ECE)", False),
]


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any, pct: bool = False) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{100 * v:.2f}%" if pct else f"{v:.4f}"
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]], limit: int = 500) -> str:
    if not rows:
        return "<p class=note>none</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in cols) + "</tr>" for r in rows[:limit])
    more = f"<p class=note>… and {len(rows) - limit} more</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _notes(r: Any) -> list[str]:
    """What the headline figures mean: optimistic (the selection split), the log-likelihood, the
    calibration."""
    m = r.metrics
    notes = []
    if getattr(r, "selection_split", False):
        notes.append(f"<p class=note><b>Optimistic:</b> {html.escape(r.selection_note)}.</p>")
    if "log_likelihood" in m:
        notes.append(
            f"<p class=note>Log-likelihood of all {m['num_images']} labels: "
            f"{m['log_likelihood']:.2f} "
            f"(its mean negative, the cross-entropy, is {m['nll']:.4f} nats per image).</p>"
        )
    if m.get("temperature", 1.0) != 1.0:
        notes.append(
            f"<p class=note>Probabilities are calibrated: logits divided by the temperature "
            f"{m['temperature']:.3f} fitted on the training run's validation split (judge NLL and ECE "
            "on images that were not in it).</p>"
        )
    return notes


def page_title(model: str, data: str, split: str) -> str:
    """The page's title, which names it among others (browser tabs, bookmarks): the model's last
    three path parts (a model directory is called ``model`` in every run; the run folder above it
    is what tells them apart) and the data's name and split."""
    where = "/".join(Path(model).parts[-3:])
    return f"imgcls evaluation: {where} on {Path(data).name} ({split})"


def render_html(r: Any, images: dict[str, Path]) -> str:
    m = r.metrics
    cards = "".join(
        f"<div class=card><b>{_fmt(m[k], pct)}</b><span>{label}</span></div>"
        for k, label, pct in HEADLINES
        if k in m and isinstance(m[k], float)
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(page_title(r.model, r.data, r.split))}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Evaluation of {html.escape(r.model)}</h1>",
        f"<p class=sub>{html.escape(r.task)} task, {len(r.label_names)} classes · "
        f"data {html.escape(r.data)} (split: {html.escape(r.split)}) · "
        f"{m['num_images']} images evaluated by {html.escape(r.engine or 'an unnamed engine')}, "
        f"{html.escape(r.skipped_note)}</p>",
        f"<div class=cards>{cards}</div>",
    ]
    parts += _notes(r)
    sections = [
        ("curves", "Training curves"),
        ("confusion_matrix", "Confusion matrix"),
        ("reliability", "Calibration"),
        ("roc_pr", "ROC and precision-recall"),
        ("mistakes", "Most confident mistakes"),
        ("blank_tradeoff", "Blanks: animal recall against blanks removed"),
        ("detection_tradeoff", "Detector threshold: animal recall against blanks removed"),
    ]
    for key, title in sections:
        if key in images:
            parts.append(f"<h2>{title}</h2>{_img(images[key], title)}")
            if key == "mistakes":
                parts.append(
                    f"<p class=note>Labels and probabilities from {html.escape(r.engine or 'the evaluated engine')}, "
                    "as every figure of this report; the heat maps beside them, where the model has them "
                    "(Grad-CAM: where the network finds the predicted class), need gradients, so PyTorch "
                    "computes them in float32.</p>"
                )
            if key == "curves":
                parts.append(
                    "<p class=note>The validation metrics of the training curves were measured on the "
                    "split that chose the best epoch (and the temperature and thresholds): judge the model "
                    "on a held-out test split.</p>"
                )
    parts.append(f"<h2>Per class</h2>{_table(m.get('per_class', []))}")
    if m.get("per_location"):
        parts.append(f"<h2>Per location</h2>{_table(m['per_location'])}")
    for key, title in (
        ("blank_tradeoff", "Blank threshold"),
        ("detection_tradeoff", "Detection threshold"),
    ):
        if m.get(key):
            parts.append(
                f"<h2>{title} trade-off</h2><p class=note>Raise the threshold to keep more animals; "
                "lower it to remove more blanks.</p>" + _table(m[key])
            )
    parts.append("<h2>Skipped files</h2>" + _table([{"path": p, "reason": why} for p, why in r.skipped]))
    parts.append("</body></html>")
    return "\n".join(parts)
