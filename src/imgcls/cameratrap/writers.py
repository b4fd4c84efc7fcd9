"""Ecologists' output formats, registered with :mod:`imgcls.outputs`:

- ``megadetector``: MegaDetector batch-output JSON, format version 1.4, with
  ``classification_categories`` and per-detection ``classifications`` (``[[id, p], ...]``,
  best first) — readable by Timelapse and the other tools that read MegaDetector results.
- ``camtrapdp``: a Camera Trap Data Package (Camtrap DP 1.0) in the ``--out`` folder:
  ``datapackage.json``, ``deployments.csv``, ``media.csv`` (EXIF timestamps) and
  ``observations.csv`` (machine observations; event-level ones with ``--aggregate sequence``;
  the model's class name in ``observationTags``, so the package reads back with it).

Both stream their rows to part files as predictions come, so a killed run resumes, and assemble
the final files at the end.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import mimetypes
import os
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

from imgcls.cameratrap.sequences import exif_datetime
from imgcls.data.sources.camtrapdp import LABEL_TAG, observation_type, scientific_name
from imgcls.errors import UserError
from imgcls.io import atomic_open, atomic_write_text
from imgcls.outputs import PartialJsonlWriter, Writer, _truncate_to_last_newline, register_writer

MD_FORMAT_VERSION = "1.4"
CAMTRAP_DP = "1.0.2"
SCHEMA = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{CAMTRAP_DP}"


class MegaDetectorWriter(PartialJsonlWriter):
    """Rows must carry ``_md``: the image's MegaDetector entry (``file``, ``detections``...)."""

    name = "megadetector"
    suffixes: ClassVar[tuple[str, ...]] = ()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        assert self.stream is not None
        lines = []
        for r in rows:
            entry = r.get("_md")
            if entry is None:
                raise UserError("--format megadetector needs --detections (classifications belong to detections)")
            lines.append(json.dumps({"path": r["path"], "entry": entry}) + "\n")
        self.stream.write("".join(lines))

    def finalize(self) -> None:
        assert self.path is not None
        o = self.options
        names: list[str] = list(o.get("model", {}).get("label_names", []))
        info = {
            **dict(o.get("detector_info") or {}),
            "format_version": MD_FORMAT_VERSION,
            "classifier": o.get("model", {}).get("path", ""),
            "classification_completion_time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "classifier_metadata": {
                "tool": "imgcls",
                "architecture": o.get("model", {}).get("architecture", ""),
            },
        }
        with open(self.path, encoding="utf-8") as f, atomic_open(self.final) as out:
            head = {
                "info": info,
                "detection_categories": o.get("detection_categories") or {"1": "animal", "2": "person", "3": "vehicle"},
                "classification_categories": {str(i): n for i, n in enumerate(names)},
            }
            text = json.dumps(head, indent=1)
            out.write(text[: text.rstrip().rfind("}")].rstrip() + ',\n "images": [\n')
            first = True
            for line in f:
                if line.strip():
                    out.write(("" if first else ",\n") + json.dumps(json.loads(line)["entry"]))
                    first = False
            out.write("\n ]\n}\n")
        self.path.unlink()


