"""The :class:`Classifier`: a trained model with its labels, task and preprocessing
(``imgcls.load(MODEL)``), on PyTorch (bf16 autocast where the CPU or GPU is fast at it) or ONNX
Runtime (an ``.onnx`` file, or a model directory's current ``model.onnx``: it starts without
importing torch). Logits become probabilities and decisions through :mod:`imgcls.probability`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgcls import probability as P
from imgcls.artifacts import ModelInfo, read_info
from imgcls.config import PreprocessConfig
from imgcls.data.image import ImageError, read_image
from imgcls.data.preprocess import eval_array, normalize_np, square_size
from imgcls.decisions import DecisionRule
from imgcls.errors import UserError


class TorchBackend:
    def __init__(self, path: Path, device: str, precision: str) -> None:
        import torch

        from imgcls.artifacts import load_model
        from imgcls.runtime import make_runtime, set_threads

        set_threads(None)
        model, _ = load_model(path)
        self.runtime = make_runtime(model, device=device, precision=precision)
        self.model = self.runtime.prepare(model).eval()
        self.torch = torch

    def logits(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode(), self.runtime.autocast():
            out = self.model(self.runtime.inputs(torch.from_numpy(x)))
        return out.float().cpu().numpy()


class OnnxBackend:
    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise UserError("running .onnx models needs onnxruntime: pip install 'imgcls[onnx]'") from e
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=ort.get_available_providers())
        except Exception as e:
            raise UserError(f"{path}: cannot load the ONNX model ({str(e).splitlines()[0]})") from None
        self.path = Path(path)
        self.input = self.session.get_inputs()[0].name
        self.model = self.session
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input: x.astype(np.float32)})[0], dtype=np.float32)


def onnx_info(backend: OnnxBackend, path: Path) -> ModelInfo:
    """The model directory's config, which ``imgcls export`` stores in the ONNX metadata."""
    import json

    config = backend.metadata.get("imgcls_config")
    if config is None:
        raise UserError(f"{path}: an ONNX model without imgcls metadata (export it with 'imgcls export')")
    from imgcls.artifacts import info_from_config

    return info_from_config(json.loads(config), path)


def exported_onnx(model_dir: Path) -> Path | None:
    """``model_dir/model.onnx`` when it was exported from the directory's current model (its
    metadata holds the same config.json), else None."""
    from imgcls.artifacts import current_export

    return current_export(model_dir, "model.onnx")


def _current_session(model_dir: Path, name: str) -> OnnxBackend | None:
    """ONNX Runtime on ``model_dir/name`` when that export is current (the config it carries, and
    so its labels, are the directory's; read from the session's own metadata: the file is parsed
    once), else None."""
    from imgcls.artifacts import export_matches

    f = model_dir / name
    if not f.is_file():
        return None
    backend = OnnxBackend(f)
    return backend if export_matches(model_dir, backend.metadata) else None


def gpu_runs(device: str) -> bool:
    """Whether PyTorch would run on a GPU; without an NVIDIA driver, known without importing torch."""
    if device == "cpu" or not (Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia*"))):
        return device.startswith("cuda")
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available()) or device.startswith("cuda")


def torch_engine(device: str, precision: str) -> str:
    """The name outputs record for PyTorch at ``device`` and ``precision`` (``auto`` resolved as
    :mod:`imgcls.runtime` will: bf16 where the CPU has bf16 units), e.g. ``torch fp32``,
    ``torch bf16 (cuda)``; on the CPU without importing torch."""
    if not gpu_runs(device):
        from imgcls.runtime import cpu_has_fast_bf16

        return f"torch {precision if precision != 'auto' else ('bf16' if cpu_has_fast_bf16() else 'fp32')}"
    from imgcls.runtime import resolve_device, resolve_precision

    where = resolve_device(device)
    return f"torch {resolve_precision(precision, where)} ({where.type})"


def onnx_engine(backend: OnnxBackend) -> str:
    """``onnxruntime int8`` for a graph ``imgcls export --quantize int8`` wrote, else ``onnxruntime fp32``."""
    return "onnxruntime int8" if "imgcls_int8" in backend.metadata else "onnxruntime fp32"


