"""``imgcls evaluate``: a model over labelled data, with predict's own inference.

Predictions come from the same batched inference as ``imgcls predict`` (the model's own
preprocessing, bad files skipped and listed), so evaluate's top-1 is the accuracy of predict's
labels on the same images. The steps: the rows to evaluate (:func:`choose_rows`), their true
labels in the model's label order, the probabilities (:func:`collect_probabilities`), the
metrics (:mod:`imgcls.evaluate.metrics`) and the report (:mod:`imgcls.report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.artifacts import run_split_rows
from imgcls.data.table import DataTable
from imgcls.errors import UserError
from imgcls.evaluate.metrics import compute_metrics, group_accuracy


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
    #: the images are the training run's validation split, which also chose the best epoch (and
    #: the temperature and thresholds the model has): the figures are optimistic
    selection_split: bool = False
    thresholds: tuple[float, ...] = ()  # the model's decision thresholds (binary, multi-label)
    report_dir: Path | None = None  # where the report was written
    engine: str = ""  # what computed the probabilities, e.g. "onnxruntime fp32" (Classifier.engine)

    @property
    def skipped_note(self) -> str:
        """'2 skipped (1 left out on purpose: ...)': the command line and the report say it alike."""
        from imgcls.data.table import count_left_out

        chosen = count_left_out(self.skipped)
        why = f" ({chosen} left out on purpose: no detection, rejected in a review, or listed twice)" if chosen else ""
        return f"{len(self.skipped)} skipped{why}"

    @property
    def selection_note(self) -> str:
        """One line saying so, with the command that gives an unbiased figure."""
        chose = ["the best epoch"]
        if self.metrics.get("temperature", 1.0) != 1.0:
            chose.append("the temperature")
        if self.task == "multilabel" or (self.task == "binary" and self.thresholds not in ((), (0.5,))):
            chose.append("the thresholds" if self.task == "multilabel" else "the decision threshold")
        said = chose[0] if len(chose) == 1 else ", ".join(chose[:-1]) + " and " + chose[-1]
        return (
            f"measured on the validation split that also chose {said}, so optimistic; for an unbiased "
            "figure evaluate images the run never saw (a test split, or: "
            f"imgcls evaluate --model {self.model} --data TEST_DATA)"
        )


def _some(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def map_targets(
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
            rows = run_split_rows(table, model_run, split)
        if len(rows) == 0:
            have = ", ".join(available) or "none"
            raise UserError(f"the data has no {split!r} split (splits: {have})")
        return rows, split
    for name in ("test", "val"):
        if name in available:
            return table.rows_in_split(name), name
    if model_run is not None:
        rows = run_split_rows(table, model_run, "val")
        if len(rows):
            return rows, "val"
    return np.arange(len(table)), "all"


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
    decoder: str = "auto",
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(probabilities of the decodable rows, those rows, (path, reason) of the others)."""
    from imgcls.console import Progress

    probs: list[np.ndarray] = []
    ok: list[int] = []
    skipped: list[tuple[str, str]] = []
    batch: list[np.ndarray] = []
    batch_rows: list[int] = []

    def flush() -> None:
        probs.append(clf.probabilities(np.stack(batch), tta=tta))
        ok.extend(batch_rows)
        batch.clear()
        batch_rows.clear()

    with Progress(len(rows), "evaluating") as bar:
        for i, (path, arr, err) in zip(rows, model_inputs(clf, table, rows, workers, decoder), strict=True):
            if arr is None:
                skipped.append((path, err or "unreadable"))
                continue
            batch.append(arr)
            batch_rows.append(int(i))
            if len(batch) >= batch_size:
                bar.update(len(batch))
                flush()
        if batch:
            flush()
    k = len(clf.label_names)
    return (np.concatenate(probs) if probs else np.zeros((0, k))), np.array(ok, dtype=np.int64), skipped


