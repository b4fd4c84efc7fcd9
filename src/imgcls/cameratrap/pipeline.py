"""Camera-trap prediction: classify MegaDetector crops, decide blanks, aggregate sequences.

``predict_detections`` decodes every image once (at the scale its smallest crop needs), crops
each detection at or above the threshold, classifies the crops in batches, and writes one row
per image: the image-level label (the detection-confidence weighted mean of its crops'
probabilities; ``blank`` when no detection passes), and every detection with its own label.

``aggregate`` then (for ``--aggregate sequence``) averages the probabilities over each event and
adds the event-level label next to the image labels.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.cameratrap.detections import Detection, Detections
from imgcls.cameratrap.sequences import assign_events, camera_names
from imgcls.config import PreprocessConfig
from imgcls.data.image import MAX_PIXELS
from imgcls.errors import UserError
from imgcls.outputs import Writer, _truncate_to_last_newline
from imgcls.predict import Classifier, PredictSummary, decode_crops, decode_stream, iter_inputs

BLANK = "blank"


def _md_entry(
    file: str,
    dets: list[Detection],
    classified: dict[int, np.ndarray],
    cat_ids: dict[str, str],
    top_k: int,
) -> dict[str, Any]:
    out = []
    for j, d in enumerate(dets):
        e: dict[str, Any] = {
            "category": cat_ids.get(d.category, d.category),
            "conf": round(d.conf, 4),
            "bbox": [round(v, 4) for v in d.bbox],
        }
        if j in classified:
            p = classified[j]
            order = np.argsort(-p, kind="stable")[:top_k]
            e["classifications"] = [[str(int(i)), round(float(p[i]), 4)] for i in order]
        out.append(e)
    return {"file": file, "detections": out}


class _Pending:
    """Crops of the images in flight, until their batch has been classified."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.crops: list[np.ndarray] = []
        self.owner: list[tuple[int, int]] = []  # (image index in self.images, detection index)

    def __len__(self) -> int:
        return sum(len(c) for c in self.crops)

    def clear(self) -> None:
        self.images, self.crops, self.owner = [], [], []


def predict_detections(
    clf: Classifier,
    inputs: Sequence[str],
    writer: Writer,
    detections: Detections,
    *,
    threshold: float = 0.2,
    categories: tuple[str, ...] = ("animal",),
    margin: float = 0.1,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int | None = None,
    resume: bool = True,
    show_progress: bool = True,
    max_pixels: int | None = MAX_PIXELS,
) -> PredictSummary:
    from imgcls.console import Progress
    from imgcls.runtime import physical_cores

    workers = physical_cores() if workers is None else workers
    done = writer.open(resume)
    total = sum(1 for _ in iter_inputs(inputs)) if show_progress else 0

    def items() -> Iterator[tuple[str, list[tuple[float, float, float, float]], float]]:
        for path in iter_inputs(inputs):
            if path in done:
                continue
            kept = detections.above(path, threshold, categories) or []
            yield path, [d.bbox for d in kept], margin

    t0 = time.perf_counter()
    written = errors = 0
    pending = _Pending()
    try:
        with Progress(total, "predicting", enabled=show_progress) as bar:
            bar.done = len(done)
            for item, crops, err in decode_stream(
                items(), clf.preprocess, workers=workers, max_pixels=max_pixels, fn=_decode_if_boxes
            ):
                path = item[0]
                image = _image_row(path, detections, threshold, categories, err)
                pending.images.append(image)
                if crops is not None and err is None:
                    pending.crops.append(crops)
                    pending.owner += [(len(pending.images) - 1, j) for j in range(len(crops))]
                if len(pending) >= batch_size or len(pending.images) >= 4 * batch_size:
                    written, errors = _flush(clf, writer, pending, bar, written, errors, top_k, detections)
            written, errors = _flush(clf, writer, pending, bar, written, errors, top_k, detections)
    finally:
        writer.close()
    return PredictSummary(total, written, len(done), errors, time.perf_counter() - t0, writer.path)


def _decode_if_boxes(item: Any, cfg: PreprocessConfig, max_pixels: int | None) -> np.ndarray | None:
    """Images without a kept detection are blank: nothing to decode."""
    return decode_crops(item, cfg, max_pixels) if item[1] else None


