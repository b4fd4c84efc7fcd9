"""The scoring pass of ``imgcls suggest``: every pool image once through predict's decoding and
the model, keeping its calibrated probabilities and its embedding, in a resumable cache.

The embedding is the network's pooled features just before its classifier: the input of the
last ``nn.Linear`` whose width is the number of logits, caught by a forward pre-hook. One rule
covers imgcls's own families and timm's (their ``forward_head(pre_logits=True)`` output is that
same input) without knowing either's layout; with test-time flipping the two passes' features are
averaged, as the logits are. A model without such a layer embeds by its logits (said once).

The cache is a folder beside ``--out`` (``.next.csv.scores/``): a ``settings.json`` naming the
model (a fingerprint of its files) and numbered ``.npz`` chunks of ``chunk`` images each (paths,
float32 probabilities, float16 L2-normalised embeddings, and the files that failed to decode with
their errors), each written atomically. A killed pass loses at most the chunk in progress; run
again, it scores only what no chunk holds, and a finished pass scores nothing: the ranking is
redone from the cache alone. A file whose size or modification time changed since it was scored
is scored again (its newest scores count); a cache written for another model is scored afresh.

Memory: the chunks read back are the whole pool's probabilities (4 bytes x classes) and
embeddings (2 bytes x width: 100,000 images of 512 features are 100 MB) plus the paths; with the
copies the pass and the ranking make (the pool's rows, a centred copy, the eligible rows) the
peak is about 4x the embeddings (a reviewer measured 202 MB for 50,000 x 512), and float32
blocks of 4096 rows; decoding runs a bounded number of chunks ahead
(:func:`imgcls.predict.decode.decode_stream`).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.predict.classifier import Classifier

#: a batch of uint8 model inputs (B, S, S, 3) -> (probabilities (B, K), embeddings (B, D))
Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Scores:
    """What the scoring pass knows of the pool: one row per decoded image, and the failures."""

    paths: list[str]
    probs: np.ndarray  # (N, K) float32, calibrated
    emb: np.ndarray  # (N, D) float16, L2-normalised
    errors: list[tuple[str, str]] = field(default_factory=list)
    scored_now: int = 0  # images scored by this call (the rest came from the cache)
    stamps: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns) when scored


def cache_dir(out: Path) -> Path:
    """Where the scores of ``--out`` are kept: ``.NAME.scores/`` beside it."""
    return out.with_name(f".{out.name}.scores")


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float16)


def embedding_layer(model: Any, width: int) -> Any:
    """The last ``nn.Linear`` with ``width`` outputs (the classifier), or None."""
    import torch

    found = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.out_features == width:
            found = m
    return found


def torch_scorer(clf: Classifier, *, tta: bool | None = None) -> Scorer:
    """Probabilities as predict computes them, and the classifier's input as the embedding."""
    from imgcls.console import info

    model = clf.backend.model  # PyTorch (the caller loaded the torch backend)
    width = 1 if clf.task == "binary" and len(clf.label_names) == 2 else len(clf.label_names)
    layer = embedding_layer(model, width) or embedding_layer(model, len(clf.label_names))
    caught: list[np.ndarray] = []
    if layer is None:
        info("suggest: no linear classifier layer found; the embedding is the model's logits")
        model.register_forward_hook(lambda _m, _i, out: caught.append(out.detach().float().cpu().numpy()))
    else:
        layer.register_forward_pre_hook(lambda _m, args: caught.append(args[0].detach().float().cpu().numpy()))

    def score(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        caught.clear()
        probs = clf.probabilities(pixels, tta=tta)
        feats = np.mean([c.reshape(len(pixels), -1) for c in caught], axis=0)
        return probs.astype(np.float32), _normalise(feats)

    return score


# ------------------------------------------------------------------------------------- cache
def _open_cache(folder: Path, fingerprint: str) -> None:
    """Make ``folder`` hold this model's scores: another model's chunks are dropped (the cache
    is suggest's own file, named by ``--out``)."""
    from imgcls.console import info
    from imgcls.io import atomic_write_text

    settings = folder / "settings.json"
    try:
        known = json.loads(settings.read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        known = None
    if known != fingerprint:
        old = sorted(folder.glob("chunk-*.npz"))
        if old:
            info(f"suggest: {folder} holds scores of another model or other crop settings; scoring afresh")
        for f in old:
            f.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(settings, json.dumps({"model": fingerprint}) + "\n")


_KEYS = ("paths", "stamps", "probs", "emb", "error_paths", "error_reasons", "error_stamps")


def crop_key(path: str, box: str) -> str:
    """The name of a pool item: the image's path, and for a detection crop ``|`` and its box
    (``x y w h``, as the review and a corrections file name a crop)."""
    return f"{path}|{box}" if box else path


def split_key(key: str) -> tuple[str, str]:
    """(path, box) of a :func:`crop_key` ("" for a whole image)."""
    from imgcls.data.table import parse_box

    path, sep, box = key.rpartition("|")
    return (path, parse_box(box)) if sep and parse_box(box) not in ("", "?") else (key, "")


def stamp(path: str) -> tuple[int, int]:
    """(size, modification time in ns) of a file (a crop's: its image's), (-1, -1) when it cannot
    be read: a file changed since it was scored is scored again."""
    try:
        st = os.stat(split_key(path)[0])
    except OSError:
        return (-1, -1)
    return (int(st.st_size), int(st.st_mtime_ns))


def _read_chunks(folder: Path) -> Iterator[dict[str, np.ndarray]]:
    """The chunks, newest first (a file scored again after it changed: its newest scores count)."""
    for f in sorted(folder.glob("chunk-*.npz"), reverse=True):
        try:
            with np.load(f, allow_pickle=False) as z:
                chunk = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: its images are scored again
            continue
        if set(_KEYS) <= set(chunk):  # else another version's chunk: its images are scored again
            yield chunk


def _write_chunk(folder: Path, number: int, rows: list[tuple[str, Any, Any]], errors: list[tuple[str, str]]) -> None:
    from imgcls.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(
        buf,
        paths=np.array([p for p, _, _ in rows], dtype=str),
        stamps=np.array([stamp(p) for p, _, _ in rows], dtype=np.int64).reshape(-1, 2),
        error_stamps=np.array([stamp(p) for p, _ in errors], dtype=np.int64).reshape(-1, 2),
        probs=np.stack([p for _, p, _ in rows]).astype(np.float32) if rows else np.zeros((0, 0), np.float32),
        emb=np.stack([e for _, _, e in rows]).astype(np.float16) if rows else np.zeros((0, 0), np.float16),
        error_paths=np.array([p for p, _ in errors], dtype=str),
        error_reasons=np.array([r for _, r in errors], dtype=str),
    )
    atomic_write_bytes(folder / f"chunk-{number:06d}.npz", buf.getvalue())


def load_cache(folder: Path) -> Scores:
    """Every chunk's rows (a path scored twice counts once: its newest scores)."""
    paths: list[str] = []
    probs: list[np.ndarray] = []
    emb: list[np.ndarray] = []
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    stamps: dict[str, tuple[int, int]] = {}
    for z in _read_chunks(folder):
        keep = [i for i, p in enumerate(z["paths"].tolist()) if p not in seen]
        seen.update(str(z["paths"][i]) for i in keep)
        stamps.update((str(z["paths"][i]), (int(z["stamps"][i][0]), int(z["stamps"][i][1]))) for i in keep)
        if keep:
            paths.extend(str(z["paths"][i]) for i in keep)
            probs.append(z["probs"][keep])
            emb.append(z["emb"][keep])
        for p, r, st in zip(z["error_paths"].tolist(), z["error_reasons"].tolist(), z["error_stamps"], strict=True):
            if p not in seen:
                seen.add(p)
                errors.append((str(p), str(r)))
                stamps[str(p)] = (int(st[0]), int(st[1]))
    return Scores(
        paths,
        np.concatenate(probs) if probs else np.zeros((0, 0), np.float32),
        np.concatenate(emb) if emb else np.zeros((0, 0), np.float16),
        errors,
        stamps=stamps,
    )


# ------------------------------------------------------------------------------------ the pass
def score_pool(
    clf: Classifier,
    inputs: Sequence[str],
    folder: Path,
    *,
    scorer: Scorer | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    chunk: int = 512,
    show_progress: bool = True,
    items: Sequence[str] | None = None,
    margin: float | None = None,
) -> Scores:
    """Score every image ``inputs`` name that the cache in ``folder`` lacks (see the module
    docstring), then return the cache's scores of exactly the images ``inputs`` name; or, given
    ``items`` (:func:`crop_key` names: detection crops), of those, cropped with ``margin``."""
    from imgcls.outputs import model_fingerprint
    from imgcls.predict.inputs import iter_inputs

    _open_cache(folder, model_fingerprint(clf.info.path) + (f" crops, margin {margin:g}" if margin is not None else ""))
    cached = load_cache(folder)
    failed = {p for p, _ in cached.errors}  # tried again each run (few; the cause may be gone: permissions, a copy)
    done = {p for p, st in cached.stamps.items() if p not in failed and stamp(p) == st}  # unchanged since scored
    # the pool walked once: each file once however often it is named (a folder and a file in it)
    named = dict.fromkeys(items) if items is not None else _once(iter_inputs(inputs))
    position = {p: k for k, p in enumerate(named)}
    todo = [p for p in position if p not in done]
    number = 1 + max((int(f.stem.split("-")[1]) for f in folder.glob("chunk-*.npz")), default=-1)
    if todo:
        _run(clf, todo, folder, number, scorer, batch_size, workers, chunk, show_progress, margin)
    scores = load_cache(folder)
    # in the pool's order, whatever chunks the cache holds them in: a seeded random pick and a tie
    # between copies (the first named is kept) do not depend on which run scored what
    keep = sorted((i for i, p in enumerate(scores.paths) if p in position), key=lambda i: position[scores.paths[i]])
    return Scores(
        [scores.paths[i] for i in keep], scores.probs[keep], scores.emb[keep],
        [e for e in scores.errors if e[0] in position], scored_now=len(todo),
    )  # fmt: skip


def decode_crop_item(item: tuple[str, float], cfg: Any, max_pixels: int | None = None) -> np.ndarray:
    """(:func:`crop_key`, margin) -> a stack of one model input: the crop as training cut it."""
    from imgcls.predict.decode import decode_crop

    path, box = split_key(item[0])
    return decode_crop((path, tuple(float(v) for v in box.split()), item[1]), cfg, max_pixels)[None]  # type: ignore[arg-type]


def _once(paths: Iterable[str]) -> Iterator[str]:
    """``paths`` with each file once (by absolute path), the first naming kept."""
    seen: set[str] = set()
    for p in paths:
        if os.path.abspath(p) not in seen:
            seen.add(os.path.abspath(p))
            yield p


def _run(
    clf: Classifier, todo: list[str], folder: Path, number: int, scorer: Scorer | None,
    batch_size: int, workers: int | None, chunk: int, show_progress: bool, margin: float | None = None,
) -> None:  # fmt: skip
    """Decode ``todo`` in worker processes (``margin`` given: crops), score it in batches, write a
    chunk every ``chunk`` images."""
    from imgcls.console import Progress
    from imgcls.predict.decode import decode_one, decode_stream
    from imgcls.runtime import physical_cores

    if workers is None:  # a handful of images decode faster than worker processes start
        workers = 0 if len(todo) < 32 else physical_cores()
    score = scorer or torch_scorer(clf)
    rows: list[tuple[str, Any, Any]] = []
    errors: list[tuple[str, str]] = []
    batch: list[tuple[str, np.ndarray]] = []

    def flush_batch() -> None:
        if batch:
            probs, emb = score(np.concatenate([a for _, a in batch]))
            rows.extend((p, probs[i], emb[i]) for i, (p, _) in enumerate(batch))
            batch.clear()

    with Progress(len(todo), "scoring", enabled=show_progress) as bar:
        if margin is None:
            decoded = decode_stream(iter(todo), clf.preprocess, workers=workers, fn=decode_one)
        else:
            stream = decode_stream(((k, margin) for k in todo), clf.preprocess, workers=workers, fn=decode_crop_item)
            decoded = ((item[0], arrays, error) for item, arrays, error in stream)
        for path, arrays, error in decoded:
            if arrays is None:
                errors.append((path, error or "unreadable"))
            else:
                batch.append((path, arrays))
            if len(batch) >= batch_size:
                flush_batch()
            if len(rows) + len(errors) + len(batch) >= chunk:
                flush_batch()
                _write_chunk(folder, number, rows, errors)
                bar.update(len(rows) + len(errors))
                number, rows, errors = number + 1, [], []
        flush_batch()
        if rows or errors:
            _write_chunk(folder, number, rows, errors)
            bar.update(len(rows) + len(errors))
