"""Camera Trap Data Packages (Camtrap DP 1.0, https://camtrap-dp.tdwg.org) as labelled data.

A package is a folder with ``datapackage.json``, ``deployments.csv``, ``media.csv`` and
``observations.csv`` (the resources' files as ``datapackage.json`` names them). It is what
Agouti, Wildlife Insights exports, camtraptor and imgcls's own ``--format camtrapdp`` write, so
data reviewed in those tools trains here without conversion.

- **Labels** come from the observations: ``animal`` gives its ``scientificName``; ``blank``,
  ``human`` and ``vehicle`` give those words; ``unknown`` and ``unclassified`` observations label
  nothing. Media-level observations (``observationLevel`` ``media``) label their ``mediaID``;
  event-level ones label every image of their deployment taken from ``eventStart`` to
  ``eventEnd``; an image with media-level observations ignores the event-level ones. Where a
  person classified an image (``classificationMethod`` ``human``), the machine's observations of
  it are ignored. A package imgcls wrote (``predict --format camtrapdp``) gives back the model's
  own class names (``cat``, a crop's ``empty``, ``person``), which its observations keep in
  ``observationTags`` (``imgcls-label:cat``), unless a person changed the observation since.
- **Crops**: observations with a bounding box (``bboxX``, ``bboxY``, ``bboxWidth``,
  ``bboxHeight``) become one row each, the square crop around the box (as ``--detections``
  gives); an image whose observations have no box is one whole-image row. In an image with
  boxes, an observation without one names the same animal as a boxed one of its label, or else
  something no crop holds: it is listed in ``skipped.csv`` with that reason, not trained on (a
  whole-frame row would carry the boxed animals under another label), and left out on purpose:
  never an unusable file (the image's crops are used).
- **Times**: a timestamp without a UTC offset is read in its deployment's zone (the offset of
  its ``deploymentStart``/``deploymentEnd``, else of its media's, else of its events'), so an
  event whose span is written in UTC covers the local frames it names.
- **Metadata**: ``location`` is the deployment's ``locationID`` (else ``locationName``, else the
  ``deploymentID``: the site, so ``--split-by location`` keeps a site on one side), ``deployment``
  the ``deploymentID``, ``sequence`` the ``eventID``, ``datetime`` the media ``timestamp``.
- **Files**: ``filePath`` relative to the package folder (or to ``--image-root``); a URL is read
  from ``--image-root``/``fileName`` (nothing is downloaded). Videos are skipped with the reason.

The data is multi-class (one label per image or crop) unless ``--task multilabel`` asks: an image
whose observations (without boxes) name several labels is skipped with that reason, where
multi-label reading keeps them all.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.data.sources.coco import load_json
from imgcls.data.sources.detections import clip_box
from imgcls.data.table import NO_CROP, DataTable, listed_path, make_targets
from imgcls.errors import UserError

PACKAGE = "datapackage.json"
NAMED_TYPES = ("blank", "human", "vehicle")
#: the observation tag in which imgcls's own packages keep the model's class name
LABEL_TAG = "imgcls-label:"


def observation_type(label: str) -> str:
    """The Camtrap DP ``observationType`` of a class name."""
    from imgcls.decisions import BLANK_NAMES

    low = label.strip().lower()
    if low in BLANK_NAMES:
        return "blank"
    if low in ("person", "human", "people"):
        return "human"
    if low in ("vehicle", "car", "truck"):
        return "vehicle"
    if low in ("unknown", ""):
        return "unknown"
    return "animal"


def scientific_name(label: str) -> str:
    """The most specific rank of a taxonomy label ('...;canidae;vulpes vulpes' -> 'Vulpes vulpes')."""
    from imgcls.decisions import TAXONOMY_SEP

    name = label.split(TAXONOMY_SEP)[-1].strip()
    return name[:1].upper() + name[1:] if name else name


def is_camtrapdp(path: Path) -> bool:
    """A package folder, or its ``datapackage.json``."""
    return (path.is_dir() and (path / PACKAGE).is_file()) or (path.is_file() and path.name == PACKAGE)


@dataclass
class Media:
    path: str
    deployment: str
    timestamp: str
    when: datetime | None  # as written: with its offset, or without one (see _instants)
    event: str = ""  # an eventID the media row carries itself (earlier versions' sequenceID)


@dataclass
class Package:
    folder: Path
    deployments: dict[str, dict[str, str]]
    media: dict[str, Media]
    observations: list[dict[str, str]]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_camtrapdp(path: Path, *, multilabel: bool | None = None, image_root: Path | None = None) -> DataTable:
    pkg = read_package(path, image_root)
    rows = labelled_rows(pkg)
    multilabel = bool(multilabel)  # species classification: one label per image unless asked
    kept = []
    for media_id, labels, box in rows:
        if not multilabel and len(labels) > 1:
            why = f"several labels ({'; '.join(labels)}) in one image; --task multilabel keeps them"
            pkg.skipped.append((pkg.media[media_id].path, why))
        else:
            kept.append((media_id, labels, box))
    if not kept:
        raise UserError(f"{pkg.folder}: no labelled images in the package (see its observations.csv)")
    class_names = sorted({n for _, labels, _ in kept for n in labels})
    boxes = np.array([box if box is not None else (np.nan,) * 4 for _, _, box in kept], dtype=np.float64)
    return DataTable(
        kind="camtrapdp",
        root=pkg.folder,
        paths=[pkg.media[m].path for m, _, _ in kept],
        targets=make_targets([labels for _, labels, _ in kept], class_names, multilabel),
        class_names=class_names,
        multilabel=multilabel,
        columns=_columns(pkg, [m for m, _, _ in kept]),
        boxes=boxes if any(box is not None for _, _, box in kept) else None,
        skipped=pkg.skipped,
    )


def _columns(pkg: Package, media_ids: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"location": [], "deployment": [], "sequence": [], "datetime": []}
    for m in media_ids:
        media = pkg.media[m]
        dep = pkg.deployments.get(media.deployment, {})
        out["location"].append(dep.get("locationID") or dep.get("locationName") or media.deployment)
        out["deployment"].append(media.deployment)
        out["sequence"].append(media.event)
        out["datetime"].append(media.timestamp)
    return out


def read_package(path: Path, image_root: Path | None = None) -> Package:
    """The package's deployments, media (resolved to local files) and observations."""
    package_file = path / PACKAGE if path.is_dir() else path
    folder = package_file.parent
    meta = load_json(package_file)
    if not isinstance(meta, dict):
        raise UserError(f"{package_file}: not a data package (a JSON object with 'resources')")
    files = _resource_files(meta, folder)
    for name in ("media", "observations"):
        if not files[name].is_file():
            raise UserError(f"{folder}: a Camtrap DP package needs {files[name].name} ({name})")
    deployments = {r.get("deploymentID", ""): r for r in _rows(files["deployments"])} if files[
        "deployments"
    ].is_file() else {}  # fmt: skip
    pkg = Package(folder, deployments, {}, _rows(files["observations"]))
    for r in _rows(files["media"]):
        media_id = r.get("mediaID", "")
        where, reason = _media_file(r, folder, image_root)
        if reason:
            pkg.skipped.append((where, reason))
            continue
        stamp = r.get("timestamp", "")
        pkg.media[media_id] = Media(where, r.get("deploymentID", ""), stamp, _when(stamp),
                                    r.get("eventID") or r.get("sequenceID") or "")  # fmt: skip
    return pkg


