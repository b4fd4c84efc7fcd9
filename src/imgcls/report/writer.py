"""Writes an evaluation's files: ``metrics.json``, ``per_class.csv``, ``predictions.csv``,
``skipped.csv``, PNG plots and one self-contained ``report.html``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgcls.artifacts import read_history
from imgcls.errors import UserError
from imgcls.io import atomic_write_text
from imgcls.report import plots


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    return v


def _csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    from imgcls.io import atomic_write_csv

    atomic_write_csv(path, header, rows)


def predictions_rows(r: Any) -> list[list[Any]]:
    names = r.label_names
    out = []
    for i, path in enumerate(r.paths):
        p = r.probs[i]
        if r.task == "multilabel":
            true = ";".join(n for k, n in enumerate(names) if r.targets[i, k])
            th = r.metrics["per_class"]
            pred = ";".join(n for k, n in enumerate(names) if p[k] >= th[k]["threshold"])
            out.append([path, true, pred, f"{p.max():.6f}"])
        else:
            k = int(np.argmax(p)) if r.task == "multiclass" else _binary_pred(r, p)
            out.append(
                [
                    path,
                    names[int(r.targets[i])],
                    names[k],
                    f"{p[k]:.6f}",
                    f"{p[int(r.targets[i])]:.6f}",
                ]
            )
    return out


def _binary_pred(r: Any, p: np.ndarray) -> int:
    pos = r.label_names.index(r.metrics["positive_class"])
    return pos if p[pos] >= r.metrics["threshold"] else 1 - pos


def mistakes(r: Any, limit: int = 12) -> list[dict[str, Any]]:
    """The most confident mistakes, each with its thumbnail beside a Grad-CAM overlay of the
    wrongly predicted class where the model can be explained (see :func:`explained`)."""
    if r.task == "multilabel" or r.thumbnail is None:
        return []
    preds = np.array([row[2] for row in predictions_rows(r)])
    truth = np.array([r.label_names[int(t)] for t in r.targets])
    wrong = np.flatnonzero(preds != truth)
    conf = np.array([r.probs[i].max() for i in wrong])
    items = []
    for i in wrong[np.argsort(-conf)][:limit]:
        try:
            img = r.thumbnail(int(i))
        except Exception:
            continue
        items.append({"image": img, "true": truth[i], "pred": preds[i], "prob": float(r.probs[i].max()),
                      "path": r.paths[i]})  # fmt: skip
    overlays = explained(r.model, [it["image"] for it in items], [str(it["pred"]) for it in items])
    for it, heat in zip(items, overlays or [None] * len(items), strict=True):
        it["image"].thumbnail((192, 192))
        if heat is not None:
            both = Image.new("RGB", (2 * heat.width, heat.height), "white")
            both.paste(it["image"].resize((heat.width, heat.height)), (0, 0))
            both.paste(heat, (heat.width, 0))
            it["image"] = both
    return items


def explained(model: str, images: list[Any], labels: list[str]) -> list[Any] | None:
    """Grad-CAM overlays of ``labels`` over ``images`` (as the model would see them), or None
    where the model cannot be explained (an ONNX file, no captum, no feature map). Gradients need
    PyTorch, so the maps come from the float32 network whatever engine gave the probabilities;
    they show where it finds ``labels``, the evaluated engine's decisions (the report says so)."""
    if not images:
        return None
    try:
        from imgcls.data.preprocess import eval_array
        from imgcls.explain import Explainer, overlay
        from imgcls.predict import Classifier

        clf = Classifier.load(model, backend="torch", precision="fp32")
        explainer = Explainer(clf)
        pixels = np.stack([eval_array(img.convert("RGB"), clf.preprocess) for img in images])
        targets = np.array([[clf.label_names.index(label)] for label in labels])
        maps = explainer.maps(pixels, targets)
    except (UserError, ImportError, ValueError):
        return None
    return [overlay(px, heat[0], layer=explainer.layer_name) for px, heat in zip(pixels, maps, strict=True)]


def write_report(r: Any, out: Path) -> Path:
    from imgcls.report.html import render_html

    out.mkdir(parents=True, exist_ok=True)
    m = r.metrics
    atomic_write_text(
        out / "metrics.json",
        json.dumps(
            _jsonable({"task": r.task, "split": r.split, "data": r.data, "model": r.model, "engine": r.engine, **m}),
            indent=2,
        )
        + "\n",
    )
    cols = list(m["per_class"][0].keys()) if m.get("per_class") else []
    _csv(out / "per_class.csv", cols, [[row[c] for c in cols] for row in m.get("per_class", [])])
    head = ["path", "true", "predicted", "probability"] + ([] if r.task == "multilabel" else ["probability_of_true"])
    _csv(out / "predictions.csv", head, predictions_rows(r))
    _csv(out / "skipped.csv", ["path", "reason"], [list(s) for s in r.skipped])
    images: dict[str, Path] = {}
    if "confusion_matrix" in m:
        images["confusion_matrix"] = plots.plot_confusion(
            m["confusion_matrix"], r.label_names, out / "confusion_matrix.png"
        )
    if "reliability" in m:
        images["reliability"] = plots.plot_reliability(m["reliability"], m["ece"], out / "reliability.png")
    if r.task == "binary" and not math.isnan(m.get("roc_auc", float("nan"))):
        pos = r.label_names.index(m["positive_class"])
        images["roc_pr"] = plots.plot_roc_pr(
            r.targets == pos, r.probs[:, pos], out / "roc_pr.png", positive=m["positive_class"],
            threshold=m.get("threshold"),
        )  # fmt: skip
    if m.get("blank_tradeoff"):
        images["blank_tradeoff"] = plots.plot_tradeoff(
            m["blank_tradeoff"], out / "blank_tradeoff.png",
            title="Blank threshold: animal recall vs blanks removed", knob="threshold on p(blank)",
        )  # fmt: skip
    if m.get("detection_tradeoff"):
        images["detection_tradeoff"] = plots.plot_tradeoff(
            m["detection_tradeoff"], out / "detection_tradeoff.png",
            title="Detector threshold: animal recall vs blanks removed", knob="detection confidence",
        )  # fmt: skip
    wrong = mistakes(r)
    if wrong:
        images["mistakes"] = plots.plot_mistakes(wrong, out / "mistakes.png")
    history = read_history(r.run_dir) if r.run_dir is not None else []
    if history:
        images["curves"] = plots.plot_curves(history, out / "curves.png")
    atomic_write_text(out / "report.html", render_html(r, images))
    return out
