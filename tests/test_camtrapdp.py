"""A Camera Trap Data Package (Camtrap DP 1.0) as ``--data``: media- and event-level
observations, people's classifications over the machine's, boxes as crops, locations and events
(imgcls.data.sources.camtrapdp). imgcls's own packages read back: tests/test_cameratrap.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data import load_source
from imgcls.errors import UserError

OBS = ["observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd", "observationLevel",
       "observationType", "scientificName", "count", "bboxX", "bboxY", "bboxWidth", "bboxHeight",
       "classificationMethod"]  # fmt: skip


def write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def obs(oid: str, dep: str, media: str, level: str, kind: str, name: str = "", box: str = "", *,
        event: str = "", start: str = "", end: str = "", method: str = "human") -> list[str]:  # fmt: skip
    b = box.split() if box else ["", "", "", ""]
    return [oid, dep, media, event, start, end, level, kind, name, "1", *b, method]


@pytest.fixture
def package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "media" / "d1").mkdir(parents=True)
    (pkg / "media" / "d2").mkdir(parents=True)
    names = ["a", "b", "c", "d", "e", "f", "g", "h"]
    for i, n in enumerate(names):
        Image.new("RGB", (64, 48), (20 * i, 100, 50)).save(pkg / "media" / ("d1" if i < 5 else "d2") / f"{n}.jpg")
    resources = [{"name": n, "path": f"{n}.csv", "profile": "tabular-data-resource"}
                 for n in ("deployments", "media", "observations")]  # fmt: skip
    (pkg / "datapackage.json").write_text(json.dumps({"profile": "camtrap-dp", "resources": resources}))
    write(pkg / "deployments.csv", ["deploymentID", "locationID", "locationName"],
          [["d1", "loc-north", "North"], ["d2", "", "South"]])  # fmt: skip
    media = [[f"m_{n}", "d1" if i < 5 else "d2", f"2024-05-01T06:00:0{i}+02:00",
              f"media/{'d1' if i < 5 else 'd2'}/{n}.jpg", f"{n}.jpg", "image/jpeg"] for i, n in enumerate(names)]  # fmt: skip
    media += [["m_video", "d2", "2024-05-01T07:00:00+02:00", "media/d2/v.mp4", "v.mp4", "video/mp4"],
              ["m_url", "d2", "2024-05-01T07:00:00+02:00", "https://example.org/x.jpg", "x.jpg", "image/jpeg"]]  # fmt: skip
    write(pkg / "media.csv", ["mediaID", "deploymentID", "timestamp", "filePath", "fileName", "fileMediatype"], media)
    write(pkg / "observations.csv", OBS, [
        obs("o1", "d1", "m_a", "media", "animal", "Vulpes vulpes", "0.1 0.1 0.3 0.3", event="e1"),
        obs("o2", "d1", "m_a", "media", "animal", "Lepus europaeus", "0.6 0.5 0.2 0.3", event="e1"),
        obs("o3", "d1", "m_b", "media", "blank", event="e1"),
        # an event over c and d (06:00:02 to 06:00:03 at +02:00 = 04:00:02Z to 04:00:03Z); e is outside it
        obs("o4", "d1", "", "event", "animal", "Capreolus capreolus", event="e2", start="2024-05-01T04:00:02Z",
            end="2024-05-01T04:00:03Z"),
        obs("o5", "d1", "m_d", "media", "animal", "Sus scrofa", method="machine"),  # d: its own observation
        obs("o6", "d1", "m_e", "media", "unknown"),  # names nothing
        obs("o7", "d2", "m_f", "media", "human"),
        obs("o8", "d2", "m_g", "media", "animal", "Vulpes vulpes", method="machine"),  # the machine says fox ...
        obs("o9", "d2", "m_g", "media", "animal", "Meles meles"),  # ... a person says badger: the person counts
        obs("o10", "d2", "m_h", "media", "animal", "Vulpes vulpes"),  # two species, no boxes
        obs("o11", "d2", "m_h", "media", "animal", "Meles meles"),
    ])  # fmt: skip
    return pkg


def test_labels_crops_locations_and_events(package: Path) -> None:
    t = load_source(package)
    assert t.kind == "camtrapdp" and not t.multilabel
    rows = [(Path(p).name, t.label_names(i)[0]) for i, p in enumerate(t.paths)]
    assert rows == [("a.jpg", "Vulpes vulpes"), ("a.jpg", "Lepus europaeus"), ("b.jpg", "blank"),
                    ("c.jpg", "Capreolus capreolus"), ("d.jpg", "Sus scrofa"), ("f.jpg", "human"),
                    ("g.jpg", "Meles meles")]  # fmt: skip
    assert t.boxes is not None
    assert t.boxes[0] == pytest.approx([0.1, 0.1, 0.3, 0.3]) and np.isnan(t.boxes[2]).all()
    assert t.columns["location"] == ["loc-north"] * 5 + ["South"] * 2  # locationID, else locationName
    assert t.columns["deployment"][-1] == "d2" and t.columns["sequence"][:4] == ["e1", "e1", "e1", "e2"]
    assert t.columns["datetime"][0] == "2024-05-01T06:00:00+02:00"
    skipped = {p if "://" in p else Path(p).name: why for p, why in t.skipped}
    assert skipped["e.jpg"].startswith("its observations name no label")
    assert skipped["v.mp4"] == "not an image (video/mp4)" and "a URL" in skipped["https://example.org/x.jpg"]
    assert "several labels (Meles meles; Vulpes vulpes)" in skipped["h.jpg"]
    assert load_source(package / "datapackage.json").paths == t.paths  # the file names the package too


def test_multilabel_and_files_from_an_image_root(package: Path, tmp_path: Path) -> None:
    t = load_source(package, multilabel=True)
    h = next(i for i, p in enumerate(t.paths) if p.endswith("h.jpg"))
    assert t.multilabel and t.label_names(h) == ["Meles meles", "Vulpes vulpes"]
    store = tmp_path / "downloads"
    store.mkdir()
    Image.new("RGB", (32, 32)).save(store / "x.jpg")
    with open(package / "observations.csv", "a", newline="") as f:
        csv.writer(f).writerow(obs("o12", "d2", "m_url", "media", "blank"))
    assert any(p == str((store / "x.jpg").resolve()) for p in load_source(package, image_root=store).paths)


def test_a_broken_package_is_one_line(package: Path) -> None:
    (package / "observations.csv").unlink()
    with pytest.raises(UserError, match=r"needs observations\.csv"):
        load_source(package)
    write(package / "observations.csv", OBS, [obs("o1", "d1", "m_e", "media", "unclassified")])
    with pytest.raises(UserError, match="no labelled images in the package"):
        load_source(package)
    (package / "datapackage.json").write_text("[1]")
    with pytest.raises(UserError, match="not a data package"):
        load_source(package)
