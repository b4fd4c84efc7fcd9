"""INT8 models: ONNX Runtime static quantisation of an exported model, and its measured cost.

``imgcls export --quantize int8`` (and ``imgcls train --export-int8``) turn a model directory's
float32 ``model.onnx`` into ``model.int8.onnx``: QDQ format, per-channel int8 weights, uint8
activations whose ranges are calibrated on a few hundred training images drawn class by class
(the rows the run trained on, as its ``splits.csv`` lists them: never the validation rows that
then measure the cost; decoded with the model's evaluation transform), each range the
99.99th percentile of what the calibration images produce, and the last dense layer (the
classifier) kept in float. ONNX Runtime's ``quantize_static`` does the work (the well-kept
library; nothing here is hand-written quantisation). Measured on a ResNet-18 over 1,000
12-MP photographs, top-1 agreement with float32: min/max ranges 98.9%, percentile ranges 99.8%,
percentile ranges and a float classifier 99.9%, at the same speed (BENCHMARKS.md). On CPUs
without VNNI (int8 dot products) weights use 7 bits (``reduce_range``), as ONNX Runtime advises,
so that the AVX2 kernels' 16-bit intermediate sums cannot saturate.

The cost is measured before anything is written: both graphs predict the run's validation split
(the same decoded images, the model's own procedure: test-time flip, temperature), and the
top-1 (mAP for multi-label models) of each, their difference in points and the share of images
whose decision agrees (by the model's own rule: its binary threshold, its multi-label thresholds;
:func:`imgcls.export.decision_agreement`) go to ``model.int8.json`` and into the int8 file's
metadata. Above
``max_drop`` points nothing is written. ``predict``, ``evaluate`` and ``serve`` run the int8
model with ``--precision int8`` (or given the ``.int8.onnx`` file itself).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import UserError

MAX_DROP = 1.0  # points of top-1 the int8 model may lose on the validation split
CALIBRATION_IMAGES = 300


@dataclass
class QuantReport:
    path: str
    validation_images: int
    metric: str  # top1, or mAP for multi-label models
    fp32: float
    int8: float
    drop_points: float
    agreement: float  # share of validation images with the same decision
    calibration_images: int
    reduce_range: bool
    cpu: str


def quantize_int8(
    model_dir: str | Path,
    onnx_file: str | Path,
    *,
    max_drop: float = MAX_DROP,
    calibration_images: int = CALIBRATION_IMAGES,
    workers: int | None = None,
) -> QuantReport:
    """Quantise ``onnx_file`` (exported from ``model_dir``) to int8 beside it, measured on the
    run's validation split; refuses, writing nothing, when top-1 drops by more than ``max_drop``
    points."""
    from imgcls.artifacts import int8_path
    from imgcls.export import set_metadata
    from imgcls.io import atomic_write_text, atomic_write_with, check_writable
    from imgcls.predict import Classifier
    from imgcls.runtime import cpu_features, cpu_tier

    src, fp32 = Path(model_dir), Path(onnx_file)
    target = check_writable(int8_path(fp32))
    table, train_rows, val_rows = _run_rows(src)
    ref = Classifier.load(fp32)  # the float graph: its preprocessing, metadata and probabilities
    reduce_range = not cpu_features()["vnni"]
    made: list[QuantReport] = []

    def make(tmp: str) -> None:  # into a temporary sibling: a refused or failed quantisation leaves nothing
        calib = _calibration_batches(ref, table, _by_class(table, train_rows, calibration_images), workers)
        quantize_graph(fp32, Path(tmp), calib, reduce_range)
        report = QuantReport(path=str(target), calibration_images=sum(len(b) for b in calib),
                             reduce_range=reduce_range, cpu=cpu_tier(),
                             **_measure(ref, Path(tmp), table, val_rows, workers))  # fmt: skip
        if report.drop_points > max_drop:
            raise UserError(
                f"int8 quantisation refused: validation {report.metric} {report.fp32:.4f} -> {report.int8:.4f} "
                f"({report.drop_points:.2f} points, over --max-accuracy-drop {max_drop:g}); nothing written"
            )
        set_metadata(Path(tmp), {**ref.backend.metadata, "imgcls_int8": json.dumps(_record(report))})
        made.append(report)

    atomic_write_with(target, make, suffix=".tmp.onnx")  # Classifier.load knows an .onnx by its suffix
    if target.parent == src:
        atomic_write_text(src / "model.int8.json", json.dumps(_record(made[0]), indent=2) + "\n")
    return made[0]


def _run_rows(model_dir: Path) -> tuple[Any, np.ndarray, np.ndarray]:
    """The run's rows as training saw them (detection crops, corrections), and the rows it
    trained on and held out for validation, as its ``splits.csv`` lists them: a run carves its
    validation rows out of the data's own ``train`` rows, and those measure the int8 cost, so
    they must not calibrate it."""
    from imgcls.artifacts import read_info, run_folder, run_split_rows
    from imgcls.config import RunConfig, from_dict, load_yaml
    from imgcls.data.dataset import load_table
    from imgcls.data.sources.detections import detection_crops

    run = run_folder(model_dir, read_info(model_dir))
    if run is None or not (run / "config.yaml").is_file() or not (run / "splits.csv").is_file():
        raise UserError(
            f"{model_dir}: int8 quantisation needs the model's run folder (its training images calibrate "
            "the int8 ranges, its validation split measures the cost), and it is not there"
        )
    cfg = from_dict(RunConfig, load_yaml(run / "config.yaml"), where=str(run / "config.yaml"))
    table = load_table(cfg, detection_crops)
    return table, run_split_rows(table, run, "train"), run_split_rows(table, run, "val")


def _by_class(table: Any, rows: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` of ``rows``, drawn class by class in turn (seeded), so that every class's
    images shape the activation ranges."""
    rng = np.random.default_rng(0)
    groups: dict[str, list[int]] = {}
    for i in rng.permutation(rows):
        groups.setdefault((table.label_names(int(i)) or [""])[0], []).append(int(i))
    picked: list[int] = []
    while len(picked) < n and any(groups.values()):
        for g in groups.values():
            if g and len(picked) < n:
                picked.append(g.pop())
    return np.array(sorted(picked), dtype=np.int64)


