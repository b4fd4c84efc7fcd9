"""ONNX export and its verification.

The exported graph takes the normalised float32 input ``input`` (batch x 3 x H x W, any batch
size) and returns ``logits``. Its metadata carries everything needed to use it without the model
directory: the whole ``config.json`` (key ``imgcls_config``) plus plain ``label_names``,
``mean``, ``std``, ``input_size``, ``interpolation``, ``crop_pct`` and ``task`` keys for other
tools. Before the file is put in place, ONNX Runtime runs it on real images next to PyTorch (both
in float32) and the largest differences of logits and probabilities are reported; above the
tolerance the export fails and no file is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.artifacts import load_model, read_config
from imgcls.errors import UserError
from imgcls.io import atomic_write_with, check_writable

TOLERANCE = 1e-4  # largest allowed probability difference, ONNX Runtime vs PyTorch


@dataclass
class ExportReport:
    path: Path
    images: int
    max_logit_diff: float
    max_prob_diff: float
    top1_agreement: float


def _verification_images(paths: list[str] | None, model_dir: Path, size: int, limit: int = 8) -> tuple[np.ndarray, str]:
    """uint8 (B, size, size, 3): the given images, else images of the training data named in
    the model's provenance, else synthetic gradients and noise."""
    from imgcls.data.preprocess import eval_array, square_size
    from imgcls.predict import iter_inputs

    cfg = read_config(model_dir)
    from imgcls.artifacts import info_from_config

    pre = info_from_config(cfg, model_dir).preprocess
    candidates: list[str] = list(paths or [])
    source = "given images"
    if not candidates:
        data = (cfg.get("provenance") or {}).get("data")
        if data and Path(data).is_dir():
            candidates = [p for _, p in zip(range(200), iter_inputs([data]), strict=False)]
            source = f"images of {data}"
    arrays = []
    from imgcls.data.image import ImageError, read_image

    for p in candidates:
        try:
            arrays.append(eval_array(read_image(p, min_size=square_size(pre)), pre))
        except ImageError:
            continue
        if len(arrays) >= limit:
            break
    if not arrays:
        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 255, size, dtype=np.float64)
        base = (ramp[None, :, None] + ramp[:, None, None]) / 2
        arrays = [np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8) for _ in range(8)]
        source = "synthetic images"
    return np.stack(arrays), source


def export_onnx(
    model_dir: str | Path,
    out: str | Path | None = None,
    *,
    images: list[str] | None = None,
    opset: int = 18,
    tolerance: float = TOLERANCE,
) -> tuple[ExportReport, str]:
    """Export a model directory to ONNX, verify it, and return the report (and what the
    verification images were)."""
    import onnxruntime as ort  # noqa: F401  (a missing onnxruntime fails before the export work)
    import torch

    src = Path(model_dir)
    config = read_config(src)
    target = check_writable(Path(out) if out else src / "model.onnx")
    model, info = load_model(src)
    pre = info.preprocess
    dummy = torch.zeros(2, 3, pre.input_size[1], pre.input_size[2])
    batch = torch.export.Dim("batch", min=1, max=65536)
    done: list[tuple[ExportReport, str]] = []

    def make(tmp: str) -> None:  # a temporary sibling, renamed when verified: a failed export leaves nothing
        _export_graph(model, dummy, Path(tmp), batch, opset)
        _add_metadata(Path(tmp), config, info, opset)
        pixels, source = _verification_images(images, src, pre.image_size)
        report = verify(model, Path(tmp), info, pixels, target)
        if not report.max_prob_diff <= tolerance:
            raise UserError(
                f"ONNX verification failed: probabilities differ by up to {report.max_prob_diff:.2e} "
                f"(tolerance {tolerance:.0e}) on {len(pixels)} {source}; nothing written"
            )
        done.append((report, source))

    atomic_write_with(target, make, suffix=".tmp.onnx")  # Classifier.load knows an .onnx by its suffix
    return done[0]