def _image_row(
    path: str,
    detections: Detections,
    threshold: float,
    categories: tuple[str, ...],
    err: str | None,
) -> dict[str, Any]:
    row: dict[str, Any] = {"path": path, "label": "", "score": None, "top_k": None, "error": err}
    dets = detections.lookup(path)
    if dets is None:
        row["error"] = f"not in the detections file {detections.path.name}"
    elif os.path.realpath(path) in detections.failures:
        failure = detections.failures[os.path.realpath(path)]
        row["error"] = f"the detector failed on it ({failure})"
    row["_all"] = dets or []
    row["_kept"] = [j for j, d in enumerate(dets or []) if d.conf >= threshold and d.category in categories]
    return row


def _flush(
    clf: Classifier,
    writer: Writer,
    pending: _Pending,
    bar: Any,
    written: int,
    errors: int,
    top_k: int,
    detections: Detections,
) -> tuple[int, int]:
    if not pending.images:
        return written, errors
    probs = clf.probabilities(np.concatenate(pending.crops)) if pending.crops else np.zeros((0, len(clf.label_names)))
    per_image: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
    for (i, j), p in zip(pending.owner, probs, strict=True):
        per_image[i][j] = p
    rows = [_finish_row(clf, img, per_image.get(i, {}), top_k, detections) for i, img in enumerate(pending.images)]
    writer.write(rows)
    writer.flush()
    bar.update(len(rows))
    written += len(rows)
    errors += sum(1 for r in rows if r["error"])
    pending.clear()
    return written, errors


def _finish_row(
    clf: Classifier,
    row: dict[str, Any],
    crop_probs: dict[int, np.ndarray],
    top_k: int,
    detections: Detections,
) -> dict[str, Any]:
    dets: list[Detection] = row.pop("_all")
    kept: list[int] = row.pop("_kept")
    cat_ids = {name: cid for cid, name in detections.categories.items()}
    file = detections.files.get(os.path.realpath(row["path"]), row["path"])
    if row["error"]:
        row["_md"] = {"file": file, "failure": row["error"]}
        return row
    classified = {kept[j]: p for j, p in crop_probs.items()}
    row["_md"] = _md_entry(file, dets, classified, cat_ids, top_k)
    row["detections"] = []
    for j, d in enumerate(dets):
        entry: dict[str, Any] = {"category": d.category, "conf": d.conf, "bbox": list(d.bbox)}
        if j in classified:
            r = clf.row(row["path"], classified[j], top_k=top_k)
            entry.update(label=r["label"], score=r["score"], top_k=r["top_k"])
            row["detections"].append(entry)
    if not classified:
        best = max((d.conf for d in dets), default=0.0)
        row.update(
            label=BLANK,
            score=round(1.0 - best, 6),
            top_k={BLANK: round(1.0 - best, 6)},
            _probs=None,
        )
        return row
    weights = np.array([dets[j].conf for j in classified])
    p = (np.stack(list(classified.values())) * weights[:, None]).sum(0) / weights.sum()
    image = clf.row(row["path"], p, top_k=top_k)
    row.update(label=image["label"], score=image["score"], top_k=image["top_k"], _probs=p)
    return row