# --------------------------------------------------------------------------------- classifier
@dataclass
class Classifier:
    """A trained model with its labels, task and preprocessing: ``imgcls.load(MODEL)``."""

    info: ModelInfo
    _backend: Any  # a backend, or a function that makes one on first use
    label_names: list[str] = field(default_factory=list)
    decision: DecisionRule | None = None  # multi-class decision rule (see imgcls.decisions)
    _factory: Any = field(default=None, repr=False)
    #: what computes the probabilities, as outputs name it: ``onnxruntime fp32``, ``torch bf16``...
    engine: str = ""

    @classmethod
    def load(
        cls, model: str | Path, *, device: str = "auto", precision: str = "auto", backend: str = "torch"
    ) -> Classifier:
        """``backend``: ``torch`` (bf16 autocast where fast: the best throughput), ``onnx`` (ONNX
        Runtime on the directory's exported ``model.onnx``: starts in a fraction of the time,
        without importing torch) or ``auto`` (ONNX when the directory has a current export).
        ``precision="int8"``: the directory's ``model.int8.onnx`` on ONNX Runtime (see
        :mod:`imgcls.quantize`)."""
        path = Path(model)
        if path.suffix.lower() == ".onnx":
            if not path.is_file():
                raise UserError(f"model not found: {model}")
            onnx_backend = OnnxBackend(path)
            return cls(
                info=(i := onnx_info(onnx_backend, path)),
                _backend=onnx_backend,
                label_names=list(i.label_names),
                engine=onnx_engine(onnx_backend),
            )
        info = read_info(path)
        if precision == "int8":
            return cls._int8(path, info, device)
        if backend in ("auto", "onnx") and device in ("auto", "cpu"):
            try:
                session = _current_session(path, "model.onnx")
                if session is not None:
                    return cls(info=info, _backend=session, label_names=list(info.label_names),
                               engine=onnx_engine(session))  # fmt: skip
            except UserError:
                pass  # not usable here (no onnxruntime): PyTorch does the work
            if backend == "onnx":
                raise UserError(f"{path}: no current model.onnx (run 'imgcls export --model {path}')")
        # PyTorch loads on first use: decoding (in worker processes) starts while torch imports
        return cls(
            info=info, _backend=lambda: TorchBackend(path, device, precision), label_names=list(info.label_names),
            engine=torch_engine(device, precision),
        )  # fmt: skip

    @classmethod
    def _int8(cls, path: Path, info: ModelInfo, device: str) -> Classifier:
        if device not in ("auto", "cpu"):
            raise UserError(f"--precision int8 runs on the CPU (ONNX Runtime), not on {device}")
        backend = _current_session(path, "model.int8.onnx")
        if backend is None:
            raise UserError(f"{path}: no current model.int8.onnx (run 'imgcls export --model {path} --quantize int8')")
        return cls(info=info, _backend=backend, label_names=list(info.label_names), engine="onnxruntime int8")

    def __post_init__(self) -> None:
        if callable(self._backend) and not hasattr(self._backend, "logits"):
            self._factory, self._backend = self._backend, None

    @property
    def backend(self) -> Any:
        """The engine that computes logits (created on first use)."""
        if self._backend is None:
            self._backend = self._factory()
        return self._backend

    def describe(self) -> dict[str, Any]:
        """What an output file records about the model."""
        i = self.info
        return {
            "path": str(i.path),
            "architecture": i.arch,
            "task": i.task,
            "label_names": list(i.label_names),
            "positive_class": i.positive_class,
            "thresholds": list(i.thresholds),
            "engine": self.engine,
        }

    @property
    def model(self) -> Any:
        """The ``torch.nn.Module`` (or ONNX Runtime session)."""
        return self.backend.model

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.info.preprocess

    @property
    def transform(self) -> Any:
        """PIL image -> normalised float tensor (3, H, W): the model's own preprocessing."""
        from imgcls.data.transforms import eval_transform

        return eval_transform(self.preprocess)

    @property
    def task(self) -> str:
        return self.info.task

    def probabilities(self, pixels: np.ndarray, *, tta: bool | None = None) -> np.ndarray:
        """uint8 (B, H, W, 3) batch after the eval transform -> (B, K) class probabilities.
        ``tta``: average the logits with the mirror image's; None uses the model's own setting."""
        if tta is None:
            tta = self.info.tta == "flip"
        x = normalize_np(pixels, self.preprocess)
        # float64: a sharp (calibrated) softmax would round small probabilities to exactly 0 in
        # float32, tying them and making top-k orders arbitrary
        logits = np.asarray(self.backend.logits(x), dtype=np.float64)
        if tta:  # the mean logit of the image and its mirror (the temperature was fitted to it)
            logits = (logits + self.backend.logits(np.ascontiguousarray(x[..., ::-1]))) / 2
        return self._probs(logits)

    def _probs(self, logits: np.ndarray) -> np.ndarray:
        i = self.info  # the temperature was fitted at the end of training
        return P.class_probabilities(logits, i.task, temperature=i.temperature, positive=i.positive_index)

    def predict(
        self,
        inputs: str | Path | Image.Image | Sequence[str | Path | Image.Image],
        *,
        top_k: int = 5,
        threshold: float | None = None,
        batch_size: int = 32,
        tta: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Rows (path, label, score, top_k, error) for file paths and/or PIL images; ``top_k``
        maps the best labels to their probabilities."""
        items = [inputs] if isinstance(inputs, (str, Path, Image.Image)) else list(inputs)
        rows: list[dict[str, Any]] = []
        for start in range(0, len(items), batch_size):
            decoded: list[tuple[str, np.ndarray | None, str | None]] = []
            for item in items[start : start + batch_size]:
                name = str(item) if not isinstance(item, Image.Image) else "<image>"
                try:
                    img = (
                        item.convert("RGB")
                        if isinstance(item, Image.Image)
                        else read_image(item, min_size=square_size(self.preprocess))
                    )
                    decoded.append((name, eval_array(img, self.preprocess), None))
                except ImageError as e:
                    decoded.append((name, None, str(e)))
            rows.extend(self.rows_for(decoded, top_k=top_k, threshold=threshold, tta=tta))
        from imgcls.outputs import clean_row

        return [clean_row(r) for r in rows]

    def rows_for(
        self,
        decoded: list[tuple[str, np.ndarray | None, str | None]],
        *,
        top_k: int = 5,
        threshold: float | None = None,
        tta: bool | None = None,
    ) -> list[dict[str, Any]]:
        arrays = [a for _, a, _ in decoded if a is not None]
        probs = self.probabilities(np.stack(arrays), tta=tta) if arrays else None
        out: list[dict[str, Any]] = []
        k = 0
        for path, arr, err in decoded:
            if arr is None:
                out.append({"path": path, "label": None, "score": None, "top_k": None, "error": err})
                continue
            assert probs is not None
            out.append(self.row(path, probs[k], top_k=top_k, threshold=threshold))
            k += 1
        return out

    def row(self, path: str, p: np.ndarray, *, top_k: int = 5, threshold: float | None = None) -> dict[str, Any]:
        names = self.label_names
        order = np.argsort(-p, kind="stable")
        top = {names[i]: round(float(p[i]), 6) for i in order[: max(1, top_k)]}
        task = self.info.task
        if task in ("multilabel", "binary"):
            n = 1 if task == "binary" else len(names)
            cuts = [threshold] * n if threshold is not None else (self.info.thresholds or [0.5] * n)
            on = P.decide(p[None], task, thresholds=cuts, positive=self.info.positive_index)[0]
            if task == "binary":
                label, score = names[int(on)], float(p[int(on)])
            else:
                chosen = [i for i in order if on[i]]  # most probable first
                label = ";".join(names[i] for i in chosen)
                score = float(p[chosen[0]]) if chosen else float(p[order[0]])
        elif self.decision is not None or threshold is not None:
            rule = self.decision or DecisionRule(names, threshold=threshold)
            label, score = rule.decide(p)
        else:
            best = int(order[0])
            label, score = names[best], float(p[best])
        return {
            "path": path,
            "label": label,
            "score": score,
            "top_k": top,
            "error": None,
            "_probs": p,
        }
