"""Camera-trap prediction on top of the one prediction runner: classify MegaDetector crops
(:class:`DetectionSource`, an item source), decide blanks, aggregate sequences.

:class:`DetectionSource` decodes every image once (at the scale its smallest crop needs), crops
each detection at or above the threshold, classifies the crops in batches, and gives one row per
image: the image-level label (the detection-confidence weighted mean of its crops'
probabilities; ``blank`` when no detection passes), and every detection with its own label.

``--aggregate sequence`` then averages the probabilities over each event and adds the event-level
label next to the image labels; Camtrap DP and MegaDetector outputs are assembled at the end.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.cameratrap.sequences import assign_events, camera_names
from imgcls.config import PreprocessConfig
from imgcls.data.sources.detections import Detection, Detections
from imgcls.errors import UserError
from imgcls.outputs import Writer, _truncate_to_last_newline
from imgcls.predict import Classifier, PredictSummary, decode_crops, iter_inputs
from imgcls.predict.runner import ItemSource

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


@dataclass
class DetectionSource(ItemSource):
    """Prediction on MegaDetector crops: each image is decoded once (at the scale its smallest
    crop needs), every detection at or above the threshold is cropped and classified, and the
    image's row gets the detection-confidence weighted mean of its crops' probabilities
    (``blank`` when no detection passes) and every detection with its own label."""

    detections: Detections
    threshold: float = 0.2
    categories: tuple[str, ...] = ("animal",)
    margin: float = 0.1
    top_k: int = 5

    @staticmethod
    def decode(item: Any, cfg: PreprocessConfig, max_pixels: int | None) -> np.ndarray | None:
        """Images without a kept detection are blank: nothing to decode."""
        return decode_crops(item, cfg, max_pixels) if item[1] else None

    def items(self, paths: Iterator[str]) -> Iterator[tuple[str, list[tuple[float, float, float, float]], float]]:
        for path in paths:
            kept = self.detections.above(path, self.threshold, self.categories) or []
            yield path, [d.bbox for d in kept], self.margin

    def row(self, clf: Classifier, item: Any, probs: np.ndarray | None, error: str | None) -> dict[str, Any]:
        path = item[0]
        row: dict[str, Any] = {"path": path, "label": None, "score": None, "top_k": None, "error": error}
        dets = self.detections.lookup(path)
        failure = self.detections.failures.get(os.path.realpath(path))
        if dets is None:
            row["error"] = f"not in the detections file {self.detections.path.name}"
        elif failure is not None:
            row["error"] = f"the detector failed on it ({failure})"
        file = self.detections.files.get(os.path.realpath(path), path)
        if row["error"]:
            row["_md"] = {"file": file, "failure": row["error"]}
            return row
        assert dets is not None
        kept = [j for j, d in enumerate(dets) if d.conf >= self.threshold and d.category in self.categories]
        classified = {kept[j]: p for j, p in enumerate(probs if probs is not None else [])}
        return self._classified(clf, row, file, dets, classified)

    def _classified(
        self, clf: Classifier, row: dict[str, Any], file: str, dets: list[Detection], classified: dict[int, np.ndarray]
    ) -> dict[str, Any]:
        path = row["path"]
        cat_ids = {name: cid for cid, name in self.detections.categories.items()}
        row["_md"] = _md_entry(file, dets, classified, cat_ids, self.top_k)
        row["detections"] = []
        for j, d in enumerate(dets):
            if j in classified:
                r = clf.row(path, classified[j], top_k=self.top_k)
                row["detections"].append({"category": d.category, "conf": d.conf, "bbox": list(d.bbox),
                                          "label": r["label"], "score": r["score"], "top_k": r["top_k"]})  # fmt: skip
        if not classified:
            blank = round(1.0 - max((d.conf for d in dets), default=0.0), 6)
            row.update(label=BLANK, score=blank, top_k={BLANK: blank}, _probs=None)
            return row
        weights = np.array([dets[j].conf for j in classified])
        p = (np.stack(list(classified.values())) * weights[:, None]).sum(0) / weights.sum()
        image = clf.row(path, p, top_k=self.top_k)
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

    from imgcls.io import atomic_write_csv, atomic_write_text

    def cols(path: str) -> list[Any]:
        ev = image_event.get(path, "")
        e = events.get(ev, {})
        return [ev, e.get("label", ""), f"{e['score']:.6g}" if "score" in e else ""]

    if fmt == "csv":
        with open(out, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        head = [c for c in rows[0] if c not in ("sequence", "sequence_label", "sequence_score")]
        keep = [i for i, c in enumerate(rows[0]) if c in head]
        atomic_write_csv(out, [*head, "sequence", "sequence_label", "sequence_score"],
                         ([r[i] for i in keep] + cols(r[0]) for r in rows[1:]))  # fmt: skip
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


def detection_source(
    clf: Classifier,
    detections_file: str,
    image_root: str | None,
    det_threshold: float | None,
    det_categories: str,
    crop_margin: float | None,
    top_k: int,
) -> DetectionSource:
    """The crops of a MegaDetector file, at the threshold and margin given, else the model's."""
    from imgcls.data.sources.detections import crop_settings, parse_categories, read_detections

    detections = read_detections(detections_file, image_root)
    threshold, margin = crop_settings(clf.info.provenance, det_threshold, crop_margin)
    return DetectionSource(detections, threshold, parse_categories(det_categories), margin, top_k)


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
    """``imgcls predict`` with detections, sequence aggregation or an ecologists' format: the
    one prediction runner (:func:`imgcls.predict.run_predict`) with the detection crops as its
    item source, each row annotated with its event and deployment, and at the end the events
    decided and the package assembled."""
    from imgcls import __version__
    from imgcls.predict import run_predict

    require_single_process()
    options: dict[str, Any] = {"version": __version__, **(writer_options or {})}
    source = None
    if detections_file:
        source = detection_source(clf, detections_file, image_root, det_threshold, det_categories, crop_margin,
                                  kwargs["top_k"])  # fmt: skip
        options.update(detection_categories=source.detections.categories, detector_info=source.detections.info)
    elif fmt == "megadetector":
        raise UserError("--format megadetector needs --detections md.json (classifications belong to detections)")
    if aggregate == "sequence" and out is None:
        raise UserError("--aggregate sequence needs --out")
    # beside the output (for Camtrap DP beside the folder, so the package holds only its files)
    side = Path(out).with_name(f".{Path(out).name}.probs.jsonl") if aggregate == "sequence" and out else None
    if not resume and side is not None:
        side.unlink(missing_ok=True)
    events, locations = image_events_and_locations(
        inputs, metadata, events=aggregate == "sequence", gap=sequence_gap, by_folder=fmt == "camtrapdp"
    )
    settings = dict(detections=detections_file, det_threshold=det_threshold, det_categories=det_categories,
                    crop_margin=crop_margin, aggregate=aggregate, sequence_gap=sequence_gap, metadata=metadata,
                    writer_options=writer_options or {})  # fmt: skip

    def finish(writer: Writer) -> None:
        by_event = event_labels(side, clf) if side is not None else {}
        if writer.name == "camtrapdp":
            writer.finalize(events=by_event)  # type: ignore[attr-defined]
        elif hasattr(writer, "finalize"):
            writer.finalize()
        if by_event and out is not None and writer.name in ("csv", "jsonl", "json"):
            add_event_columns(Path(out), writer.name, by_event, events)

    return run_predict(
        clf, inputs, out=out, fmt=fmt, resume=resume, writer_options=options, source=source, settings=settings,
        wrap=lambda writer: Annotate(writer, side, events, locations), finish=finish, **kwargs,
    )  # fmt: skip
