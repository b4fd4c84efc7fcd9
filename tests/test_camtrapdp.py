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


def _rewrite(path: Path, column: str, values: dict[str, str]) -> None:
    """Set ``column`` of the rows whose first field is a key of ``values``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0]) + ([column] if column not in rows[0] else [])
    for r in rows:
        first = r[header[0]]
        if first in values:
            r[column] = values[first]
    write(path, header, [[r.get(h, "") for h in header] for r in rows])


def test_an_observation_without_a_box_beside_boxed_ones_is_listed_not_lost(package: Path) -> None:
    """a.jpg: a fox and a hare boxed; a badger seen without a box has no crop to train on (it was
    dropped without a word), while a fox without a box is the boxed fox again."""
    with open(package / "observations.csv", "a", newline="") as f:
        csv.writer(f).writerows([obs("o12", "d1", "m_a", "media", "animal", "Meles meles", event="e1"),
                                 obs("o13", "d1", "m_a", "media", "animal", "Vulpes vulpes", event="e1")])  # fmt: skip
    t = load_source(package)
    assert [t.label_names(i)[0] for i, p in enumerate(t.paths) if p.endswith("a.jpg")] == [
        "Vulpes vulpes", "Lepus europaeus"]  # fmt: skip
    said = [why for p, why in t.skipped if p.endswith("a.jpg")]
    assert said == ["an observation without a box ('Meles meles'), in an image whose other observations have "
                    "boxes: no crop holds it; the image's crops are used"]  # fmt: skip


def test_an_observation_no_crop_holds_is_left_out_on_purpose_and_its_image_still_counts(
    package: Path, tmp_path: Path
) -> None:
    """The badger without a box beside a.jpg's boxed fox and hare is left out on purpose, not an
    unusable file: it counted toward --max-skipped (a package annotated so could stop a run), the
    start line called it unusable, and the audit listed a.jpg in unusable.csv and dropped both of
    its crops from the class balance (filtered by path). The balance filters by row: only a row
    that cannot be read (c.jpg, broken) is left out of it."""
    from imgcls.audit import audit
    from imgcls.config import RunConfig
    from imgcls.data.dataset import check_skipped
    from imgcls.data.table import count_left_out, left_out_on_purpose

    with open(package / "observations.csv", "a", newline="") as f:
        csv.writer(f).writerow(obs("o12", "d1", "m_a", "media", "animal", "Meles meles", event="e1"))
    (package / "media" / "d1" / "c.jpg").write_bytes(b"broken")
    t = load_source(package)
    note = next(why for p, why in t.skipped if p.endswith("a.jpg"))
    assert left_out_on_purpose(note)
    bad = len(t.skipped) - count_left_out(t.skipped)  # e.jpg's, h.jpg's, the video's and the URL's reasons
    check_skipped(bad, len(t) + len(t.skipped) - count_left_out(t.skipped), max_skipped=bad / (len(t) + bad))
    cfg = RunConfig()
    cfg.data.data = str(package)
    r = audit(cfg, out=tmp_path / "audit", labels=False, show=lambda *_: None)
    assert not [p for p, _ in r.unusable if p.endswith("a.jpg")] and [p for p, _ in r.left_out if p.endswith("a.jpg")]
    assert "c.jpg" in [Path(p).name for p, _ in r.unusable]
    counts = {row["class"]: sum(v for k, v in row.items() if k not in ("class", "share")) for row in r.balance}
    assert counts["Vulpes vulpes"] == 1 and counts["Lepus europaeus"] == 1  # a.jpg's crops
    assert counts["Capreolus capreolus"] == 0  # c.jpg: unreadable (d.jpg's own observation is Sus scrofa)


@pytest.mark.parametrize("naive", ["media", "events"])
def test_times_without_an_offset_are_read_in_the_deployments_zone(package: Path, naive: str) -> None:
    """The event over c (06:00:02 to 06:00:03 at +02:00) written with and without offsets: a
    time without one is the deployment's (its deploymentStart says +02:00), not UTC, so the
    event still covers c (it covered nothing, c was skipped as without observation)."""
    _rewrite(package / "deployments.csv", "deploymentStart", {"d1": "2024-05-01T00:00:00+02:00"})
    if naive == "media":
        _rewrite(
            package / "media.csv", "timestamp", {f"m_{n}": f"2024-05-01T06:00:0{i}" for i, n in enumerate("abcde")}
        )
    else:
        _rewrite(package / "observations.csv", "eventStart", {"o4": "2024-05-01T06:00:02"})
        _rewrite(package / "observations.csv", "eventEnd", {"o4": "2024-05-01T06:00:03"})
    t = load_source(package)
    labels = {Path(p).name: t.label_names(i)[0] for i, p in enumerate(t.paths)}
    assert labels["c.jpg"] == "Capreolus capreolus" and labels["d.jpg"] == "Sus scrofa"
    assert "e.jpg" not in labels


def test_times_with_and_without_offsets_group_into_events_on_one_clock(tmp_path: Path) -> None:
    """Frames of one camera whose times mix offsets and none (a crash: naive and aware times do
    not compare) are grouped on the camera's clock, as written."""
    from datetime import datetime, timedelta, timezone

    from imgcls.cameratrap.sequences import assign_events

    paths = [str(tmp_path / "cam" / f"{i}.jpg") for i in range(3)]
    zone = timezone(timedelta(hours=2))
    times = [datetime(2024, 5, 1, 6, 0, 0), datetime(2024, 5, 1, 6, 0, 2, tzinfo=zone), datetime(2024, 5, 1, 7)]
    assert assign_events(paths, times=times) == ["cam#1", "cam#1", "cam#2"]


