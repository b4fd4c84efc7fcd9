"""Prediction: the :class:`Classifier` and streaming, resumable batched inference.

- Inputs are any mix of files, folders (walked recursively), glob patterns and ``.txt`` /
  ``.csv`` lists, enumerated lazily: a million inputs never become a million-element list.
- Decoding (with JPEG draft mode) runs in worker processes, a bounded number of chunks ahead,
  while the model computes; results are written in input order as they come.
- A bad file becomes a row with its ``error``; the run goes on.
- Restarted with the same command, a killed run skips the inputs already in the output and
  writes every input exactly once.
- Under ``torchrun`` every process takes every ``world``-th input and writes its own part file;
  the last one to finish merges the parts into the one output, in input order.

A model directory runs on PyTorch (bf16 autocast where the CPU or GPU is fast at it); an
``.onnx`` file runs on ONNX Runtime, which starts without importing torch at all.
"""

from __future__ import annotations

import glob
import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from imgcls import probability as P
from imgcls.artifacts import ModelInfo, read_info
from imgcls.config import PreprocessConfig
from imgcls.data.image import MAX_PIXELS, ImageError, read_image
from imgcls.data.preprocess import eval_array, normalize_np, square_size
from imgcls.decisions import DecisionRule
from imgcls.errors import UserError

if TYPE_CHECKING:
    from imgcls.outputs import Writer

LIST_SUFFIXES = (".txt", ".csv")
_GLOB_CHARS = "*?["


# ------------------------------------------------------------------------------------- inputs
_IMAGE_SUFFIXES: frozenset[str] = frozenset()


def image_suffixes() -> frozenset[str]:
    """File extensions of the formats Pillow can open (``.jpg``, ``.png``, ``.tif``, ``.webp``...)."""
    global _IMAGE_SUFFIXES
    if not _IMAGE_SUFFIXES:
        Image.init()
        _IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
    return _IMAGE_SUFFIXES


def not_an_image_name(name: str) -> str | None:
    """The extension of a file that is no image by its name (``.json``, ``.txt``, ``.xml``,
    ``.db``, videos), else None. Files without an extension, or with an image format's, are
    tried by their content."""
    suffix = os.path.splitext(name)[1].lower()
    return suffix if suffix and suffix not in image_suffixes() else None