def model_inputs(clf: Any, table: DataTable, rows: np.ndarray, workers: int | None, decoder: str = "auto") -> Any:
    """(path, uint8 model input or None, error or None) for each row, in order: images held in
    memory (IDX), detection crops, or files decoded in worker processes (and on the model's GPU:
    ``decoder``, :mod:`imgcls.predict.decoders`)."""
    from PIL import Image

    from imgcls.data.preprocess import eval_array
    from imgcls.predict import decode_crop, decode_stream
    from imgcls.runtime import physical_cores

    pre = clf.preprocess
    n_workers = physical_cores() if workers is None else workers
    if table.pixels is not None:
        px = table.pixels
        return ((table.paths[i], eval_array(Image.fromarray(px[i]).convert("RGB"), pre), None) for i in rows)
    if table.boxes is not None:  # detection crops
        crops = ((table.paths[i], tuple(table.boxes[i]), table.crop_margin) for i in rows)
        return ((item[0], a, e) for item, a, e in decode_stream(crops, pre, workers=n_workers, fn=decode_crop))
    from imgcls.console import info
    from imgcls.predict.decoders import share_for

    device = share_for(decoder, clf, (table.paths[i] for i in rows), workers=n_workers, say=info)
    return decode_stream((table.paths[i] for i in rows), pre, workers=n_workers, device=device)


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
    backend: str = "torch",
    tta: bool | None = None,
    decoder: str = "auto",
    detections: str | Path | None = None,
    det_threshold: float | None = None,
    det_categories: str = "animal",
    crop_margin: float | None = None,
    corrections: str | Path | None = None,
    default_out: bool = False,
) -> EvalResult:
    """Evaluate a model directory (or .onnx) on labelled data; with ``out``, write the report
    there (with ``default_out`` and no ``out``: to :func:`default_report_dir`), checked before
    any image is read. With ``detections`` (MegaDetector results): on the detection crops, as
    the model was trained, and the detector's animal-recall / blank-removal trade-off.
    ``corrections``: see :func:`_corrections_of`. ``backend`` ``auto``: the engine
    :func:`imgcls.predict.choose.engine` picks, predict's own; else as ``Classifier.load``."""
    from imgcls.io import check_writable
    from imgcls.predict import Classifier

    out = check_writable(out, folder=True) if out is not None else None
    clf = Classifier.load(model, device=device, precision=precision, backend="torch" if backend == "auto" else backend)
    sel = _select(clf.info, model, data, split, image_root, corrections)
    if out is None and default_out:
        out = check_writable(default_report_dir(model, sel.data, clf.info.provenance.get("data"), sel.split),
                             folder=True)  # fmt: skip
    table, rows, extra = sel.table, sel.rows, dict[str, Any]()
    if detections is not None:  # the rows become the crops of the chosen images
        table, rows, extra = _detection_crops(table, rows, clf.info, detections, image_root, det_threshold,
                                              det_categories, crop_margin)  # fmt: skip
    skipped = list(table.skipped if sel.split == "all" or detections else [])
    if sel.corrections is not None:
        table, rows, skipped = _corrected(table, rows, sel.corrections, skipped)
    keep, targets, unknown = map_targets(table, clf.info.label_names, rows)
    if backend == "auto":
        clf = _on_engine(clf, model, device, precision, len(keep))
    probs, ok, bad = collect_probabilities(clf, table, keep, batch_size=batch_size, workers=workers, tta=tta,
                                           decoder=decoder)  # fmt: skip
    position = {int(r): j for j, r in enumerate(keep)}
    targets = targets[[position[int(r)] for r in ok]]
    skipped, info = skipped + unknown + bad, clf.info
    result = EvalResult(
        thumbnail=Thumbnails(table, ok), task=info.task, label_names=info.label_names,
        paths=[table.paths[int(i)] for i in ok], targets=targets, probs=probs,
        metrics={**all_metrics(info, table, probs, targets, ok, skipped), **extra}, skipped=skipped,
        groups=_groups(table, ok), split=sel.split, data=str(sel.data), model=str(model), run_dir=sel.run,
        selection_split=sel.split == "val" and any(_same_data(sel.data, s) for s in info.trained_on),
        thresholds=tuple(info.thresholds), engine=clf.engine,
    )  # fmt: skip
    return _with_report(result, out)


@dataclass
class _Selection:
    table: DataTable
    rows: np.ndarray
    split: str
    data: str | Path
    run: Path | None
    corrections: str | Path | None


def _select(
    info: Any, model: str | Path, data: str | Path | None, split: str | None, image_root: str | Path | None,
    corrections: str | Path | None,
) -> _Selection:  # fmt: skip
    """The data (as given, else the model's own), its rows for ``split`` and the corrections."""
    from imgcls.artifacts import run_folder
    from imgcls.data.sources import load_sources

    run = run_folder(model, info)
    corrections = _corrections_of(run, data, corrections)
    specs = [data] if data else _data_of(info)
    data = specs[0]
    table = load_sources([str(s) for s in specs], multilabel=True if info.task == "multilabel" else None,
                         image_root=image_root)  # fmt: skip
    rows, split_name = choose_rows(table, split, run)
    return _Selection(table, rows, split_name, data, run, corrections)


def _on_engine(clf: Any, model: str | Path, device: str, precision: str, images: int) -> Any:
    """``clf`` on the engine :func:`imgcls.predict.choose.engine` picks for ``images`` inputs
    (predict's rule, so evaluate's figures are predict's answers)."""
    from imgcls.console import info
    from imgcls.predict import Classifier
    from imgcls.predict.choose import engine

    if Path(model).suffix.lower() == ".onnx" or precision == "int8":
        return clf  # nothing to choose: the file's own graph, the int8 graph
    backend, precision = engine(model, precision=precision, device=device, images=images, say=info)
    return Classifier.load(model, device=device, precision=precision, backend=backend)