def _resource_files(meta: dict[str, Any], folder: Path) -> dict[str, Path]:
    files = {name: folder / f"{name}.csv" for name in ("deployments", "media", "observations")}
    for res in meta.get("resources") or []:
        if isinstance(res, dict) and res.get("name") in files and isinstance(res.get("path"), str):
            if "://" in res["path"]:
                raise UserError(f"{folder}: the {res['name']} resource is a URL; download the package first")
            files[res["name"]] = folder / res["path"]
    return files


def _rows(path: Path) -> list[dict[str, str]]:
    from imgcls.data.sources.manifest import read_rows

    _, rows, _ = read_rows(path)
    return [{k: (v or "").strip() for k, v in r.items()} for r in rows]


def _media_file(r: dict[str, str], folder: Path, image_root: Path | None) -> tuple[str, str]:
    """(the local file, "") or (what was named, why it cannot be used)."""
    raw, name = r.get("filePath", ""), r.get("fileName", "")
    kind = r.get("fileMediatype", "")
    if kind and not kind.startswith("image/"):
        return raw or name, f"not an image ({kind})"
    if "://" in raw:
        if image_root is None:
            return raw, "a URL: imgcls reads local files (give --image-root, the folder that holds them)"
        return listed_path(image_root, name or raw.rsplit("/", 1)[-1]), ""
    if not raw:
        return r.get("mediaID", ""), "no filePath"
    return listed_path(image_root or folder, raw), ""


def _when(stamp: str) -> datetime | None:
    """An ISO 8601 time as written (with its UTC offset where it has one), None if it is not one."""
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None
    except ValueError:
        return None


def _zones(pkg: Package, events: list[dict[str, str]]) -> dict[str, tzinfo]:
    """deploymentID -> the UTC offset its times without one are read in: the offset of its
    ``deploymentStart``/``deploymentEnd`` (Camtrap DP requires one there), else the first of its
    media's, else of its event observations'."""
    zones: dict[str, tzinfo] = {}
    written = [(dep, r.get(k, "")) for dep, r in pkg.deployments.items() for k in ("deploymentStart", "deploymentEnd")]
    written += [(m.deployment, m.timestamp) for m in pkg.media.values()]
    written += [(o.get("deploymentID", ""), o.get(k, "")) for o in events for k in ("eventStart", "eventEnd")]
    for dep, stamp in written:
        when = _when(stamp)
        if dep not in zones and when is not None and when.tzinfo is not None:
            zones[dep] = when.tzinfo
    return zones