# ------------------------------------------------------------------------------- sequences
class Annotate(Writer):
    """Wraps the real writer: adds each image's ``sequence`` (event) and ``deployment``
    (location) to its row, and appends the event and probabilities to a side file
    (``.OUT.probs.jsonl``) that :func:`event_labels` reads once every image is done."""

    def __init__(self, inner: Writer, side: Path | None, events: dict[str, str], locations: dict[str, str]) -> None:
        super().__init__(inner.path, options=inner.options)
        self.inner = inner
        self.side = side
        self.events = events
        self.locations = locations

    def open(self, resume: bool) -> set[str]:
        done = self.inner.open(resume)
        if self.side is None:
            return done
        # keep the logged images the output also holds; an image missing from either is redone
        kept: list[str] = []
        if resume and self.side.exists():
            _truncate_to_last_newline(self.side)
            with open(self.side, encoding="utf-8") as f:
                kept = [line for line in f if line.strip() and json.loads(line)["path"] in done]
        self.side.parent.mkdir(parents=True, exist_ok=True)
        from imgcls.io import atomic_write_text

        atomic_write_text(self.side, "".join(kept))
        logged = {json.loads(line)["path"] for line in kept}
        if done - logged:
            # the output holds images without logged probabilities: start the output afresh
            self.inner.close()
            self.inner.open(False)
            atomic_write_text(self.side, "")
            logged = set()
        self.stream = open(self.side, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        return logged

    def write(self, rows: Any) -> None:
        rows = list(rows)
        for r in rows:
            if self.events:
                r["sequence"] = self.events.get(r["path"], f"image:{r['path']}")
            if r["path"] in self.locations:
                r["deployment"] = self.locations[r["path"]]
        self.inner.write(rows)
        if self.stream is not None:
            self.stream.write("".join(json.dumps(_log_record(r)) + "\n" for r in rows))

    def flush(self) -> None:
        self.inner.flush()
        super().flush()

    def close(self) -> None:
        self.inner.close()
        super().close()


def _log_record(r: dict[str, Any]) -> dict[str, Any]:
    p = r.get("_probs")
    probs = None if p is None or r.get("error") else [round(float(x), 6) for x in p]
    return {"path": r["path"], "sequence": r.get("sequence", ""), "probs": probs}


def event_labels(side: Path, clf: Classifier) -> dict[str, dict[str, Any]]:
    """Per event: its label (the model's decision on the mean probability of its classified
    images, as for one image; blank when none was classified), score, images and time span."""
    members: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with open(side, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                members[rec["sequence"]].append(rec)
    out = {}
    for event, recs in members.items():
        probs = [np.asarray(r["probs"]) for r in recs if r["probs"] is not None]
        if probs:
            decided = clf.row(event, np.mean(probs, axis=0), top_k=1)
            label, score = decided["label"], decided["score"]
        else:
            label, score = BLANK, 1.0
        out[event] = {"label": label, "score": float(score), "images": [r["path"] for r in recs]}
    return out


def image_events_and_locations(
    inputs: Sequence[str], metadata: str | None, *, events: bool, gap: float, by_folder: bool
) -> tuple[dict[str, str], dict[str, str]]:
    """Per input image: its event (with ``events``: ``seq_id`` / ``sequence`` from the metadata
    file, a COCO Camera Traps .json or a CSV, else camera folder and EXIF time) and its location
    (from the metadata file; with ``by_folder`` and no location there, its camera folder). The
    inputs are listed, and the metadata file read, once."""
    if not (events or metadata or by_folder):
        return {}, {}
    paths = list(iter_inputs(inputs))
    table = None
    if metadata:
        from imgcls.data.sources import load_source

        table = load_source(metadata, multilabel=True)

    def column(name: str) -> list[str]:
        if table is None or name not in table.columns:
            return [""] * len(paths)
        values = dict(zip(table.paths, table.columns[name], strict=True))
        return [values.get(str(Path(p).resolve()), "") for p in paths]

    image_event = (
        dict(zip(paths, assign_events(paths, sequence_ids=column("sequence"), gap=gap), strict=True)) if events else {}
    )
    locations = {p: loc for p, loc in zip(paths, column("location"), strict=True) if loc}
    if not locations and by_folder:  # deployments from the camera folders
        folders = {p: os.path.dirname(os.path.abspath(p)) for p in paths}
        names = camera_names(list(folders.values()))
        locations = {p: names[f] for p, f in folders.items()}
    return image_event, locations


def add_event_columns(out: Path, fmt: str, events: dict[str, dict[str, Any]], image_event: dict[str, str]) -> None:
    """Rewrite a CSV / JSON-lines output with ``sequence``, ``sequence_label`` and
    ``sequence_score`` beside each image's own label."""
    import csv
    import io

    from imgcls.io import atomic_write_text

    def cols(path: str) -> list[Any]:
        ev = image_event.get(path, "")
        e = events.get(ev, {})
        return [ev, e.get("label", ""), f"{e['score']:.6g}" if "score" in e else ""]

    if fmt == "csv":
        with open(out, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        head = [c for c in rows[0] if c not in ("sequence", "sequence_label", "sequence_score")]
        keep = [i for i, c in enumerate(rows[0]) if c in head]
        w.writerow([*head, "sequence", "sequence_label", "sequence_score"])
        for r in rows[1:]:
            w.writerow([r[i] for i in keep] + cols(r[0]))
        atomic_write_text(out, buf.getvalue())
    elif fmt in ("jsonl", "json"):
        if fmt == "json":
            doc = json.loads(out.read_text(encoding="utf-8"))
            for r in doc["predictions"]:
                r["sequence"], r["sequence_label"], r["sequence_score"] = cols(r["path"])
            atomic_write_text(out, json.dumps(doc) + "\n")
            return
        lines = []
        with open(out, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    r["sequence"], r["sequence_label"], r["sequence_score"] = cols(r["path"])
                    lines.append(json.dumps(r) + "\n")
        atomic_write_text(out, "".join(lines))


def require_single_process() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--detections / --aggregate run in one process (not under torchrun) for now")


def run(
    clf: Classifier,
    inputs: Sequence[str],
    *,
    out: str | None,
    fmt: str | None,
    detections_file: str | None,
    image_root: str | None = None,
    det_threshold: float | None = None,
    det_categories: str = "animal",
    crop_margin: float | None = None,
    aggregate: str = "none",
    sequence_gap: float = 30.0,
    metadata: str | None = None,
    writer_options: dict[str, Any] | None = None,
    resume: bool = True,
    **kwargs: Any,
) -> PredictSummary:
    """``imgcls predict`` with detections, sequence aggregation or an ecologists' format."""
    from imgcls import __version__
    from imgcls.cameratrap.detections import crop_settings, parse_categories, read_detections
    from imgcls.outputs import guard_resume, writer_for
    from imgcls.predict import predict_files, run_settings

    require_single_process()
    options: dict[str, Any] = {
        "model": clf.describe(),
        "version": __version__,
        **(writer_options or {}),
    }
    detections = None
    if detections_file:
        detections = read_detections(detections_file, image_root)
        options["detection_categories"] = detections.categories
        options["detector_info"] = detections.info
    writer = writer_for(out, fmt, options)
    if writer.name == "megadetector" and detections is None:
        raise UserError("--format megadetector needs --detections md.json (classifications belong to detections)")
    settings = run_settings(
        clf, writer.name, kwargs, detections=detections_file, det_threshold=det_threshold,
        det_categories=det_categories, crop_margin=crop_margin, aggregate=aggregate,
        sequence_gap=sequence_gap, metadata=metadata, writer_options=writer_options or {},
    )  # fmt: skip
    if aggregate == "sequence" and out is None:
        raise UserError("--aggregate sequence needs --out")
    # beside the output (for Camtrap DP beside the folder, so the package holds only its files)
    side = Path(out).with_name(f".{Path(out).name}.probs.jsonl") if aggregate == "sequence" and out else None
    if not resume and side is not None:
        side.unlink(missing_ok=True)
    guard_resume(out, settings, resume, writer=writer)
    events, locations = image_events_and_locations(
        inputs, metadata, events=aggregate == "sequence", gap=sequence_gap, by_folder=writer.name == "camtrapdp"
    )
    wrapped = Annotate(writer, side, events, locations)
    if detections is not None:
        threshold, margin = crop_settings(clf.info.provenance, det_threshold, crop_margin)
        categories = parse_categories(det_categories)
        summary = predict_detections(
            clf,
            inputs,
            wrapped,
            detections,
            threshold=threshold,
            categories=categories,
            margin=margin,
            resume=resume,
            **kwargs,
        )
    else:
        summary = predict_files(clf, inputs, wrapped, resume=resume, **kwargs)
    by_event: dict[str, dict[str, Any]] = {}
    if side is not None:
        by_event = event_labels(side, clf)
    if writer.name == "camtrapdp":
        writer.finalize(events=by_event)  # type: ignore[attr-defined]
    elif hasattr(writer, "finalize"):
        writer.finalize()
    if by_event and out is not None and writer.name in ("csv", "jsonl", "json"):
        add_event_columns(Path(out), writer.name, by_event, events)
    return summary
