"""Streaming, resumable batched inference into a writer.

Decoding runs in worker processes while the model computes; results are written in input
order as they come and synced, so a killed run restarted with the same command skips the inputs
already in the output and writes every input exactly once. Under ``torchrun`` every process
takes every ``world``-th input and writes its own part file; rank 0 merges the parts into the
one output, in input order.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from imgcls.data.image import MAX_PIXELS
from imgcls.errors import UserError
from imgcls.predict.classifier import Classifier
from imgcls.predict.decode import decode_one, decode_stream
from imgcls.predict.inputs import iter_inputs

if TYPE_CHECKING:
    from imgcls.outputs import Writer


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
        """'left out 3 files that are not images (.json 1, .txt 2)', or '' (training says it alike)."""
        from imgcls.data.image import not_images_note

        note = not_images_note(self.left_out)
        return f"left out {note}" if note else ""

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def _shard(it: Iterator[str], rank: int, world: int) -> Iterator[str]:
    for i, p in enumerate(it):
        if i % world == rank:
            yield p


class ItemSource:
    """What the runner predicts. ``items`` turns the input paths into work items; ``decode``
    (a module-level function: it runs in worker processes) turns an item into a stack of model
    inputs, uint8 (n, S, S, 3), or None when it has nothing to classify; ``row`` turns an item's
    probabilities (n, K) — or its decoding error — into its output row."""

    decode: ClassVar[Any] = None

    def items(self, paths: Iterator[str]) -> Iterator[Any]:
        return paths

    def row(self, clf: Classifier, item: Any, probs: np.ndarray | None, error: str | None) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class Files(ItemSource):
    """Whole image files: one model input and one row each."""

    top_k: int = 5
    threshold: float | None = None
    decode: ClassVar[Any] = staticmethod(decode_one)

    def row(self, clf: Classifier, path: str, probs: np.ndarray | None, error: str | None) -> dict[str, Any]:
        if probs is None:
            return {"path": path, "label": None, "score": None, "top_k": None, "error": error or "unreadable"}
        return clf.row(path, probs[0], top_k=self.top_k, threshold=self.threshold)


@dataclass
class _Pending:
    """Decoded items waiting for their batch's forward pass."""

    items: list[tuple[Any, np.ndarray | None, str | None]] = field(default_factory=list)
    arrays: int = 0

    def add(self, item: Any, arrays: np.ndarray | None, error: str | None) -> None:
        self.items.append((item, arrays, error))
        self.arrays += 0 if arrays is None else len(arrays)

    def rows(self, clf: Classifier, source: ItemSource, tta: bool | None) -> list[dict[str, Any]]:
        stacks = [a for _, a, _ in self.items if a is not None]
        probs = clf.probabilities(np.concatenate(stacks), tta=tta) if stacks else None
        out, at = [], 0
        for item, arrays, error in self.items:
            mine = None
            if arrays is not None and probs is not None:
                mine, at = probs[at : at + len(arrays)], at + len(arrays)
            out.append(source.row(clf, item, mine, error))
        self.items, self.arrays = [], 0
        return out


def stream(
    clf: Classifier,
    inputs: Sequence[str],
    writer: Writer,
    source: ItemSource,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    tta: bool | None = None,
    resume: bool = True,
    rank: int = 0,
    world: int = 1,
    show_progress: bool = True,
    max_pixels: int | None = MAX_PIXELS,
    decoder: str = "auto",
) -> PredictSummary:
    """Every input through ``source`` into ``writer`` (see the module docstring): the one loop
    behind whole-image and detection-crop prediction. ``decoder``: auto, cpu or cuda
    (:mod:`imgcls.predict.decoders`)."""
    from imgcls.console import Progress
    from imgcls.runtime import physical_cores

    if workers is None:  # a handful of images decode faster than worker processes start
        import itertools

        few = sum(1 for _ in itertools.islice(iter_inputs(inputs), 32)) < 32
        workers = 0 if few else physical_cores()
    done = writer.open(resume)
    total = sum(1 for _ in _shard(iter_inputs(inputs), rank, world)) if show_progress else 0
    left_out: Counter[str] = Counter()
    todo = source.items(p for p in _shard(iter_inputs(inputs, left_out), rank, world) if p not in done)
    t0 = time.perf_counter()
    written = errors = 0
    pending = _Pending()
    try:
        with Progress(total, "predicting", enabled=show_progress) as bar:
            bar.done = len(done)
            device = _device_share(clf, inputs, source, decoder, workers, max_pixels)
            decoded = decode_stream(todo, clf.preprocess, workers=workers, max_pixels=max_pixels, fn=source.decode,
                                    device=device)  # fmt: skip
            for item, arrays, error in decoded:
                pending.add(item, arrays, error)
                if pending.arrays >= batch_size or len(pending.items) >= 4 * batch_size:
                    written, errors = _write(pending.rows(clf, source, tta), writer, bar, written, errors)
            written, errors = _write(pending.rows(clf, source, tta), writer, bar, written, errors)
    finally:
        writer.close()
    return PredictSummary(total, written, len(done), errors, time.perf_counter() - t0, writer.path, dict(left_out))


def _device_share(
    clf: Classifier, inputs: Sequence[str], source: ItemSource, decoder: str, workers: int, max_pixels: int | None
) -> Any:
    """The device decoder's share of whole-file decoding (None: the CPU's workers decode all)."""
    from imgcls.console import info
    from imgcls.predict.decode import WHOLE_FILES
    from imgcls.predict.decoders import share_for

    if source.decode not in WHOLE_FILES:
        return None
    say = info if os.environ.get("RANK", "0") == "0" else None
    return share_for(decoder, clf, iter_inputs(inputs), workers=workers, max_pixels=max_pixels, say=say)


