"""``imgcls evaluate``: metrics of a model over a labelled dataset.

Predictions come from the same batched inference as ``imgcls predict`` (the model's own
preprocessing, bad files skipped and listed), so evaluate's top-1 is the accuracy of predict's
labels on the same images. The metrics:

- multi-class: top-1, top-5, balanced accuracy, per-class precision / recall / F1 / support,
  macro and weighted F1, the confusion matrix, and the probabilistic view: mean negative
  log-likelihood (= cross-entropy), the log-likelihood of the whole set, expected calibration
  error (15 equal-width bins of the top-1 confidence);
- binary: accuracy, precision, recall and F1 at the saved threshold, ROC-AUC, average precision;
- multi-label: per-label and mean average precision, micro / macro F1 at the saved thresholds,
  subset accuracy, Hamming loss.

scikit-learn computes the classification metrics, torchmetrics the calibration error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls import probability as P
from imgcls.data.table import DataTable
from imgcls.errors import UserError

ECE_BINS = 15


# -------------------------------------------------------------------------------------- metrics
def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-1 confidence: sum over equal-width bins of |accuracy - confidence| weighted
    by the bin's share of the images (Guo et al. 2017), via torchmetrics."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    if len(confidence) == 0:
        return float("nan")
    value = binary_calibration_error(
        torch.as_tensor(confidence, dtype=torch.float64),
        torch.as_tensor(correct.astype(np.int64)),
        n_bins=bins,
        norm="l1",
    )
    return float(value)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per bin: its range, the images in it, their mean confidence and accuracy."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        out.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": int(m.sum()),
                "confidence": float(confidence[m].mean()) if m.any() else float("nan"),
                "accuracy": float(correct[m].mean()) if m.any() else float("nan"),
            }
        )
    return out


def per_class_table(y: np.ndarray, pred: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return [
        {
            "class": n,
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, n in enumerate(names)
    ]


def multiclass_metrics(probs: np.ndarray, y: np.ndarray, names: list[str]) -> dict[str, Any]:
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

    pred = P.decide(probs, "multiclass")
    k = probs.shape[1]
    order = np.argsort(-probs, axis=1)
    conf = probs.max(axis=1)
    correct = pred == y
    labels = list(range(k))
    return {
        "top1": float(correct.mean()),
        "top5": float((order[:, : min(5, k)] == y[:, None]).any(axis=1).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "nll": float(P.nll(y, probs, kind="categorical")),
        "log_likelihood": float(P.log_likelihood(y, probs, kind="categorical")),
        "ece": expected_calibration_error(conf, correct),
        "reliability": reliability_bins(conf, correct),
        "per_class": per_class_table(y, pred, names),
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def binary_metrics(
    probs: np.ndarray, y: np.ndarray, names: list[str], positive: int, threshold: float
) -> dict[str, Any]:
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    out = multiclass_metrics(probs, y, names)
    p_pos = probs[:, positive]
    is_pos = y == positive
    pred = P.decide(probs, "binary", thresholds=[threshold], positive=positive)
    pred_pos = pred == positive
    p, r, f, _ = precision_recall_fscore_support(is_pos, pred_pos, average="binary", zero_division=0)
    out.update(
        top1=float((pred == y).mean()),
        accuracy=float((pred == y).mean()),
        precision=float(p),
        recall=float(r),
        f1=float(f),
        threshold=threshold,
        positive_class=names[positive],
        per_class=per_class_table(y, pred, names),
        balanced_accuracy=float(balanced_accuracy_score(y, pred)),
        macro_f1=float(f1_score(y, pred, labels=[0, 1], average="macro", zero_division=0)),
        weighted_f1=float(f1_score(y, pred, labels=[0, 1], average="weighted", zero_division=0)),
    )
    from sklearn.metrics import confusion_matrix

    out["confusion_matrix"] = confusion_matrix(y, pred, labels=[0, 1]).tolist()
    both = is_pos.any() and (~is_pos).any()
    out["roc_auc"] = float(roc_auc_score(is_pos, p_pos)) if both else float("nan")
    out["average_precision"] = float(average_precision_score(is_pos, p_pos)) if is_pos.any() else float("nan")
    out.pop("top5", None)
    return out


def multilabel_metrics(probs: np.ndarray, y: np.ndarray, names: list[str], thresholds: list[float]) -> dict[str, Any]:
    from sklearn.metrics import (
        average_precision_score,
        f1_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    th = np.asarray(thresholds or [0.5] * len(names))
    pred = P.decide(probs, "multilabel", thresholds=th)
    ap = [
        float(average_precision_score(y[:, k], probs[:, k])) if y[:, k].any() else float("nan")
        for k in range(len(names))
    ]
    p, r, f, s = precision_recall_fscore_support(y, pred, zero_division=0)
    valid = [a for a in ap if not math.isnan(a)]
    return {
        "mAP": float(np.mean(valid)) if valid else float("nan"),
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "subset_accuracy": float((pred == y).all(axis=1).mean()),
        "hamming_loss": float(hamming_loss(y, pred)),
        "nll": float(P.nll(y.astype(np.float64), probs.astype(np.float64), kind="bernoulli")),
        "per_class": [
            {
                "class": n,
                "average_precision": ap[k],
                "precision": float(p[k]),
                "recall": float(r[k]),
                "f1": float(f[k]),
                "support": int(s[k]),
                "threshold": float(th[k]),
            }
            for k, n in enumerate(names)
        ],
    }


def group_accuracy(correct: np.ndarray, groups: list[str]) -> list[dict[str, Any]]:
    """Accuracy per group (e.g. per camera-trap location)."""
    out = []
    g = np.asarray(groups)
    for name in sorted(set(groups)):
        m = g == name
        out.append({"group": name, "images": int(m.sum()), "accuracy": float(correct[m].mean())})
    return out


# ------------------------------------------------------------------------------------ running
@dataclass
class EvalResult:
    task: str
    label_names: list[str]
    paths: list[str]
    targets: np.ndarray  # class indices (N,) or multi-hot (N, K), in the model's label order
    probs: np.ndarray
    metrics: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    thumbnail: Any = None  # index -> PIL image, for the gallery of mistakes
    split: str = ""
    data: str = ""
    model: str = ""
    run_dir: Path | None = None
    #: the images are the training run's validation split, which also chose the best epoch, the
    #: temperature and the thresholds: the figures are optimistic
    selection_split: bool = False
    report_dir: Path | None = None  # where the report was written

    @property
    def selection_note(self) -> str:
        """One line saying so, with the command that gives an unbiased figure."""
        return (
            "measured on the validation split that also chose the best epoch, the temperature and the "
            "thresholds, so optimistic; for an unbiased figure evaluate images the run never saw "
            f"(a test split, or: imgcls evaluate --model {self.model} --data TEST_DATA)"
        )


def _some(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _map_targets(
    table: DataTable, names: list[str], rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Table targets -> the model's label indices; rows with a class the model lacks are skipped."""
    index = {n: i for i, n in enumerate(names)}
    keep, skipped = [], []
    for i in rows:
        labels = table.label_names(int(i))
        unknown = [n for n in labels if n not in index]
        if unknown:
            skipped.append((table.paths[i], f"class {unknown[0]!r} is unknown to the model"))
        else:
            keep.append(int(i))
    if not keep and len(rows):
        data_names = sorted({n for i in rows for n in table.label_names(int(i))})
        raise UserError(
            f"none of the data's classes ({_some(data_names)}) is one of the model's ({_some(names)}): "
            "is this the data the model was trained for?"
        )
    keep_arr = np.array(keep, dtype=np.int64)
    if table.multilabel:
        t = np.zeros((len(keep), len(names)), dtype=np.uint8)
        for r, i in enumerate(keep):
            for n in table.label_names(i):
                t[r, index[n]] = 1
    else:
        t = np.array([index[table.label_names(i)[0]] for i in keep], dtype=np.int64)
    return keep_arr, t, skipped


