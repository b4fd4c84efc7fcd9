"""Camera traps: detections in (and their awkward cases), crops, leak-free splits, sequences,
decisions, and the MegaDetector / Camtrap DP / CSV outputs, from the command line."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctfactory import SITES, build
from imgcls.cameratrap.sequences import assign_events, exif_datetime
from imgcls.cli import main
from imgcls.data import load_source
from imgcls.data.image import BACKGROUND, crop_square
from imgcls.data.sources.detections import clip_box, crop_table, read_detections
from imgcls.errors import UserError


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="module")
def crop_model(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ctrun") / "run"
    code = main([
        "train", "--data", str(world["cct"]), "--detections", str(world["md"]), "--det-threshold", "0.2",
        "--arch", "lenet", "--pretrained", "none", "--epochs", "6", "--image-size", "32", "--batch-size", "8",
        "--lr", "0.01", "--out", str(out), "--cache-dir", str(out.parent / "cache"),
    ])  # fmt: skip
    assert code == 0
    return out


def test_megadetector_file_with_awkward_boxes(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "a.jpg")
    md = {
        "detection_categories": {"1": "animal", "2": "person"},
        "images": [
            {"file": "a.jpg", "detections": [
                {"category": "1", "conf": 0.9, "bbox": [0.8, 0.7, 0.5, 0.5]},  # runs off the frame: clipped
                {"category": "1", "conf": 0.8, "bbox": [0.2, 0.2, 0.0, 0.3]},  # zero area: dropped
                {"category": "1", "conf": 0.7, "bbox": [1.2, 0.1, 0.1, 0.1]},  # outside: dropped
                {"category": "2", "conf": 0.95, "bbox": [0.0, 0.0, 0.5, 1.0]},
            ]},
            {"file": "missing.jpg", "failure": "Failure image access"},
        ],
    }  # fmt: skip
    (tmp_path / "md.json").write_text(json.dumps(md))
    dets = read_detections(tmp_path / "md.json")
    a = dets.lookup(str(tmp_path / "a.jpg"))
    assert a is not None and [d.category for d in a] == ["animal", "person"] and dets.dropped == 2
    assert a[0].bbox == pytest.approx((0.8, 0.7, 0.2, 0.3))
    assert dets.failures[str(tmp_path / "missing.jpg")] == "Failure image access"
    assert dets.lookup(str(tmp_path / "unknown.jpg")) is None
    assert clip_box([0.5, 0.5, float("nan"), 0.1]) is None
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(UserError, match="malformed JSON"):
        read_detections(tmp_path / "bad.json")
    (tmp_path / "nolist.json").write_text('{"info": {}}')
    with pytest.raises(UserError, match="not a MegaDetector results file"):
        read_detections(tmp_path / "nolist.json")
    (tmp_path / "baddet.json").write_text('{"images": [{"file": "a.jpg", "detections": [{"conf": 0.5}]}]}')
    with pytest.raises(UserError, match="malformed detection"):
        read_detections(tmp_path / "baddet.json")


def test_listings_written_on_windows_with_backslashes(world: dict[str, Path], tmp_path: Path) -> None:
    md = json.loads(world["md"].read_text())
    cct = json.loads(world["cct"].read_text())
    for im in md["images"]:
        im["file"] = im["file"].replace("/", "\\")
    for im in cct["images"]:
        im["file_name"] = im["file_name"].replace("/", "\\")
    win_md, win_cct = world["md"].with_name("md_win.json"), world["cct"].with_name("cct_win.json")
    win_md.write_text(json.dumps(md))
    win_cct.write_text(json.dumps(cct))
    table = load_source(win_cct, multilabel=False)
    assert table.paths == load_source(world["cct"], multilabel=False).paths
    crops = crop_table(table, read_detections(win_md), threshold=0.2)
    expected = crop_table(table, read_detections(world["md"]), threshold=0.2)
    assert len(crops) == len(expected) > 0
    # the MegaDetector output keeps the file names as the input spelled them
    assert set(read_detections(win_md).files.values()) == {im["file"] for im in md["images"]}


def test_square_crop_with_margin_pads_outside_the_frame() -> None:
    img = Image.new("RGB", (100, 50), (255, 0, 0))
    crop = crop_square(img, (0.9, 0.0, 0.1, 0.4), margin=0.25)
    assert crop.size[0] == crop.size[1] == 30  # longer side 20 px, + 2 * 25%
    arr = np.asarray(crop)
    assert tuple(arr[15, 0]) == (255, 0, 0)  # inside the frame
    assert tuple(arr[15, -1]) == BACKGROUND and tuple(arr[0, 15]) == BACKGROUND  # beyond the edges


def test_crop_table_rows_and_skips(world: dict[str, Path]) -> None:
    table = load_source(world["cct"], multilabel=False)
    crops = crop_table(table, read_detections(world["md"]), threshold=0.2)
    assert crops.boxes is not None and len(crops) == len(crops.boxes)
    assert "empty" not in {crops.label_names(i)[0] for i in range(len(crops))}
    reasons = {r for _, r in crops.skipped}
    assert any(r.startswith("blank: no animal detection at or above 0.2") for r in reasons)
    assert set(crops.columns) >= {"location", "sequence", "image", "detection_conf"}


def test_training_on_crops_splits_by_location(crop_model: Path) -> None:
    with open(crop_model / "splits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    site = {r["path"]: Path(r["path"]).parent.name for r in rows}
    train = {site[r["path"]] for r in rows if r["split"] == "train"}
    val = {site[r["path"]] for r in rows if r["split"] == "val"}
    assert val and not train & val  # no site on both sides
    # the crops of one frame are told apart by their box, as a corrections file names them
    assert all(len(r["box"].split()) == 4 for r in rows)
    assert len({(r["path"], r["box"]) for r in rows}) == len(rows)
    import yaml

    cfg = yaml.safe_load((crop_model / "config.yaml").read_text())
    assert cfg["data"]["split_by"] == "location"
    info = json.loads((crop_model / "model" / "config.json").read_text())
    assert info["provenance"]["detection_crops"]["threshold"] == 0.2


def test_evaluate_per_site_with_detection_tradeoff(world: dict[str, Path], crop_model: Path, tmp_path: Path) -> None:
    r = imgcls_evaluate(crop_model / "model", world, tmp_path / "report")
    m = r.metrics
    assert {row["group"] for row in m["per_location"]} <= set(SITES)
    curve = m["detection_tradeoff"]
    assert curve[0]["threshold"] < curve[-1]["threshold"]
    assert curve[0]["animal_recall"] >= curve[-1]["animal_recall"]  # a higher bar keeps fewer animals
    assert curve[0]["blanks_removed"] <= curve[-1]["blanks_removed"]
    assert (tmp_path / "report" / "detection_tradeoff.png").is_file()
    assert "Per location" in (tmp_path / "report" / "report.html").read_text()


def test_evaluate_held_out_sites_counts_their_blank_frames(world: dict[str, Path], crop_model: Path) -> None:
    from imgcls.evaluate import evaluate

    with open(crop_model / "splits.csv", newline="") as f:
        val_sites = {Path(r["path"]).parent.name for r in csv.DictReader(f) if r["split"] == "val"}
    r = evaluate(crop_model / "model", world["cct"], detections=world["md"])  # default: the run's val split
    assert r.split == "val"
    assert {row["group"] for row in r.metrics["per_location"]} == val_sites
    # frames the training run skipped (blank by the detector) at the held-out sites are part of
    # the evaluated split: listed as skipped and counted in the detector trade-off
    skipped_sites = {Path(p).parent.name for p, _ in r.skipped}
    assert r.metrics["num_skipped"] > 0 and skipped_sites <= val_sites
    table = load_source(world["cct"], multilabel=False)
    n_val_images = sum(Path(p).parent.name in val_sites for p in table.paths)
    assert sum(Path(p).parent.name in val_sites for p, _ in r.skipped) + r.metrics["num_images"] >= n_val_images


def imgcls_evaluate(model: Path, world: dict[str, Path], out: Path):  # type: ignore[no-untyped-def]
    from imgcls.evaluate import evaluate

    return evaluate(model, world["cct"], split="all", detections=world["md"], out=out)


def test_predict_megadetector_format_with_sequences(world: dict[str, Path], crop_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "md_classified.json"
    args = ["predict", "--model", str(crop_model / "model"), str(world["images"]), "--detections", str(world["md"]),
            "--format", "megadetector", "--out", str(out), "--aggregate", "sequence", "--metadata", str(world["cct"])]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["info"]["format_version"] == "1.4"
    names = json.loads((crop_model / "model" / "config.json").read_text())["label_names"]
    assert doc["classification_categories"] == {str(i): n for i, n in enumerate(names)}
    assert doc["detection_categories"]["1"] == "animal"
    by_file = {im["file"]: im for im in doc["images"]}
    md = json.loads(world["md"].read_text())
    assert set(by_file) == {im["file"] for im in md["images"]}
    for src in md["images"]:
        got = by_file[src["file"]]["detections"]
        assert len(got) == len(src["detections"])  # every detection kept, classified or not
        for g, s in zip(got, src["detections"], strict=True):
            assert ("classifications" in g) == (s["conf"] >= 0.2)
            if "classifications" in g:
                probs = [p for _, p in g["classifications"]]
                assert probs == sorted(probs, reverse=True) and all(
                    c in doc["classification_categories"] for c, _ in g["classifications"]
                )
    assert not list(tmp_path.glob(".*partial*"))


def test_predict_csv_with_event_labels_and_camtrapdp(world: dict[str, Path], crop_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    base = ["predict", "--model", str(crop_model / "model"), str(world["images"]), "--detections", str(world["md"]),
            "--aggregate", "sequence", "--metadata", str(world["cct"])]  # fmt: skip
    assert main([*base, "--out", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(list(world["images"].rglob("*.JPG")))
    assert {"sequence", "sequence_label", "sequence_score"} <= set(rows[0])
    by_seq: dict[str, set[str]] = {}
    for r in rows:
        by_seq.setdefault(r["sequence"], set()).add(r["sequence_label"])
    assert all(len(v) == 1 for v in by_seq.values())  # one label per event
    blanks = [r for r in rows if r["label"] == "blank"]
    assert blanks and all(json.loads(r["top_k"]) == {"blank": float(r["score"])} for r in blanks)
    assert main([*base, "--out", str(out)]) == 0  # again: resumes, nothing doubled
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)

    pkg = tmp_path / "package"
    assert main([*base, "--format", "camtrapdp", "--out", str(pkg), "--utc-offset", "+02:00"]) == 0
    # the package holds its four files and nothing else (the run's side files live beside it)
    assert sorted(p.name for p in pkg.iterdir()) == [
        "datapackage.json", "deployments.csv", "media.csv", "observations.csv"
    ]  # fmt: skip
    with open(pkg / "media.csv", newline="") as f:
        media = list(csv.DictReader(f))
    assert len(media) == len(rows)
    for m in media:
        for key in (
            "mediaID",
            "deploymentID",
            "timestamp",
            "filePath",
            "filePublic",
            "fileMediatype",
        ):
            assert m[key], key
        assert m["timestamp"].endswith("+02:00") and m["timestamp"].startswith("2024-05-")
    with open(pkg / "observations.csv", newline="") as f:
        obs = list(csv.DictReader(f))
    levels = {o["observationLevel"] for o in obs}
    assert levels == {"media", "event"}
    assert {o["observationType"] for o in obs} <= {"animal", "blank", "unknown", "human", "vehicle"}
    assert all(o["eventStart"] and o["eventEnd"] and o["observationID"] for o in obs)
    assert all(o["eventStart"].endswith("+02:00") and o["eventEnd"].endswith("+02:00") for o in obs)
    events = [o for o in obs if o["observationLevel"] == "event"]
    assert all(o["eventStart"] <= o["eventEnd"] and not o["mediaID"] for o in events)
    animal = [o for o in obs if o["observationType"] == "animal" and o["observationLevel"] == "media"]
    assert animal and all(0 <= float(o["bboxX"]) <= 1 for o in animal)
    with open(pkg / "deployments.csv", newline="") as f:
        deps = {d["deploymentID"] for d in csv.DictReader(f)}
    assert deps == set(SITES)  # the metadata's locations
    package = json.loads((pkg / "datapackage.json").read_text())
    assert [r["name"] for r in package["resources"]] == ["deployments", "media", "observations"]
    assert package["temporal"]["start"] == "2024-05-01"


def test_camtrapdp_deployments_from_camera_folders_without_metadata(
    world: dict[str, Path], crop_model: Path, tmp_path: Path
) -> None:
    import shutil

    frames = sorted((world["images"] / "site_a").glob("*.JPG"))[:2]
    for site in ("north", "south"):  # two cameras, card folders of the same name
        card = tmp_path / "cards" / site / "100RECNX"
        card.mkdir(parents=True)
        for f in frames:
            shutil.copy(f, card / f.name)
    pkg = tmp_path / "package"
    argv = ["predict", "--model", str(crop_model / "model"), str(tmp_path / "cards"), "--format", "camtrapdp",
            "--out", str(pkg)]  # fmt: skip
    assert main(argv) == 0
    with open(pkg / "deployments.csv", newline="") as f:
        deps = sorted(d["deploymentID"] for d in csv.DictReader(f))
    assert deps == ["north/100RECNX", "south/100RECNX"]
    with open(pkg / "media.csv", newline="") as f:
        assert sorted({m["deploymentID"] for m in csv.DictReader(f)}) == deps
    # --overwrite starts the package afresh and removes only the package's own files
    (pkg / "README.txt").write_text("the user's note")
    (pkg / "media.csv").write_text("stale")
    assert main([*argv, "--overwrite"]) == 0
    assert (pkg / "README.txt").read_text() == "the user's note"
    with open(pkg / "media.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_decompression_bomb_among_detections_is_refused(crop_model: Path, tmp_path: Path) -> None:
    from imgfactory import png_bomb

    (tmp_path / "bomb.png").write_bytes(png_bomb())
    md = {"images": [{"file": "bomb.png", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.5, 0.5]}]}],
          "detection_categories": {"1": "animal"}}  # fmt: skip
    (tmp_path / "md.json").write_text(json.dumps(md))
    out = tmp_path / "p.csv"
    argv = ["predict", "--model", str(crop_model / "model"), str(tmp_path / "bomb.png"),
            "--detections", str(tmp_path / "md.json"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    with open(out, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert "too many pixels" in row["error"] and not row["label"]


def test_megadetector_format_needs_detections(
    crop_model: Path, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "predict",
                "--model",
                str(crop_model / "model"),
                str(world["images"]),
                "--format",
                "megadetector",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
    assert "needs --detections" in capsys.readouterr().err


def test_sequences_from_ids_and_from_exif_gaps(tmp_path: Path, world: dict[str, Path]) -> None:
    assert assign_events(["a", "b", "c"], sequence_ids=["s1", "s1", ""]) == ["s1", "s1", "image:c"]
    files = sorted(str(p) for p in (world["images"] / "site_a").glob("*.JPG"))
    assert exif_datetime(files[0]) == datetime(2024, 5, 1, 6, 0, 0)
    events = assign_events(files)  # bursts of 3 frames 2 s apart, bursts 1 h apart
    assert len(set(events)) == len(files) // 3
    assert len(set(assign_events(files, gap=1.0))) == len(files)  # 2 s > 1 s: every frame alone
    Image.new("RGB", (4, 4)).save(tmp_path / "no_exif.jpg")
    assert assign_events([str(tmp_path / "no_exif.jpg")]) == [f"image:{tmp_path / 'no_exif.jpg'}"]
    # two cameras whose card folders have the same name, triggered at the same moment
    when = datetime(2024, 5, 1, 6, 0, 0)
    two = [str(tmp_path / site / "100RECNX" / "IMG_0001.JPG") for site in ("site_a", "site_b")]
    events = assign_events(two, times=[when, when])
    assert events == ["site_a/100RECNX#1", "site_b/100RECNX#1"]


def test_event_label_is_the_models_own_decision(tmp_path: Path) -> None:
    from imgcls.artifacts import ModelInfo
    from imgcls.cameratrap.pipeline import event_labels
    from imgcls.predict import Classifier

    info = ModelInfo(arch="x", num_outputs=1, label_names=["blank", "deer"], task="binary", thresholds=[0.3])
    clf = Classifier(info=info, _backend=object(), label_names=info.label_names)
    side = tmp_path / "side.jsonl"
    side.write_text(
        "".join(json.dumps({"path": f"{i}.jpg", "sequence": "e1", "probs": [0.65, 0.35]}) + "\n" for i in range(2))
    )
    # a deer at p = 0.35 passes the model's threshold of 0.3, as it would for one image
    assert event_labels(side, clf)["e1"]["label"] == "deer"


def test_its_own_camtrapdp_package_reads_back_trains_evaluates_and_audits(
    world: dict[str, Path], crop_model: Path, tmp_path: Path
) -> None:
    """The round trip: predict writes a Camtrap DP package; read as --data it gives every
    classified detection as a crop with the model's own label and every blank image as a blank
    row, with the sites and events; train, evaluate and audit take it as it is."""
    import os

    base = ["predict", "--model", str(crop_model / "model"), str(world["images"]), "--detections", str(world["md"]),
            "--aggregate", "sequence", "--metadata", str(world["cct"])]  # fmt: skip
    pkg, lines = tmp_path / "package", tmp_path / "preds.jsonl"
    assert main([*base, "--format", "camtrapdp", "--out", str(pkg)]) == 0
    assert main([*base, "--out", str(lines)]) == 0
    expected = []
    for r in (json.loads(line) for line in lines.read_text().splitlines()):
        path = os.path.realpath(r["path"])
        if r["label"] == "blank":
            expected.append((path, "blank", None, r["sequence"]))
        for d in r["detections"]:
            expected.append((path, d["label"], tuple(round(v, 4) for v in d["bbox"]), r["sequence"]))
    table = load_source(pkg)
    assert table.boxes is not None
    got = [(p, table.label_names(i)[0], None if np.isnan(table.boxes[i]).any() else tuple(table.boxes[i].round(4)),
            table.columns["sequence"][i]) for i, p in enumerate(table.paths)]  # fmt: skip
    assert sorted(got, key=str) == sorted(expected, key=str)
    assert set(table.columns["location"]) == set(SITES) and not table.skipped

    run = tmp_path / "run"
    common = ["--arch", "lenet", "--pretrained", "none", "--image-size", "32", "--batch-size", "8",
              "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(["train", "--data", str(pkg), "--split-by", "location", "--epochs", "2", "--out", str(run),
                 "--no-export-onnx", *common]) == 0  # fmt: skip
    with open(run / "splits.csv", newline="") as f:
        site = dict(zip(table.paths, table.columns["location"], strict=True))
        sides = {(site[r["path"]], r["split"]) for r in csv.DictReader(f)}
    assert len({loc for loc, _ in sides}) == len(sides)  # each site on one side
    assert main(["evaluate", "--model", str(run / "model"), "--data", str(pkg), "--split", "all",
                 "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["num_images"] == len(table)
    assert main(["audit", "--data", str(pkg), "--model", str(run / "model"), "--out", str(tmp_path / "audit"),
                 "--no-duplicates"]) == 0  # fmt: skip
    with open(tmp_path / "audit" / "label_issues.csv", newline="") as f:
        header = next(csv.reader(f))
    assert "box" in header  # a finding names its crop


def test_the_audit_lists_frames_without_a_detection_apart_from_unusable_files(
    world: dict[str, Path], crop_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit"
    assert main(["audit", "--data", str(world["cct"]), "--detections", str(world["md"]), "--model",
                 str(crop_model / "model"), "--out", str(out), "--no-duplicates"]) == 0  # fmt: skip
    said = capsys.readouterr().out
    with open(out / "left_out.csv", newline="") as f:
        left_out = list(csv.DictReader(f))
    with open(out / "unusable.csv", newline="") as f:
        unusable = list(csv.DictReader(f))
    assert left_out and all(r["reason"].startswith("blank: no animal detection") for r in left_out)
    assert not any(r["reason"].startswith("blank") for r in unusable)
    assert f"left out on purpose  {len(left_out)} (frames without a detection" in said
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["left_out"], summary["unusable"]) == (len(left_out), len(unusable))


def test_blank_frames_are_not_unusable_files(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Most camera-trap frames are empty: frames without a detection are left out of crop
    training on purpose, so they neither count toward --max-skipped nor are called unusable."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(world["cct"]), "--detections", str(world["md"]), "--max-skipped", "0.01",
                 "--arch", "lenet", "--pretrained", "none", "--epochs", "1", "--image-size", "32", "--batch-size", "8",
                 "--no-export-onnx", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    said = capsys.readouterr().err
    with open(out / "skipped.csv", newline="") as f:
        blanks = sum(1 for r in csv.DictReader(f) if r["reason"].startswith("blank: no "))
    assert blanks and f"skipped {blanks} without a detection (blank)" in said and "unusable" not in said
    assert main(["evaluate", "--model", str(out / "model"), "--data", str(world["cct"]), "--detections",
                 str(world["md"]), "--split", "all", "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    line = capsys.readouterr().out.splitlines()[0]
    assert f"skipped ({blanks} left out on purpose: no detection" in line