def _write(rows: list[dict[str, Any]], writer: Writer, bar: Any, written: int, errors: int) -> tuple[int, int]:
    if rows:
        writer.write(rows)
        writer.flush()
        bar.update(len(rows))
    return written + len(rows), errors + sum(1 for r in rows if r["error"])


def predict_files(
    clf: Classifier,
    inputs: Sequence[str],
    writer: Writer,
    *,
    top_k: int = 5,
    threshold: float | None = None,
    **kwargs: Any,
) -> PredictSummary:
    """Predict every input file into ``writer``, a row each (see :func:`stream` for the options)."""
    return stream(clf, inputs, writer, Files(top_k, threshold), **kwargs)


# ------------------------------------------------------------------------ several processes
def part_path(out: Path, rank: int, world: int) -> Path:
    """Where process (or ``--shard``) ``rank`` of ``world`` writes its rows, beside ``out``."""
    return out.with_name(f".{out.name}.part-{rank}-of-{world}{out.suffix}")


def run_settings(clf: Classifier, fmt: str, options: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What decides an output's rows: the model (a fingerprint of its files), the engine and
    precision that compute the probabilities, the format and the options that change a row. A
    resumed output must have been written with the same."""
    import dataclasses

    from imgcls.outputs import model_fingerprint

    keys = ("top_k", "threshold", "tta")
    return {
        "model": model_fingerprint(clf.info.path),  # the model's files, wherever they are
        "engine": clf.engine,
        "format": fmt,
        "decision": dataclasses.asdict(clf.decision) if clf.decision is not None else None,
        **{k: options.get(k) for k in keys},
        **extra,
    }


def recorded_engine(out: str | Path | None) -> str | None:
    """The engine an existing output's settings record names (what continuing it keeps), or None."""
    import json

    from imgcls.outputs import resume_record

    if out is None:
        return None
    try:
        record = json.loads(resume_record(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = record.get("engine") if isinstance(record, dict) else None
    return found if isinstance(found, str) else None


def _say_unrecorded_engine(out: str | Path | None, clf: Classifier) -> None:
    """An output begun by an imgcls that did not record the engine continues (the resume guard
    takes the key as new); say which engine writes its rows from here on."""
    import json

    from imgcls.console import info
    from imgcls.outputs import resume_record

    try:
        record = json.loads(resume_record(out).read_text(encoding="utf-8")) if out is not None else None
    except (OSError, ValueError):
        return
    if isinstance(record, dict) and "engine" not in record:
        info(f"{out} was begun by an imgcls that did not record its engine; its rows from here on come from "
             f"{clf.engine} (--overwrite redoes them all with it)")  # fmt: skip


def run_predict(
    clf: Classifier,
    inputs: Sequence[str],
    *,
    out: str | Path | None,
    fmt: str | None = None,
    resume: bool = True,
    writer_options: dict[str, Any] | None = None,
    source: ItemSource | None = None,
    settings: dict[str, Any] | None = None,
    wrap: Any = None,
    finish: Any = None,
    **kwargs: Any,
) -> PredictSummary:
    """Predict ``inputs`` to ``out`` in the format ``fmt``: the writer chosen, the resume guard
    (``settings``: what else shapes a row), the stream through ``source`` (whole files by
    default), and the output finished (``finish(writer)``, else the writer's own ``finalize``).
    ``wrap(writer)`` may wrap the writer (the camera-trap steps annotate rows). Under
    ``torchrun`` each process writes its part and rank 0 merges the parts, in input order (for
    separate jobs instead, see :mod:`imgcls.predict.shards`)."""
    from imgcls.io import launch_rank
    from imgcls.outputs import guard_resume, writer_for

    writer_options = {"model": clf.describe(), **(writer_options or {})}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    writer = writer_for(out, fmt, writer_options)
    if resume and launch_rank() == 0:
        _say_unrecorded_engine(out, clf)
    guard_resume(
        out, run_settings(clf, writer.name, kwargs, **(settings or {})), resume, write=launch_rank() == 0, writer=writer
    )
    top_k, threshold = kwargs.pop("top_k", 5), kwargs.pop("threshold", None)  # they shape the rows: the source's
    source = source or Files(top_k, threshold)
    if world <= 1:
        summary = stream(clf, inputs, wrap(writer) if wrap else writer, source, resume=resume, **kwargs)
        if finish is not None:
            finish(writer)
        elif hasattr(writer, "finalize"):
            writer.finalize()
        return summary
    if out is None:
        raise UserError("several processes need --out FILE (each writes a part, merged at the end)")
    return _run_parts(clf, inputs, Path(out), writer, writer_options, source, resume=resume, world=world, **kwargs)


def _run_parts(
    clf: Classifier,
    inputs: Sequence[str],
    final: Path,
    writer: Writer,
    writer_options: dict[str, Any],
    source: ItemSource,
    *,
    resume: bool,
    world: int,
    **kwargs: Any,
) -> PredictSummary:
    import torch.distributed as dist

    from imgcls.outputs import writer_for
    from imgcls.ranks import hear_refusal

    rank = int(os.environ["RANK"])
    part = writer_for(part_path(final, rank, world), writer.name, writer_options)
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    try:
        hear_refusal()  # rank 0 alone checked --out's place
        kwargs["show_progress"] = kwargs.get("show_progress", True) and rank == 0
        summary = stream(clf, inputs, part, source, resume=resume, rank=rank, world=world, **kwargs)
        dist.barrier()
        if rank == 0:
            writer.merge([part_path(final, r, world) for r in range(world)])
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return summary