def _walk(folder: Path, left_out: Counter[str] | None = None) -> Iterator[str]:
    """The image files below ``folder``; sidecar and other non-image files (by extension) are
    left out, and counted by extension in ``left_out``."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            other = not_an_image_name(f)
            if other is not None:
                if left_out is not None:
                    left_out[other] += 1
                continue
            yield os.path.join(dirpath, f)


def _read_list(path: Path) -> Iterator[str]:
    base = path.parent
    if path.suffix.lower() == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            lower = [h.strip().lower() for h in header]
            col = lower.index("path") if "path" in lower else 0
            if "path" not in lower and header:  # no header: the first line is a path too
                yield str(base / header[0].strip())
            for row in reader:
                if row and row[col].strip():
                    yield str(base / row[col].strip())
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                yield str(base / line)


def iter_inputs(inputs: Sequence[str], left_out: Counter[str] | None = None) -> Iterator[str]:
    """Every image path the inputs name, in a stable order (a lazy generator). Folders are
    walked (non-image files left out, counted in ``left_out``); a file named explicitly, or in a
    list, is always tried (a missing one becomes a row with its error)."""
    for item in inputs:
        p = Path(item)
        if any(c in item for c in _GLOB_CHARS) and not p.exists():
            for match in sorted(glob.iglob(item, recursive=True)):
                yield from _walk(Path(match), left_out) if os.path.isdir(match) else (match,)
        elif p.is_dir():
            yield from _walk(p, left_out)
        elif p.suffix.lower() in LIST_SUFFIXES and p.is_file():
            yield from _read_list(p)
        else:
            yield item


def check_inputs(inputs: Sequence[str]) -> None:
    """A named input that does not exist (or a pattern that matches nothing) is a mistake to say
    at once, not a row."""
    for item in inputs:
        if any(c in item for c in _GLOB_CHARS) and not Path(item).exists():
            if next(glob.iglob(item, recursive=True), None) is None:
                raise UserError(f"{item}: the pattern matches no file")
        elif not Path(item).exists():
            raise UserError(f"{item}: no such file or folder")


def count_inputs(inputs: Sequence[str]) -> int:
    return sum(1 for _ in iter_inputs(inputs))


# ----------------------------------------------------------------------------------- decoding
def decode_for_model(path: str, cfg: PreprocessConfig, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """One file -> the uint8 (size, size, 3) model input before normalisation."""
    return eval_array(read_image(path, min_size=square_size(cfg), max_pixels=max_pixels), cfg)


def decode_crops(
    item: tuple[str, list[tuple[float, float, float, float]], float],
    cfg: PreprocessConfig,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """(path, normalised boxes, margin) -> uint8 (len(boxes), size, size, 3): the model inputs
    of the square crops, from one decode at the scale the smallest box needs."""
    from imgcls.data.image import crop_draft_size, crop_square

    path, boxes, margin = item
    smallest = min(boxes, key=lambda b: min(b[2], b[3]))
    img = read_image(path, min_size=crop_draft_size(smallest, square_size(cfg)), max_pixels=max_pixels)
    return np.stack([eval_array(crop_square(img, b, margin), cfg) for b in boxes])


def decode_crop(
    item: tuple[str, tuple[float, float, float, float], float],
    cfg: PreprocessConfig,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """(path, normalised box, margin) -> the model input of that square crop."""
    path, box, margin = item
    return decode_crops((path, [box], margin), cfg, max_pixels)[0]


def _decode_chunk(
    items: list[Any], cfg: PreprocessConfig, max_pixels: int | None, fn: Any = None
) -> list[tuple[Any, str | None]]:
    decode = fn or decode_for_model
    out: list[tuple[Any, str | None]] = []
    for p in items:
        try:
            out.append((decode(p, cfg, max_pixels), None))
        except ImageError as e:
            out.append((None, str(e)))
        except Exception as e:  # a decoder bug must not stop a million-image run
            out.append((None, f"cannot decode ({type(e).__name__}: {e})"))
    return out


class _Inline(Executor):
    """Decoding in the calling process (``workers=0``)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        f: Future = Future()
        f.set_result(fn(*args, **kwargs))
        return f


def die_with_parent(parent: int) -> None:
    """Worker-process initializer: end when the parent ends, ``kill -9`` included (a forked
    worker holds the pipes' other ends itself, so it would otherwise wait for work for ever):
    Linux's parent-death signal, and a watchdog thread elsewhere."""
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import contextlib
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent ended before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="imgcls-parent-watch", daemon=True).start()


def _executor(workers: int) -> Executor:
    if workers <= 0:
        return _Inline()
    import multiprocessing as mp

    # fork: workers start in milliseconds and share the already imported modules
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=mp.get_context(method), initializer=die_with_parent, initargs=(os.getpid(),)
    )


def decode_stream(
    paths: Iterable[Any],
    cfg: PreprocessConfig,
    *,
    workers: int = 2,
    max_pixels: int | None = MAX_PIXELS,
    chunk: int = 8,
    fn: Any = None,
) -> Iterator[tuple[Any, Any, str | None]]:
    """(item, pixels or None, error or None) in input order; at most ``4 * workers`` chunks are
    in flight (32 at the start, while the model loads), so memory stays flat however long
    ``paths`` is. ``fn(item, cfg, max_pixels)``
    decodes one item (a module-level function, as it runs in worker processes); by default an
    item is a path and the result its model input."""
    ahead = max(2, 4 * workers)
    window = max(ahead, 32) if workers > 0 else ahead  # a deeper first window covers model loading
    pending: deque[tuple[list[str], Future]] = deque()
    it = iter(paths)
    with _executor(workers) as pool:
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                batch = [p for _, p in zip(range(chunk), it, strict=False)]
                if not batch:
                    exhausted = True
                    break
                pending.append((batch, pool.submit(_decode_chunk, batch, cfg, max_pixels, fn)))
            if not pending:
                return
            window = ahead
            batch, fut = pending.popleft()
            for p, (arr, err) in zip(batch, fut.result(), strict=True):
                yield p, arr, err