def _instant(when: datetime, zone: tzinfo | None) -> datetime:
    """A comparable value: the instant in UTC (a time without an offset taken in ``zone``); with
    no zone known, the clock time as written (then every time of the deployment lacks one)."""
    if when.tzinfo is None:
        if zone is None:
            return when
        when = when.replace(tzinfo=zone)
    return when.astimezone(timezone.utc).replace(tzinfo=None)


def label_of(o: dict[str, str]) -> str | None:
    """The label an observation gives, None for unknown / unclassified / unnamed animals: the
    model's own class name where imgcls wrote the observation and it still says what imgcls
    wrote, else ``scientificName`` (animals) or the observation type."""
    kind = o.get("observationType", "").lower()
    name = (o.get("scientificName") or None) if kind == "animal" else kind if kind in NAMED_TYPES else None
    if name is None:
        return None
    tags = [t.strip() for t in o.get("observationTags", "").split("|")]
    own = next((t[len(LABEL_TAG) :] for t in tags if t.startswith(LABEL_TAG)), "")
    if own and observation_type(own) == kind and (kind != "animal" or scientific_name(own) == name):
        return own
    return name


def _box(o: dict[str, str]) -> tuple[float, float, float, float] | None:
    try:
        values = [float(o[k]) for k in ("bboxX", "bboxY", "bboxWidth", "bboxHeight")]
    except (KeyError, ValueError):
        return None
    return clip_box(values)


def _prefer_people(obs: list[dict[str, str]]) -> list[dict[str, str]]:
    human = [o for o in obs if o.get("classificationMethod", "").lower() == "human"]
    return human or obs


def labelled_rows(pkg: Package) -> list[tuple[str, list[str], tuple[float, float, float, float] | None]]:
    """(mediaID, labels, crop box or None) of every usable row, in media order."""
    by_media: dict[str, list[dict[str, str]]] = defaultdict(list)
    events: list[dict[str, str]] = []
    for o in pkg.observations:
        level = o.get("observationLevel", "").lower() or ("media" if o.get("mediaID") else "event")
        if level == "media" and o.get("mediaID") in pkg.media:
            by_media[o["mediaID"]].append(o)
        elif level == "event":
            events.append(o)
    covering = _event_cover(pkg, events, set(by_media))
    out: list[tuple[str, list[str], tuple[float, float, float, float] | None]] = []
    for media_id, media in pkg.media.items():
        obs = _prefer_people(by_media.get(media_id) or covering.get(media_id, []))
        if not media.event:
            media.event = next((o["eventID"] for o in obs if o.get("eventID")), "")
        named = [(label, _box(o)) for o in obs if (label := label_of(o)) is not None]
        if not named:
            why = "no observation" if not obs else "its observations name no label (unknown or unclassified)"
            pkg.skipped.append((media.path, why))
            continue
        crops = [(label, box) for label, box in named if box is not None]
        if crops:
            out += [(media_id, [label], box) for label, box in crops]
            boxed = {label for label, _ in crops}
            for label in dict.fromkeys(label for label, box in named if box is None and label not in boxed):
                why = f"{NO_CROP} ({label!r}), in an image whose other observations have boxes: no crop holds it"
                pkg.skipped.append((media.path, f"{why}; the image's crops are used"))
        else:
            out.append((media_id, sorted({label for label, _ in named}), None))
    return out


def _event_cover(pkg: Package, events: list[dict[str, str]], labelled: set[str]) -> dict[str, list[dict[str, str]]]:
    """mediaID -> the event-level observations whose deployment and time span hold it (media
    with media-level observations of their own left out)."""
    zones = _zones(pkg, events)
    timeline: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for media_id, m in pkg.media.items():
        if m.when is not None and media_id not in labelled:
            timeline[m.deployment].append((_instant(m.when, zones.get(m.deployment)), media_id))
    for frames in timeline.values():
        frames.sort()
    out: dict[str, list[dict[str, str]]] = defaultdict(list)
    for o in events:
        dep = o.get("deploymentID", "")
        start, end = _when(o.get("eventStart", "")), _when(o.get("eventEnd", ""))
        frames = timeline.get(dep, [])
        if start is None or end is None or not frames:
            continue
        start, end = _instant(start, zones.get(dep)), _instant(end, zones.get(dep))
        stamps = [f[0] for f in frames]
        lo, hi = bisect_left(stamps, start), bisect_right(stamps, end)
        for _, media_id in frames[lo:hi]:
            out[media_id].append(o)
    return out