def _corrections_of(run: Path | None, data: str | Path | None, given: str | Path | None) -> str | Path | None:
    """The review's ``corrections.csv`` to apply (relabelled images take the new label, rejected
    ones are skipped): as given; else the run's own when it is evaluated on its own data."""
    if given is None and data is None and run is not None and (run / "corrections.csv").is_file():
        return run / "corrections.csv"  # the labels the run was trained with
    return given


def _corrected(
    table: DataTable, rows: np.ndarray, corrections: str | Path, skipped: list[tuple[str, str]]
) -> tuple[DataTable, np.ndarray, list[tuple[str, str]]]:
    """The chosen rows with a review's decisions applied, and the skips with the ones it left out."""
    from imgcls.console import info
    from imgcls.data.corrections import apply_corrections

    if not Path(corrections).is_file():
        raise UserError(f"{corrections}: no such corrections file")
    chosen = table.subset(rows)
    before = len(chosen.skipped)
    fixed, applied = apply_corrections(chosen, corrections)
    info(f"corrections: {applied.describe()} ({corrections})")
    return fixed, np.arange(len(fixed)), skipped + list(fixed.skipped[before:])


def _with_report(result: EvalResult, out: str | Path | None) -> EvalResult:
    if out is not None:
        from imgcls.report.writer import write_report

        write_report(result, Path(out))
        result.report_dir = Path(out)
    return result


def _data_of(info: Any) -> list[str]:
    """The model's training data specs (one, or every ``--data`` it was trained with)."""
    specs = info.trained_on
    if not specs:
        raise UserError("--data is required: the model does not record its training data")
    for spec in specs:
        if not Path(spec).exists():
            raise UserError(f"the model's training data {spec} is no longer there: give the images to evaluate with "
                            "--data")  # fmt: skip
    return specs


def _groups(table: DataTable, ok: np.ndarray) -> dict[str, list[str]]:
    return {k: [table.columns[k][int(i)] for i in ok] for k in ("location",) if k in table.columns}


def all_metrics(
    info: Any, table: DataTable, probs: np.ndarray, targets: np.ndarray, ok: np.ndarray, skipped: list
) -> dict[str, Any]:
    """The task's metrics, the counts, the temperature, the blank trade-off (a model with a
    blank class) and the accuracy per location (data with locations)."""
    from imgcls.data.table import count_left_out
    from imgcls.decisions import blank_index, blank_tradeoff

    names = info.label_names
    metrics = compute_metrics(info.task, probs, targets, names, positive=info.positive_index,
                              thresholds=info.thresholds)  # fmt: skip
    metrics["num_images"] = len(ok)
    metrics["num_skipped"] = len(skipped)  # skipped.csv's rows, those left out on purpose included
    metrics["num_left_out"] = count_left_out(skipped)
    if info.task == "multilabel":
        return metrics
    metrics["temperature"] = info.temperature
    blank = blank_index(names)
    if blank is not None and len(probs):
        metrics["blank_tradeoff"] = blank_tradeoff(probs, targets, blank)
    groups = _groups(table, ok)
    if "location" in groups:
        correct = info.make_task().predict(probs) == targets  # the model's own decisions
        metrics["per_location"] = group_accuracy(correct, groups["location"])
    return metrics


@dataclass
class Thumbnails:
    """Image ``j`` of the evaluated ones as a picture for the report: what the model saw (the
    detection crop of a crop, the image held in memory)."""

    table: DataTable
    ok: np.ndarray

    def __call__(self, j: int) -> Any:
        from PIL import Image

        from imgcls.data.image import read_view

        t, i = self.table, int(self.ok[j])
        if t.pixels is not None:
            return Image.fromarray(t.pixels[i]).convert("RGB")
        box = None if t.boxes is None or np.isnan(t.boxes[i]).any() else t.boxes[i]  # what the model saw
        return read_view(t.paths[i], box, margin=t.crop_margin, need=160)


def default_report_dir(model: str | Path, data: str | Path, trained_on: str | None, split: str) -> Path:
    """Where ``imgcls evaluate`` writes its report without ``--out``: beside the model evaluated,
    in the folder holding its model directory (``RUN/eval-test``; ``RUN/eval-photos-test`` for
    other data than the run's; a copied run is its own, whatever run the model's config names),
    else in the current folder when that one cannot be written."""
    import os

    from imgcls.artifacts import model_home

    name = f"eval-{split}" if _same_data(data, trained_on) else f"eval-{Path(str(data)).stem or 'data'}-{split}"
    home, prefix = model_home(model)
    name = f"{prefix}-{name}" if prefix else name
    if not os.access(home, os.W_OK):
        name = f"{home.name}-{name}"
        home = Path.cwd()
    return home / name