# ----------------------------------------------------------------------------------- backends
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
    """``model_dir/model.onnx`` when it was exported from the directory's current weights (its
    metadata holds the same config.json), else None."""
    onnx_file = model_dir / "model.onnx"
    if not onnx_file.is_file() or onnx_file.stat().st_mtime < (model_dir / "model.safetensors").stat().st_mtime:
        return None
    return onnx_file


# --------------------------------------------------------------------------------- classifier
@dataclass
class Classifier:
    """A trained model with its labels, task and preprocessing: ``imgcls.load(MODEL)``."""

    info: ModelInfo
    _backend: Any  # a backend, or a function that makes one on first use
    label_names: list[str] = field(default_factory=list)
    decision: DecisionRule | None = None  # multi-class decision rule (see imgcls.decisions)
    _factory: Any = field(default=None, repr=False)

    @classmethod
    def load(
        cls, model: str | Path, *, device: str = "auto", precision: str = "auto", backend: str = "torch"
    ) -> Classifier:
        """``backend``: ``torch`` (bf16 autocast where fast: the best throughput), ``onnx`` (ONNX
        Runtime on the directory's exported ``model.onnx``: starts in a fraction of the time,
        without importing torch) or ``auto`` (ONNX when the directory has a current export)."""
        path = Path(model)
        if path.suffix.lower() == ".onnx":
            if not path.is_file():
                raise UserError(f"model not found: {model}")
            onnx_backend = OnnxBackend(path)
            return cls(
                info=(i := onnx_info(onnx_backend, path)), _backend=onnx_backend, label_names=list(i.label_names)
            )
        info = read_info(path)
        if backend in ("auto", "onnx") and device in ("auto", "cpu"):
            exported = exported_onnx(path)
            if exported is not None:
                try:
                    onnx_backend = OnnxBackend(exported)
                    if onnx_info(onnx_backend, exported).label_names == info.label_names:
                        return cls(info=info, _backend=onnx_backend, label_names=list(info.label_names))
                except UserError:
                    pass  # not usable here (no onnxruntime): PyTorch does the work
            if backend == "onnx":
                raise UserError(f"{path}: no current model.onnx (run 'imgcls export --model {path}')")
        # PyTorch loads on first use: decoding (in worker processes) starts while torch imports
        return cls(
            info=info, _backend=lambda: TorchBackend(path, device, precision), label_names=list(info.label_names)
        )

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
                out.append({"path": path, "label": "", "score": None, "top_k": None, "error": err})
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


# ---------------------------------------------------------------------------------- streaming
@dataclass
class PredictSummary:
    total: int
    written: int
    skipped_done: int
    errors: int
    seconds: float
    output: Path | None
    left_out: dict[str, int] = field(default_factory=dict)  # non-image files in folders, by extension

    def left_out_note(self) -> str:
        """'left out 3 files that are not images (.json 1, .txt 2)', or ''."""
        n = sum(self.left_out.values())
        if not n:
            return ""
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.left_out.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"left out {n} file{'s' if n != 1 else ''} that {'are' if n != 1 else 'is'} not images ({kinds})"

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def _shard(it: Iterator[str], rank: int, world: int) -> Iterator[str]:
    for i, p in enumerate(it):
        if i % world == rank:
            yield p