def test_its_own_package_reads_back_with_the_models_class_names(tmp_path: Path) -> None:
    """predict --format camtrapdp read back as --data: 'cat' stayed 'Cat' (a scientific name is
    capitalised), a crop classified 'empty' became 'blank', 'person' became 'human'; the model's
    own names come back, and a name a person changed in the package afterwards wins."""
    from imgcls.cameratrap.writers import CamtrapDPWriter

    for n in "abcd":
        Image.new("RGB", (32, 24)).save(tmp_path / f"{n}.jpg")
    taxon = "mammalia;carnivora;felidae;felis catus"
    rows = [
        {"path": str(tmp_path / "a.jpg"), "label": "cat", "score": 0.9},
        {"path": str(tmp_path / "b.jpg"), "score": 0.8, "detections": [
            {"label": "empty", "category": "animal", "bbox": [0.1, 0.1, 0.2, 0.2], "score": 0.7},
            {"label": taxon, "category": "animal", "bbox": [0.5, 0.5, 0.3, 0.3], "score": 0.6}]},
        {"path": str(tmp_path / "c.jpg"), "score": 0.99, "detections": []},  # no detection: a blank frame
        {"path": str(tmp_path / "d.jpg"), "label": "person", "score": 0.9},
    ]  # fmt: skip
    pkg = tmp_path / "pkg"
    writer = CamtrapDPWriter(pkg)
    writer.open(resume=False)
    writer.write(rows)
    writer.close()
    writer.finalize()
    t = load_source(pkg)
    got = sorted((Path(p).name, t.label_names(i)[0]) for i, p in enumerate(t.paths))
    assert got == [("a.jpg", "cat"), ("b.jpg", "empty"), ("b.jpg", taxon), ("c.jpg", "blank"), ("d.jpg", "person")]
    with open(pkg / "observations.csv", newline="") as f:
        observations = list(csv.DictReader(f))
    for o in observations:  # a person corrects the cat in the package: the correction counts
        if o["scientificName"] == "Cat":
            o["scientificName"], o["classificationMethod"] = "Lynx lynx", "human"
    write(pkg / "observations.csv", list(observations[0]), [list(o.values()) for o in observations])
    assert load_source(pkg).label_names(0) == ["Lynx lynx"]


def test_a_class_of_whole_frames_and_crops_is_named_at_the_start_of_training(
    package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The network can learn whether a row is a crop or a whole frame instead of what it shows:
    training names the classes that mix them, with the counts."""
    from imgcls.cli import main

    boxed = [obs(f"x{i}", "d2", f"m_{n}", "media", "animal", "Vulpes vulpes", "0.2 0.2 0.5 0.5")
             for i, n in enumerate("fg")]  # fmt: skip
    write(package / "observations.csv", OBS, [
        *boxed, obs("x3", "d2", "m_h", "media", "animal", "Vulpes vulpes"),
        *[obs(f"y{n}", "d1", f"m_{n}", "media", "blank") for n in "abcde"],
        obs("x4", "d2", "m_f", "media", "animal", "Meles meles"),  # beside f's boxed fox: no crop holds it
    ])  # fmt: skip
    assert main(["train", "--data", str(package), "--arch", "lenet", "--pretrained", "none", "--epochs", "1",
                 "--image-size", "32", "--batch-size", "4", "--val-split", "0", "--no-export-onnx",
                 "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert ("warning: whole frames and detection crops in one class: Vulpes vulpes (1 whole frame, 2 crops): "
            "the network can learn the framing instead of what the image shows") in err  # fmt: skip
    assert "blank (" not in err.split("warning: whole frames")[1].splitlines()[0]
    assert "skipped 2 unusable, 1 observation without a box (the image's crops are used) (listed in" in err