def choose_rows(table: DataTable, split: str | None, model_run: Path | None) -> tuple[np.ndarray, str]:
    """Rows to evaluate: the named split; by default the source's test split, else its
    validation split, else the training run's validation rows (when the data is the run's),
    else every row."""
    available = table.available_splits()
    if split:
        if split not in ("train", "val", "test", "all"):
            raise UserError(f"--split must be train, val, test or all, not {split!r}")
        if split == "all":
            return np.arange(len(table)), "all"
        rows = table.rows_in_split(split)
        if len(rows) == 0 and model_run is not None:
            rows = _run_split_rows(table, model_run, split)
        if len(rows) == 0:
            have = ", ".join(available) or "none"
            raise UserError(f"the data has no {split!r} split (splits: {have})")
        return rows, split
    for name in ("test", "val"):
        if name in available:
            return table.rows_in_split(name), name
    if model_run is not None:
        rows = _run_split_rows(table, model_run, "val")
        if len(rows):
            return rows, "val"
    return np.arange(len(table)), "all"


def _run_split_rows(table: DataTable, run: Path, split: str) -> np.ndarray:
    import csv

    listing = run / "splits.csv"
    if not listing.is_file():
        return np.zeros(0, dtype=np.int64)
    with open(listing, newline="", encoding="utf-8") as f:
        listed = {r["path"]: r["split"] for r in csv.DictReader(f)}
    # Images the run skipped (e.g. blanks without a detection) are not listed; when the run
    # split by a group column (location, sequence), they belong to their group's side.
    for column in ("location", "sequence"):
        values = table.columns.get(column)
        if values is None:
            continue
        sides: dict[str, set[str]] = {}
        for p, g in zip(table.paths, values, strict=True):
            if p in listed and g:
                sides.setdefault(str(g), set()).add(listed[p])
        if sides and all(len(v) == 1 for v in sides.values()):
            for p, g in zip(table.paths, values, strict=True):
                if p not in listed and str(g) in sides:
                    listed[p] = next(iter(sides[str(g)]))
            break
    return np.array([i for i, p in enumerate(table.paths) if listed.get(p) == split], dtype=np.int64)