def predict_files(
    clf: Classifier,
    inputs: Sequence[str],
    writer: Writer,
    *,
    top_k: int = 5,
    threshold: float | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    tta: bool | None = None,
    resume: bool = True,
    rank: int = 0,
    world: int = 1,
    show_progress: bool = True,
    max_pixels: int | None = MAX_PIXELS,
) -> PredictSummary:
    """Predict every input into ``writer`` (see the module docstring)."""
    from imgcls.console import Progress
    from imgcls.runtime import physical_cores

    if workers is None:  # a handful of images decode faster than worker processes start
        import itertools

        few = sum(1 for _ in itertools.islice(iter_inputs(inputs), 32)) < 32
        workers = 0 if few else physical_cores()
    done = writer.open(resume)
    total = sum(1 for _ in _shard(iter_inputs(inputs), rank, world)) if show_progress else 0
    left_out: Counter[str] = Counter()
    todo = (p for p in _shard(iter_inputs(inputs, left_out), rank, world) if p not in done)
    t0 = time.perf_counter()
    written = errors = 0
    batch: list[tuple[str, np.ndarray | None, str | None]] = []
    try:
        with Progress(total, "predicting", enabled=show_progress) as bar:
            bar.done = len(done)
            for item in decode_stream(todo, clf.preprocess, workers=workers, max_pixels=max_pixels):
                batch.append(item)
                if len(batch) >= batch_size:
                    written, errors = _flush(clf, writer, batch, bar, written, errors, top_k, threshold, tta)
            if batch:
                written, errors = _flush(clf, writer, batch, bar, written, errors, top_k, threshold, tta)
    finally:
        writer.close()
    return PredictSummary(total, written, len(done), errors, time.perf_counter() - t0, writer.path, dict(left_out))


def _flush(
    clf: Classifier,
    writer: Writer,
    batch: list,
    bar: Any,
    written: int,
    errors: int,
    top_k: int,
    threshold: float | None,
    tta: bool | None,
) -> tuple[int, int]:
    rows = clf.rows_for(batch, top_k=top_k, threshold=threshold, tta=tta)
    writer.write(rows)
    writer.flush()
    bad = sum(1 for r in rows if r["error"])
    bar.update(len(rows))
    batch.clear()
    return written + len(rows), errors + bad


# ------------------------------------------------------------------------ several processes
def _part_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f".{out.name}.part-{rank}-of-{world}{out.suffix}")


def run_settings(clf: Classifier, fmt: str, options: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What decides an output's rows: the model (a fingerprint of its files), the format and
    the options that change a row. A resumed output must have been written with the same."""
    import dataclasses

    from imgcls.outputs import model_fingerprint

    keys = ("top_k", "threshold", "tta")
    return {
        "model": model_fingerprint(clf.info.path),  # the model's files, wherever they are
        "format": fmt,
        "decision": dataclasses.asdict(clf.decision) if clf.decision is not None else None,
        **{k: options.get(k) for k in keys},
        **extra,
    }


def run_predict(
    clf: Classifier,
    inputs: Sequence[str],
    *,
    out: str | Path | None,
    fmt: str | None = None,
    resume: bool = True,
    writer_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> PredictSummary:
    """:func:`predict_files` to ``out``; under ``torchrun`` each process writes its part and
    rank 0 merges the parts, in input order, once every process has finished."""
    from imgcls.outputs import guard_resume, writer_for

    writer_options = {"model": clf.describe(), **(writer_options or {})}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    writer = writer_for(out, fmt, writer_options)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    guard_resume(out, run_settings(clf, writer.name, kwargs), resume, write=rank0, writer=writer)
    if world <= 1:
        summary = predict_files(clf, inputs, writer, resume=resume, **kwargs)
        if hasattr(writer, "finalize"):
            writer.finalize()
        return summary
    if out is None:
        raise UserError("several processes need --out FILE (each writes a part, merged at the end)")
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    final = Path(out)
    part = writer_for(_part_path(final, rank, world), writer.name, writer_options)
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    try:
        kwargs["show_progress"] = kwargs.get("show_progress", True) and rank == 0
        summary = predict_files(clf, inputs, part, resume=resume, rank=rank, world=world, **kwargs)
        dist.barrier()
        if rank == 0:
            parts = [_part_path(final, r, world) for r in range(world)]
            writer.merge(parts)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return summary