def _inputs(clf: Any, table: Any, rows: np.ndarray, workers: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """(row, uint8 model input) of each decodable row."""
    from imgcls.evaluate.run import model_inputs

    for i, (_, arr, _) in zip(rows, model_inputs(clf, table, rows, workers), strict=True):
        if arr is not None:
            yield int(i), arr


def _calibration_batches(ref: Any, table: Any, rows: np.ndarray, workers: int | None) -> list[np.ndarray]:
    from imgcls.data.preprocess import normalize_np

    pixels = [arr for _, arr in _inputs(ref, table, rows, workers)]
    if not pixels:
        raise UserError("int8 quantisation: none of the run's training images could be read for calibration")
    size = min(16, len(pixels))  # batches of one size: ONNX Runtime's histograms stack them
    pixels = pixels[: len(pixels) // size * size]
    return [normalize_np(np.stack(pixels[k : k + size]), ref.preprocess).astype(np.float32)
            for k in range(0, len(pixels), size)]  # fmt: skip


def quantize_graph(fp32: Path, out: Path, batches: list[np.ndarray], reduce_range: bool) -> None:
    """Write the int8 graph of the float graph ``fp32`` to ``out``: ONNX Runtime's static QDQ
    quantisation, per-channel weights, calibrated on ``batches`` (normalised float32 inputs) with
    the choices of the module docstring. Neither measures nor refuses: :func:`quantize_int8`
    does (``benchmarks/bench_int8.py`` calls this to time the graph alone)."""
    import logging

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.it, None)
            return None if b is None else {"input": b}

    prepared = out.with_name(out.name + ".pre.onnx")
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantiser logs every pre-processing hint
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # and prints the calibration's progress
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            dense = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in ("Gemm", "MatMul")]
            quantize_static(
                str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                calibrate_method=CalibrationMethod.Percentile, extra_options={"CalibPercentile": 99.99},
                nodes_to_exclude=dense[-1:],  # the classifier layer stays float: near ties keep their order
            )  # fmt: skip
    finally:
        logging.getLogger().setLevel(quiet)
        prepared.unlink(missing_ok=True)


def _measure(ref: Any, int8: Path, table: Any, rows: np.ndarray, workers: int | None) -> dict[str, Any]:
    """The float and int8 graphs on the same decoded validation images: the task's metric of
    each and how often their decisions agree."""
    import itertools

    from imgcls.evaluate.metrics import compute_metrics
    from imgcls.evaluate.run import map_targets
    from imgcls.export import decision_agreement
    from imgcls.predict import Classifier

    quantised = Classifier.load(int8)
    keep, targets, _ = map_targets(table, ref.label_names, rows)
    position = {int(r): j for j, r in enumerate(keep)}
    got: list[int] = []
    pa: list[np.ndarray] = []
    pb: list[np.ndarray] = []
    decoded = _inputs(ref, table, keep, workers)
    while chunk := list(itertools.islice(decoded, 64)):
        x = np.stack([arr for _, arr in chunk])
        got += [position[i] for i, _ in chunk]
        pa.append(ref.probabilities(x))
        pb.append(quantised.probabilities(x))
    if not got:
        raise UserError("int8 quantisation: none of the run's validation images could be read")
    p32, p8, t = np.concatenate(pa), np.concatenate(pb), targets[got]
    info = ref.info  # the model's own decisions: its positive class and thresholds
    m32, m8 = (compute_metrics(info.task, p, t, ref.label_names, positive=info.positive_index,
                               thresholds=info.thresholds) for p in (p32, p8))  # fmt: skip
    metric = "mAP" if info.task == "multilabel" else "top1"
    agree = decision_agreement(info, p32, p8)
    v32, v8 = float(m32[metric]), float(m8[metric])
    if not (np.isfinite(v32) and np.isfinite(v8)):  # e.g. mAP of a split too small to hold every label
        metric, v32, v8 = "agreement", 1.0, agree
    return {
        "validation_images": len(got), "metric": metric, "fp32": round(v32, 6), "int8": round(v8, 6),
        "drop_points": round(100 * (v32 - v8), 3), "agreement": round(agree, 6),
    }  # fmt: skip


def _record(report: QuantReport) -> dict[str, Any]:
    """The report as the model directory keeps it: the file by its name, not where it was made."""
    return {**asdict(report), "path": Path(report.path).name}