def _same_data(a: str | Path | None, b: str | Path | None) -> bool:
    if not a or not b:
        return False
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def collect_probabilities(
    clf: Any,
    table: DataTable,
    rows: np.ndarray,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    tta: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(probabilities of the decodable rows, those rows, (path, reason) of the others)."""
    from PIL import Image

    from imgcls.console import Progress
    from imgcls.data.preprocess import eval_array
    from imgcls.predict import decode_stream
    from imgcls.runtime import physical_cores

    pre = clf.preprocess
    probs: list[np.ndarray] = []
    ok: list[int] = []
    skipped: list[tuple[str, str]] = []
    if table.pixels is not None:
        px = table.pixels

        def items() -> Any:
            for i in rows:
                img = Image.fromarray(px[i]).convert("RGB")
                yield table.paths[i], eval_array(img, pre), None

        stream = items()
    elif table.boxes is not None:  # detection crops
        from imgcls.predict import decode_crop

        crops = ((table.paths[i], tuple(table.boxes[i]), table.crop_margin) for i in rows)
        n_workers = physical_cores() if workers is None else workers
        stream = ((item[0], a, e) for item, a, e in decode_stream(crops, pre, workers=n_workers, fn=decode_crop))
    else:
        stream = decode_stream(
            (table.paths[i] for i in rows),
            pre,
            workers=physical_cores() if workers is None else workers,
        )
    batch: list[np.ndarray] = []
    batch_rows: list[int] = []
    with Progress(len(rows), "evaluating") as bar:
        for i, (path, arr, err) in zip(rows, stream, strict=True):
            if arr is None:
                skipped.append((path, err or "unreadable"))
            else:
                batch.append(arr)
                batch_rows.append(int(i))
            if len(batch) >= batch_size:
                probs.append(clf.probabilities(np.stack(batch), tta=tta))
                ok += batch_rows
                bar.update(len(batch))
                batch, batch_rows = [], []
        if batch:
            probs.append(clf.probabilities(np.stack(batch), tta=tta))
            ok += batch_rows
    k = len(clf.label_names)
    return (
        (np.concatenate(probs) if probs else np.zeros((0, k))),
        np.array(ok, dtype=np.int64),
        skipped,
    )


def compute_metrics(
    task: str,
    probs: np.ndarray,
    targets: np.ndarray,
    names: list[str],
    *,
    positive: int = 1,
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    if len(probs) == 0:
        raise UserError("no image could be evaluated: every one was skipped (unreadable or unusable)")
    if task == "multilabel":
        return multilabel_metrics(probs, targets, names, thresholds or [])
    if task == "binary":
        return binary_metrics(probs, targets, names, positive, (thresholds or [0.5])[0])
    return multiclass_metrics(probs, targets, names)


def _detection_crops(
    table: DataTable,
    rows: np.ndarray,
    info: Any,
    detections: str | Path,
    image_root: str | Path | None,
    det_threshold: float | None,
    det_categories: str,
    crop_margin: float | None,
) -> tuple[DataTable, np.ndarray, dict[str, Any]]:
    from imgcls.data.sources.detections import (
        crop_settings,
        crop_table,
        detection_tradeoff,
        parse_categories,
        read_detections,
    )

    threshold, margin = crop_settings(info.provenance, det_threshold, crop_margin)
    categories = parse_categories(det_categories)
    dets = read_detections(detections, image_root)
    images = table.subset(rows)
    extra = {
        "detection_threshold": threshold,
        "detection_tradeoff": detection_tradeoff(images, dets, categories),
    }
    cropped = crop_table(images, dets, threshold=threshold, categories=categories, margin=margin)
    return cropped, np.arange(len(cropped)), extra


def evaluate(
    model: str | Path,
    data: str | Path | None = None,
    *,
    split: str | None = None,
    out: str | Path | None = None,
    image_root: str | Path | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    tta: bool | None = None,
    detections: str | Path | None = None,
    det_threshold: float | None = None,
    det_categories: str = "animal",
    crop_margin: float | None = None,
    default_out: bool = False,
) -> EvalResult:
    """Evaluate a model directory (or .onnx) on labelled data; with ``out``, write the report
    there (with ``default_out`` and no ``out``: to :func:`default_report_dir`). Where the report
    goes is checked before any image is read.

    With ``detections`` (MegaDetector results) the model is evaluated on the detection crops,
    as it was trained, and the report adds the detector's animal-recall / blank-removal
    trade-off over detection thresholds."""
    from imgcls.data.sources import load_source
    from imgcls.io import check_writable
    from imgcls.predict import Classifier

    if out is not None:
        check_writable(out, folder=True)
    clf = Classifier.load(model, device=device, precision=precision)
    info = clf.info
    run_value = info.provenance.get("run")
    run = Path(run_value) if run_value else None
    if data is None:
        data = info.provenance.get("data")
        if not data:
            raise UserError("--data is required: the model does not record its training data")
    table = load_source(data, multilabel=True if info.task == "multilabel" else None, image_root=image_root)
    rows, split_name = choose_rows(table, split, run)
    if out is None and default_out:
        out = check_writable(default_report_dir(model, run, data, info.provenance.get("data"), split_name), folder=True)
    extra: dict[str, Any] = {}
    if detections is not None:
        table, rows, extra = _detection_crops(
            table, rows, info, detections, image_root, det_threshold, det_categories, crop_margin
        )
    keep, targets, skipped = _map_targets(table, info.label_names, rows)
    skipped = list(table.skipped if split_name == "all" or detections else []) + skipped
    probs, ok, bad = collect_probabilities(clf, table, keep, batch_size=batch_size, workers=workers, tta=tta)
    skipped += bad
    position = {int(r): j for j, r in enumerate(keep)}
    targets = targets[[position[int(r)] for r in ok]]
    names = info.label_names
    metrics = compute_metrics(
        info.task, probs, targets, names, positive=info.positive_index, thresholds=info.thresholds
    )
    metrics["num_images"] = len(ok)
    metrics["num_skipped"] = len(skipped)
    if info.task != "multilabel":
        metrics["temperature"] = info.temperature
    metrics.update(extra)
    from imgcls.decisions import blank_index, blank_tradeoff

    blank = blank_index(names)
    if blank is not None and info.task != "multilabel" and len(probs):
        metrics["blank_tradeoff"] = blank_tradeoff(probs, targets, blank)
    groups = {k: [table.columns[k][int(i)] for i in ok] for k in ("location",) if k in table.columns}
    if info.task != "multilabel" and "location" in groups:
        correct = info.make_task().predict(probs) == targets  # the model's own decisions
        metrics["per_location"] = group_accuracy(correct, groups["location"])

    def thumbnail(j: int) -> Any:
        from PIL import Image

        from imgcls.data.image import read_image

        i = int(ok[j])
        if table.pixels is not None:
            return Image.fromarray(table.pixels[i]).convert("RGB")
        img = read_image(table.paths[i], min_size=160)
        if table.boxes is not None and not np.isnan(table.boxes[i]).any():  # show what the model saw
            from imgcls.data.image import crop_square

            x, y, w, h = (float(v) for v in table.boxes[i])
            img = crop_square(img, (x, y, w, h), table.crop_margin)
        return img

    result = EvalResult(
        thumbnail=thumbnail,
        task=info.task,
        label_names=names,
        paths=[table.paths[int(i)] for i in ok],
        targets=targets,
        probs=probs,
        metrics=metrics,
        skipped=skipped,
        groups=groups,
        split=split_name,
        data=str(data),
        model=str(model),
        run_dir=run,
        selection_split=split_name == "val" and _same_data(data, info.provenance.get("data")),
    )
    if out is not None:
        from imgcls.report.writer import write_report

        write_report(result, Path(out))
        result.report_dir = Path(out)
    return result


def default_report_dir(
    model: str | Path, run: Path | None, data: str | Path, trained_on: str | None, split: str
) -> Path:
    """Where ``imgcls evaluate`` writes its report without ``--out``: beside the model, in its
    training run's folder (``RUN/eval-test``; ``RUN/eval-photos-test`` for other data than the
    run's), else in the current folder when that one cannot be written."""
    import os

    name = f"eval-{split}" if _same_data(data, trained_on) else f"eval-{Path(str(data)).stem or 'data'}-{split}"
    home = run if run is not None and run.is_dir() else Path(model).resolve().parent
    if not os.access(home, os.W_OK):
        home = Path.cwd()
        name = f"{Path(str(model)).resolve().parent.name}-{name}"
    return home / name
