"""Sequences (events): the frames one trigger of a camera took.

Images are grouped by their ``seq_id`` when the metadata has one (COCO Camera Traps); otherwise
by camera — the folder holding the image — and time: frames of one folder whose EXIF
``DateTimeOriginal`` lie within ``gap`` seconds of the previous frame belong to one event
(30 s by default). Images without a timestamp form events of their own. Times of one camera are
compared on its clock: where some carry a UTC offset and some do not, each is taken as the clock
time it shows.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from PIL import Image

EXIF_IFD = 0x8769
DATETIME_ORIGINAL = 0x9003
DATETIME = 0x0132
DEFAULT_GAP = 30.0


def parse_datetime(text: str | None) -> datetime | None:
    """EXIF ('2024:05:01 10:00:03'), ISO 8601 or 'YYYY-MM-DD HH:MM:SS' -> datetime."""
    if not text:
        return None
    t = str(text).strip().replace("\x00", "")
    for fmt in (
        "%Y:%m:%d %H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%z",
        "%Y-%m-%dT%H:%M:%SZ",
    ):
        try:
            return datetime.strptime(t, fmt)
        except ValueError:
            continue
    try:
        return datetime.fromisoformat(t)
    except ValueError:
        return None


def exif_datetime(path: str) -> datetime | None:
    """``DateTimeOriginal`` (else ``DateTime``) from the file's EXIF, read from the header only."""
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            value = exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL) or exif.get(DATETIME)
    except (OSError, ValueError, SyntaxError):
        return None
    return parse_datetime(value)


def camera_names(folders: Sequence[str]) -> dict[str, str]:
    """A name for each camera folder: its path below the folders they all share, so that
    site_a/100RECNX and site_b/100RECNX are two cameras (card folder names repeat from camera
    to camera); a single folder is named by itself."""
    unique = sorted(set(folders))
    if len(unique) == 1:
        return {unique[0]: os.path.basename(unique[0]) or unique[0]}
    common = os.path.commonpath(unique) if unique else ""
    return {f: os.path.relpath(f, common).replace(os.sep, "/") for f in unique}


def on_clock(stamps: list[datetime | None], rows: list[int]) -> None:
    """Make the times of ``rows`` comparable, in place: a mix of times with and without a UTC
    offset (which Python cannot order) becomes the clock times they show, the camera's clock
    being the one thing they share; times all with or all without an offset stay as they are."""
    aware = {stamps[i].tzinfo is not None for i in rows if stamps[i] is not None}  # type: ignore[union-attr]
    if len(aware) == 2:
        for i in rows:
            t = stamps[i]
            stamps[i] = t.replace(tzinfo=None) if t is not None else None


def assign_events(
    paths: Sequence[str],
    *,
    sequence_ids: Sequence[str] | None = None,
    times: Sequence[datetime | None] | None = None,
    gap: float = DEFAULT_GAP,
) -> list[str]:
    """An event id per image (see the module docstring)."""
    if sequence_ids is not None and any(sequence_ids):
        return [s if s else f"image:{p}" for p, s in zip(paths, sequence_ids, strict=True)]
    stamps = list(times) if times is not None else [exif_datetime(p) for p in paths]
    by_camera: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        by_camera[os.path.dirname(os.path.abspath(p))].append(i)
    events = [""] * len(paths)
    names = camera_names(list(by_camera))
    for camera, rows in by_camera.items():
        label = names[camera]
        on_clock(stamps, rows)
        timed = sorted((i for i in rows if stamps[i] is not None), key=lambda i: (stamps[i], paths[i]))
        n, last = 0, None
        for i in timed:
            t = stamps[i]
            assert t is not None
            if last is None or (t - last).total_seconds() > gap:
                n += 1
            events[i] = f"{label or camera}#{n}"
            last = t
        for i in rows:
            if stamps[i] is None:
                events[i] = f"image:{paths[i]}"
    return events