def _csv_line(values: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return buf.getvalue()


MEDIA = ["mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic", "fileName",
         "fileMediatype", "exifData", "favorite", "mediaComments"]  # fmt: skip
OBSERVATIONS = [
    "observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd", "observationLevel",
    "observationType", "cameraSetupType", "scientificName", "count", "lifeStage", "sex", "behavior",
    "individualID", "individualPositionRadius", "individualPositionAngle", "individualSpeed", "bboxX",
    "bboxY", "bboxWidth", "bboxHeight", "classificationMethod", "classifiedBy", "classificationTimestamp",
    "classificationProbability", "observationTags", "observationComments",
]  # fmt: skip
DEPLOYMENTS = ["deploymentID", "locationID", "locationName", "latitude", "longitude", "coordinateUncertainty",
               "deploymentStart", "deploymentEnd", "setupBy", "cameraID", "cameraModel", "cameraDelay",
               "cameraHeight", "cameraDepth", "cameraTilt", "cameraHeading", "detectionDistance",
               "timestampIssues", "baitUse", "featureType", "habitat", "deploymentGroups", "deploymentTags",
               "deploymentComments"]  # fmt: skip


def label_tag(label: str) -> str:
    """The ``observationTags`` value keeping the model's class name, so that the package read
    back as ``--data`` gives that name (``cat``, not the scientific ``Cat``; a crop's ``empty``,
    not ``blank``); none for a name a tag list cannot hold."""
    return f"{LABEL_TAG}{label}" if label and "|" not in label and label == label.strip() else ""


class CamtrapDPWriter(Writer):
    """A Camtrap DP folder. Options: ``utc_offset`` ('+02:00'), ``deployments`` (a CSV with
    deploymentID / locationName and coordinates to merge), ``metadata`` (a JSON file merged
    into datapackage.json: project, contributors, licenses...)."""

    name = "camtrapdp"
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: the package's files (in the --out folder) and the parts they are assembled from
    PACKAGE: ClassVar[tuple[str, ...]] = ("datapackage.json", "deployments.csv", "media.csv", "observations.csv")
    PARTS: ClassVar[tuple[str, ...]] = (".media.partial.csv", ".observations.partial.csv")

    def open(self, resume: bool) -> set[str]:
        if self.path is None:
            raise UserError("--format camtrapdp needs --out FOLDER")
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: --format camtrapdp writes a folder, and this is a file")
        self.folder = self.path
        self.folder.mkdir(parents=True, exist_ok=True)
        self.media_part, self.obs_part = (self.folder / name for name in self.PARTS)
        self.tz = _parse_offset(self.options.get("utc_offset", "+00:00"))
        self.stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        done: set[str] = set()
        if resume and self.media_part.exists():
            for part in (self.media_part, self.obs_part):
                if part.exists():
                    _truncate_to_last_newline(part)
            with open(self.media_part, newline="", encoding="utf-8") as f:
                done = {row["_path"] for row in csv.DictReader(f)}
            # observations of an image whose media row was not written are dropped with it
            self._keep_observations(done)
        else:
            self.media_part.write_text(_csv_line([*MEDIA, "_path"]), encoding="utf-8")
            self.obs_part.write_text(_csv_line(OBSERVATIONS), encoding="utf-8")
        # both stay open while predictions stream in; close() closes them
        self.media_stream = open(self.media_part, "a", encoding="utf-8", newline="")  # noqa: SIM115
        self.stream = open(self.obs_part, "a", encoding="utf-8", newline="")  # noqa: SIM115
        return done

    def files(self) -> list[Path]:
        return [] if self.path is None else [self.path / name for name in (*self.PACKAGE, *self.PARTS)]

    def _keep_observations(self, done: set[str]) -> None:
        with open(self.media_part, newline="", encoding="utf-8") as f:
            media_ids = {row["mediaID"] for row in csv.DictReader(f)}
        with open(self.obs_part, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f)]
        keep = [rows[0]] + [r for r in rows[1:] if len(r) > 2 and r[2] in media_ids]
        atomic_write_text(self.obs_part, "".join(_csv_line(r) for r in keep))

    def _timestamp(self, path: str) -> str:
        dt = exif_datetime(path)
        if dt is None:
            dt = datetime.fromtimestamp(os.path.getmtime(path)) if os.path.exists(path) else datetime(1970, 1, 1)
        # a time with its own offset is that instant, written at --utc-offset like the others
        return (dt.astimezone(self.tz) if dt.tzinfo is not None else dt.replace(tzinfo=self.tz)).isoformat()

    def _relative(self, path: str) -> str:
        try:
            return os.path.relpath(path, self.folder).replace(os.sep, "/")
        except ValueError:
            return path

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        media_lines, obs_lines = [], []
        for r in rows:
            path = r["path"]
            media_id = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:16]
            deployment = r.get("deployment") or os.path.basename(os.path.dirname(os.path.abspath(path))) or "camera"
            ts = self._timestamp(path)
            mtype = mimetypes.guess_type(path)[0] or "image/jpeg"
            comment = f"unreadable: {r['error']}" if r.get("error") else ""
            media_lines.append(_csv_line([media_id, deployment, "activityDetection", ts, self._relative(path), "false",
                                          os.path.basename(path), mtype, "", "", comment, path]))  # fmt: skip
            if r.get("error"):
                continue
            event = r.get("sequence") or ""
            for n, obs in enumerate(self._observations(r), start=1):
                obs_lines.append(_csv_line([
                    f"{media_id}_{n}", deployment, media_id, event, ts, ts, "media", obs["type"], "",
                    obs["name"], obs.get("count", ""), "", "", "", "", "", "", "",
                    *obs.get("bbox", ["", "", "", ""]), "machine", self.options.get("model", {}).get("path", "imgcls"),
                    self.stamp, f"{obs['p']:.4f}" if obs.get("p") is not None else "", obs.get("tag", ""), "",
                ]))  # fmt: skip
        self.media_stream.write("".join(media_lines))
        assert self.stream is not None
        self.stream.write("".join(obs_lines))

    def _observations(self, r: dict[str, Any]) -> list[dict[str, Any]]:
        dets = r.get("detections")
        if dets is None:  # whole-image classification
            t = observation_type(r["label"])
            return [
                {
                    "type": t,
                    "name": scientific_name(r["label"]) if t == "animal" else "",
                    "p": r.get("score"),
                    "tag": label_tag(r["label"]),
                }
            ]
        if not dets:
            return [{"type": "blank", "name": "", "p": r.get("score")}]
        out = []
        for d in dets:
            t = observation_type(d["label"]) if d.get("label") else observation_type(d["category"])
            x, y, w, h = d["bbox"]
            out.append({
                "type": t, "name": scientific_name(d["label"]) if t == "animal" and d.get("label") else "",
                "p": d.get("score"), "count": 1, "bbox": [f"{x:.4f}", f"{y:.4f}", f"{w:.4f}", f"{h:.4f}"],
                "tag": label_tag(d.get("label") or ""),
            })  # fmt: skip
        return out

    def flush(self) -> None:
        for s in (self.media_stream, self.stream):
            if s is not None:
                s.flush()
                os.fsync(s.fileno())

    def close(self) -> None:
        if getattr(self, "media_stream", None) is not None:
            self.media_stream.close()
        super().close()

    def records(self, path: Path) -> Iterator[Any]:
        raise UserError("--format camtrapdp cannot be combined with torchrun yet: run it in one process")

    def finalize(self, events: dict[str, dict[str, Any]] | None = None) -> None:
        """Assemble media.csv, observations.csv (plus an event-level observation for each of
        ``events``: event id -> its label and score), deployments.csv and datapackage.json."""
        with open(self.media_part, newline="", encoding="utf-8") as f:
            media = list(csv.DictReader(f))
        with open(self.obs_part, newline="", encoding="utf-8") as f:
            observations = list(csv.DictReader(f))
        observations += self._event_observations(observations, events or {})
        _write_csv(self.folder / "media.csv", MEDIA, media)
        _write_csv(self.folder / "observations.csv", OBSERVATIONS, observations)
        deployments = self._deployments(media)
        _write_csv(self.folder / "deployments.csv", DEPLOYMENTS, deployments)
        atomic_write_text(
            self.folder / "datapackage.json",
            json.dumps(self._package(media, observations, deployments), indent=2) + "\n",
        )
        self.media_part.unlink(missing_ok=True)
        self.obs_part.unlink(missing_ok=True)

    def _event_observations(
        self, observations: list[dict[str, str]], events: dict[str, dict[str, Any]]
    ) -> list[dict[str, str]]:
        """One event-level observation per event: its span and deployment from the media-level
        observations of its frames, its label from the sequence aggregation."""
        frames: dict[str, list[dict[str, str]]] = {}
        for o in observations:
            if o["eventID"]:
                frames.setdefault(o["eventID"], []).append(o)
        out = []
        for event, e in sorted(events.items()):
            rows = frames.get(event)
            if not rows:
                continue
            t = observation_type(e["label"])
            row = {k: "" for k in OBSERVATIONS}
            row.update({
                "observationID": "event_" + hashlib.sha1(event.encode()).hexdigest()[:12],
                "deploymentID": rows[0]["deploymentID"], "eventID": event,
                "eventStart": min(r["eventStart"] for r in rows), "eventEnd": max(r["eventEnd"] for r in rows),
                "observationLevel": "event", "observationType": t,
                "scientificName": scientific_name(e["label"]) if t == "animal" else "",
                "classificationMethod": "machine", "classifiedBy": self.options.get("model", {}).get("path", "imgcls"),
                "classificationTimestamp": self.stamp, "classificationProbability": f"{e['score']:.4f}",
                "observationTags": label_tag(e["label"]),
            })  # fmt: skip
            out.append(row)
        return out

    def _deployments(self, media: list[dict[str, str]]) -> list[dict[str, str]]:
        given: dict[str, dict[str, str]] = {}
        extra = self.options.get("deployments")
        if extra:
            with open(extra, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    key = row.get("deploymentID") or row.get("locationName") or ""
                    given[key] = row
        spans: dict[str, list[str]] = {}
        for m in media:
            spans.setdefault(m["deploymentID"], []).append(m["timestamp"])
        out = []
        for dep, stamps in sorted(spans.items()):
            row = {k: "" for k in DEPLOYMENTS}
            row.update({"deploymentID": dep, "locationID": dep, "locationName": dep,
                        "deploymentStart": min(stamps), "deploymentEnd": max(stamps)})  # fmt: skip
            row.update({k: v for k, v in given.get(dep, {}).items() if k in row and v})
            out.append(row)
        return out

    def _package(
        self,
        media: list[dict[str, str]],
        observations: list[dict[str, str]],
        deployments: list[dict[str, str]],
    ) -> dict[str, Any]:
        names = sorted({o["scientificName"] for o in observations if o.get("scientificName")})
        stamps = sorted(m["timestamp"] for m in media)
        coords = [
            (float(d["longitude"]), float(d["latitude"]))
            for d in deployments
            if d.get("latitude") and d.get("longitude")
        ]
        package: dict[str, Any] = {
            "resources": [
                {
                    "name": n,
                    "path": f"{n}.csv",
                    "profile": "tabular-data-resource",
                    "format": "csv",
                    "mediatype": "text/csv",
                    "encoding": "utf-8",
                    "schema": f"{SCHEMA}/{n}-table-schema.json",
                }
                for n in ("deployments", "media", "observations")
            ],
            "profile": f"{SCHEMA}/camtrap-dp-profile.json",
            "name": "imgcls-predictions",
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "title": "Machine classifications by imgcls",
            "contributors": [{"title": "imgcls", "role": "contributor"}],
            "sources": [{"title": "imgcls", "version": str(self.options.get("version", ""))}],
            "project": {
                "title": "Camera trap classifications",
                "samplingDesign": "opportunistic",
                "captureMethod": ["activityDetection"],
                "individualAnimals": False,
                "observationLevel": ["media", "event"]
                if any(o["observationLevel"] == "event" for o in observations)
                else ["media"],
            },
            "temporal": {
                "start": stamps[0][:10] if stamps else "",
                "end": stamps[-1][:10] if stamps else "",
            },
            "taxonomic": [{"scientificName": n} for n in names],
        }
        if coords:
            package["spatial"] = _bounding_polygon(coords)
        meta = self.options.get("metadata")
        if meta:
            try:
                package.update(json.loads(Path(meta).read_text(encoding="utf-8")))
            except (OSError, ValueError) as e:
                raise UserError(f"--camtrapdp-metadata {meta}: {e}") from None
        return package


def _bounding_polygon(coords: list[tuple[float, float]]) -> dict[str, Any]:
    """The GeoJSON polygon of the deployments' bounding box (Camtrap DP's ``spatial``)."""
    xs, ys = [c[0] for c in coords], [c[1] for c in coords]
    ring = [[min(xs), min(ys)], [max(xs), min(ys)], [max(xs), max(ys)], [min(xs), max(ys)], [min(xs), min(ys)]]
    return {"type": "Polygon", "coordinates": [ring]}


def _write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    from imgcls.io import atomic_write_csv

    atomic_write_csv(path, header, rows)


def _parse_offset(text: str) -> timezone:
    t = str(text).strip()
    if t in ("Z", "UTC", "+00:00", "0"):
        return timezone.utc
    try:
        sign = -1 if t.startswith("-") else 1
        hours, _, minutes = t.lstrip("+-").partition(":")
        return timezone(sign * timedelta(hours=int(hours), minutes=int(minutes or 0)))
    except ValueError:
        raise UserError(f"--utc-offset must look like +02:00, not {text!r}") from None


register_writer(MegaDetectorWriter)
register_writer(CamtrapDPWriter)