def _add_metadata(path: Path, config: dict[str, Any], info: Any, opset: int) -> None:
    """The model directory's config and the preprocessing, in the ONNX file's metadata; refused
    when the file declares another opset than ``opset`` (the torch.export-based exporter writes
    its own when asked for one it cannot)."""
    import onnx

    proto = onnx.load(str(path))
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if written != opset:
        raise UserError(f"--opset {opset}: not available for this model (the exporter wrote opset {written}); "
                        "nothing written")  # fmt: skip
    pre = info.preprocess
    _replace_metadata(proto, {
        "imgcls_config": json.dumps(config),
        "label_names": json.dumps(info.label_names),
        "task": info.task,
        "input_size": json.dumps(list(pre.input_size)),
        "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)),
        "interpolation": pre.interpolation,
        "crop_pct": str(pre.crop_pct),
        "resize_mode": pre.resize_mode,
    })  # fmt: skip
    onnx.save(proto, str(path))


def set_metadata(path: Path, meta: dict[str, str]) -> None:
    """Replace the ONNX file's metadata (key -> text) with ``meta``."""
    import onnx

    proto = onnx.load(str(path))
    _replace_metadata(proto, meta)
    onnx.save(proto, str(path))


def _replace_metadata(proto: Any, meta: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def verify(model: Any, path: Path, info: Any, pixels: np.ndarray, target: Path) -> ExportReport:
    """PyTorch (float32) against ONNX Runtime on the same real inputs: the largest logit and
    probability differences and the top-1 agreement."""
    from imgcls.data.preprocess import normalize_np
    from imgcls.predict import Classifier, OnnxBackend

    reference = Classifier(info=info, _backend=_Fp32Torch(model), label_names=info.label_names)
    candidate = Classifier(info=info, _backend=OnnxBackend(path), label_names=info.label_names)
    x = normalize_np(pixels, info.preprocess)
    logit_diff = float(np.abs(reference.backend.logits(x) - candidate.backend.logits(x)).max())
    p_ref, p_onnx = reference.probabilities(pixels), candidate.probabilities(pixels)
    agree = decision_agreement(info, p_ref, p_onnx)
    return ExportReport(target, len(pixels), logit_diff, float(np.abs(p_ref - p_onnx).max()), agree)


def decision_agreement(info: Any, a: np.ndarray, b: np.ndarray) -> float:
    """The share of images on which two engines' probabilities ``a`` and ``b`` (N, K) give the
    model the same decision, by its own rule (:func:`imgcls.probability.decide`): the arg-max,
    the binary positive class at the model's threshold, every label of a multi-label model at its
    own. The top-1 agreement that export and int8 quantisation report."""
    from imgcls.probability import decide

    da, db = (decide(p, info.task, thresholds=info.thresholds, positive=info.positive_index) for p in (a, b))
    same = da == db
    return float((same.all(axis=1) if same.ndim == 2 else same).mean()) if len(same) else 1.0


def _export_graph(model: Any, dummy: Any, path: Path, batch: Any, opset: int) -> None:
    """The TorchScript-based exporter first (a third of a second for a ResNet-18); the
    torch.export-based one (ten times slower) for the models it cannot trace."""
    import warnings

    import torch

    with _quiet_stdout(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, (dummy,), str(path), input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
                opset_version=opset,
            )  # fmt: skip
            return
        except Exception:
            pass
        torch.onnx.export(
            model, (dummy,), str(path), input_names=["input"], output_names=["logits"],
            dynamic_shapes={"x": {0: batch}}, dynamo=True, opset_version=opset, verbose=False, external_data=False,
        )  # fmt: skip


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Standard output silenced at the file descriptor: the TorchScript exporter's C++ side prints
    a whole graph ('Torch IR graph at exception: ...') to fd 1 when it cannot trace a model,
    which ``contextlib.redirect_stdout`` (Python's ``sys.stdout`` only) does not catch."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no standard output at all: nothing to silence there
        with contextlib.redirect_stdout(io.StringIO()):
            yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


class _Fp32Torch:
    """PyTorch in float32 on the CPU: the reference the ONNX graph must match."""

    def __init__(self, model: object) -> None:
        self.model = model

    def logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).float().numpy()  # type: ignore[operator]
