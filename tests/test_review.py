"""``imgcls review``: the queue (an audit's suspects, a predict output's least confident), the
decisions saved against a kill, the API, and the page driven by the keyboard in headless
Chromium (imgcls.review)."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data.corrections import read_corrections
from imgcls.errors import UserError
from imgcls.review import open_session
from imgcls.review.queue import from_predictions, read_predictions
from imgfactory import class_image, idx_dataset
from localnet import free_port


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def audit_folder(tmp_path: Path) -> Path:
    """An audit's output as imgcls audit writes it: three likely label errors, a leak, a pair
    that is no leak."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    paths = []
    for i in range(6):
        class_image(i % 3, rng, (40, 32)).save(images / f"im{i}.png")
        paths.append(str((images / f"im{i}.png").resolve()))
    audit = tmp_path / "audit"
    audit.mkdir()
    summary = {"images": 6, "classes": ["cat", "dog", "fox"], "multilabel": False, "data": str(images),
               "spec": str(images), "crop_margin": 0.1}  # fmt: skip
    (audit / "summary.json").write_text(json.dumps(summary))
    write_csv(audit / "label_issues.csv", ["rank", "path", "given", "suggested", "quality", "p_suggested", "split"], [
        [1, paths[0], "dog", "cat", 0.01, 0.93, "train"],
        [2, paths[1], "fox", "dog", 0.05, 0.81, "train"],
        [3, paths[2], "cat", "fox", 0.2, 0.55, "train"],
    ])  # fmt: skip
    header = ["path_a", "path_b", "distance", "kind", "split_a", "split_b", "leak", "label_a", "label_b"]
    write_csv(audit / "duplicates.csv", header, [
        [paths[3], paths[4], 0, "exact", "train", "test", True, "cat", "cat"],
        [paths[3], paths[5], 2, "near", "train", "train", False, "cat", "cat"],
    ])  # fmt: skip
    return audit


def test_the_queue_of_an_audit(audit_folder: Path) -> None:
    s = open_session(audit=audit_folder)
    kinds = [(it.kind, Path(it.path).name, it.label) for it in s.items]
    assert kinds == [("label", "im0.png", "dog"), ("label", "im1.png", "fox"), ("label", "im2.png", "cat"),
                     ("leak", "im4.png", "cat")]  # fmt: skip
    assert s.items[0].suggested == "cat" and s.items[0].candidates[0] == "cat"
    assert "the models say cat (0.93)" in s.items[0].why
    assert Path(s.items[3].other).name == "im3.png" and "test image, an exact copy of a train image" in s.items[3].why
    assert s.classes == ["cat", "dog", "fox"] and s.out == audit_folder / "corrections.csv"
    with pytest.raises(UserError, match="not an audit folder"):
        open_session(audit=audit_folder / "images")
    with pytest.raises(UserError, match="nothing to review"):
        open_session()


def test_the_least_confident_predictions_and_detection_crops(tmp_path: Path) -> None:
    rows = [[f"/x/{i}.jpg", "cat", score, json.dumps({"cat": score, "dog": 1 - score}), ""]
            for i, score in enumerate((0.9, 0.4, 0.6, 0.99))]  # fmt: skip
    rows.append(["/x/bad.jpg", "", "", "", "not an image"])
    preds = write_csv(tmp_path / "p.csv", ["path", "label", "score", "top_k", "error"], rows)
    items = from_predictions(preds, limit=2)
    assert [Path(it.path).name for it in items] == ["1.jpg", "2.jpg"] and items[0].candidates == ["cat", "dog"]
    assert items[0].why == "predicted cat with probability 0.40" and items[0].kind == "prediction"
    camera = {"path": "/x/cam.jpg", "label": "deer", "score": 0.7, "top_k": {"deer": 0.7}, "error": None,
              "detections": [{"bbox": [0.1, 0.2, 0.3, 0.4], "label": "fox", "score": 0.3, "top_k": {"fox": 0.3}},
                             {"bbox": [0.5, 0.5, 0.2, 0.2], "label": "deer", "score": 0.95, "top_k": {}}]}  # fmt: skip
    (tmp_path / "p.jsonl").write_text(json.dumps(camera) + "\n")
    crops = from_predictions(tmp_path / "p.jsonl", limit=10)
    assert [(it.box, it.label) for it in crops] == [("0.1000 0.2000 0.3000 0.4000", "fox"),
                                                    ("0.5000 0.5000 0.2000 0.2000", "deer")]  # fmt: skip
    (tmp_path / "p.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a predictions file"):
        from_predictions(tmp_path / "p.json", limit=1)
    with pytest.raises(UserError, match="predictions file not found"):
        from_predictions(tmp_path / "none.csv", limit=1)


def test_decisions_survive_a_kill_and_undo(audit_folder: Path) -> None:
    s = open_session(audit=audit_folder)
    s.decide(0, "relabel", "cat")
    s.decide(1, "accept")
    after = s.decide(2, "skip")
    assert after["position"] == 3 and after["counts"]["decided"] == 2  # a skip is no decision
    s.decide(3, "reject")
    assert s.undo()["position"] == 3  # back to the leak
    s.decide(3, "reject")
    with open(s.log, "a") as f:
        f.write('{"key": "half a line')  # killed mid-write
    again = open_session(audit=audit_folder)
    assert again.position() == 2 and again.counts() == {"accept": 1, "relabel": 1, "reject": 1, "skip": 1,
                                                         "decided": 3, "total": 4}  # fmt: skip  # the skipped one is back
    assert again.decide(0, "skip")["decision"] == ["relabel", "cat"]  # skipping keeps a decision
    decided = read_corrections(s.out)
    assert [(Path(p).name, a, lab) for (p, _), (a, lab) in decided.items()] == [
        ("im0.png", "relabel", ["cat"]), ("im1.png", "accept", ["fox"]), ("im4.png", "reject", ["cat"])]  # fmt: skip
    with pytest.raises(UserError, match="relabel needs the new label"):
        again.decide(0, "relabel", " ")
    with pytest.raises(UserError, match="single-label"):
        again.decide(0, "relabel", "cat;dog")
    with pytest.raises(UserError, match="unknown action"):
        again.decide(0, "delete")


def test_a_corrections_file_from_before_keeps_its_decisions(audit_folder: Path, tmp_path: Path) -> None:
    before = write_csv(tmp_path / "fixes.csv", ["path", "label", "action"], [["/elsewhere/x.jpg", "dog", "reject"]])
    s = open_session(audit=audit_folder, out=before)
    s.decide(0, "accept")
    kept = read_corrections(before)
    assert ("/elsewhere/x.jpg", "") in kept and len(kept) == 2


def test_earlier_decisions_in_the_file_survive_every_restart(audit_folder: Path, tmp_path: Path) -> None:
    """The issue's case: a corrections file with 3 rows before the review; one decision, a
    restart, another decision: every row is still there (it became 2 rows: the file was rebuilt
    from the progress log alone)."""
    before = write_csv(tmp_path / "fixes.csv", ["path", "label", "action"], [
        ["/elsewhere/x.jpg", "dog", "reject"], ["/elsewhere/y.jpg", "cat", "relabel"],
        ["/elsewhere/z.jpg", "fox", "accept"]])  # fmt: skip
    s = open_session(audit=audit_folder, out=before)
    assert s.adopted == 3
    s.decide(0, "accept")
    again = open_session(audit=audit_folder, out=before)
    assert again.adopted == 0  # already in the log
    again.decide(1, "relabel", "dog")
    third = open_session(audit=audit_folder, out=before)
    kept = read_corrections(before)
    assert len(kept) == 5 and kept[("/elsewhere/y.jpg", "")] == ("relabel", ["cat"])
    assert third.counts()["decided"] == 2
    with pytest.raises(UserError, match="nothing to undo"):
        open_session(audit=audit_folder, out=tmp_path / "other.csv").undo()
    third.undo()  # the person's own decisions are undone; the earlier file's stay
    third.undo()
    with pytest.raises(UserError, match="nothing to undo"):
        third.undo()
    assert len(read_corrections(before)) == 3


def test_a_hand_edit_of_the_file_is_kept_and_a_kill_between_the_writes_loses_nothing(audit_folder: Path) -> None:
    s = open_session(audit=audit_folder)
    s.decide(0, "relabel", "cat")
    s.decide(1, "accept")
    # a kill after the log was synced, before corrections.csv was rewritten: the file lags one decision
    lagging = s.out.read_text()
    s.decide(1, "reject")
    s.out.write_text(lagging)
    again = open_session(audit=audit_folder)
    assert again.decision(again.items[1].key) == ("reject", "fox") and again.adopted == 0  # the log wins
    assert read_corrections(s.out)[(again.items[1].path, "")] == ("reject", ["fox"])  # and the file caught up
    # a person edits the file by hand (another label for im0, a new row): both are kept
    text = s.out.read_text().replace(f"{again.items[0].path},cat,relabel", f"{again.items[0].path},fox,relabel")
    s.out.write_text(text + "/elsewhere/w.jpg,dog,accept\n")
    third = open_session(audit=audit_folder)
    assert third.adopted == 2 and third.decision(third.items[0].key) == ("relabel", "fox")
    assert ("/elsewhere/w.jpg", "") in read_corrections(s.out)


def test_a_hand_edit_while_the_page_runs_is_kept_by_the_next_decision(audit_folder: Path) -> None:
    """The file was rewritten from the log at each decision: a row added or changed by hand while
    the page ran vanished at the next one, without a word (found by a new user)."""
    s = open_session(audit=audit_folder)
    s.decide(0, "relabel", "cat")
    path0 = s.items[0].path
    s.out.write_text(
        s.out.read_text().replace(f"{path0},cat,relabel", f"{path0},fox,relabel") + "/elsewhere/h.jpg,dog,\n"
    )
    assert s.decide(1, "accept")["edited"] == 2
    assert s.decision(s.items[0].key) == ("relabel", "fox") and s.adopted == 2
    fixes = read_corrections(s.out)
    assert fixes[(path0, "")] == ("relabel", ["fox"]) and fixes[("/elsewhere/h.jpg", "")] == ("relabel", ["dog"])
    assert fixes[(s.items[1].path, "")][0] == "accept"
    # a write that fails leaves the file behind the decisions: no edit, the next write catches up
    # (reviewed: the next decision took the stale file for an edit and unset the one before)
    import imgcls.io

    real = imgcls.io.atomic_write_text

    def full(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as m, pytest.raises(OSError):
        m.setattr(imgcls.io, "atomic_write_text", full)
        s.decide(2, "reject")
    assert s.decide(3, "accept")["edited"] == 0 and s.decision(s.items[2].key)[0] == "reject"
    assert read_corrections(s.out)[(s.items[2].path, "")][0] == "reject"
    # a kill after an edit was taken over, before the decision's own write: the edit was written
    # at once, so a restart finds no edit to take over again and keeps the decision (from the log)
    lines = s.out.read_text().splitlines()
    lines = [f"{s.items[3].path},fox-edited,accept" if ln.startswith(f"{s.items[3].path},") else ln for ln in lines]
    s.out.write_text("\n".join(lines) + "\n")
    calls: list[int] = []

    def killed_at_second(*a: object, **k: object) -> None:
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # the kill
        real(*a, **k)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(imgcls.io, "atomic_write_text", killed_at_second)
        s.decide(0, "reject")
    again = open_session(audit=audit_folder)
    assert again.decision(again.items[0].key)[0] == "reject" and again.adopted == 0
    assert again.decision(again.items[3].key) == ("accept", "fox-edited")
    # a spreadsheet's save in another encoding is a one-line error, not a file written over
    again.out.write_bytes("path,label,action\n/x/caf\xe9.jpg,dog,relabel\n".encode("cp1252"))
    with pytest.raises(UserError, match="is not UTF-8 text"):
        again.decide(1, "accept")


@pytest.mark.parametrize(
    ("line", "why"),
    [("not json at all", "line 3: not a JSON object"), ('{"action": "accept", "path": "/x"}', "line 3: no 'key'"),
     ('{"key": "/x", "path": "/x", "action": "keep"}', "line 3: unknown action 'keep'"),
     ('[1, 2]', "line 3: not a JSON object")],
)  # fmt: skip
def test_a_hand_edited_progress_log_is_a_one_line_error(audit_folder: Path, line: str, why: str) -> None:
    s = open_session(audit=audit_folder)
    s.decide(0, "accept")
    with open(s.log, "a") as f:
        f.write("\n" + line + "\n")  # a blank line is nothing; the edited one is named
    with pytest.raises(UserError, match=f"progress.jsonl, {why}.*not a decision imgcls review wrote"):
        open_session(audit=audit_folder)
    lines = s.log.read_text().splitlines()
    s.log.write_text("\n".join([*lines[:1], "", *lines[3:]]) + "\n")  # the blank line alone is harmless
    assert open_session(audit=audit_folder).counts()["decided"] == 1


def test_the_decision_order_makes_the_last_one_count_for_crops(tmp_path: Path) -> None:
    """A whole-image leak and a crop of the same image: the file lists the standing decisions in
    the order they were taken, so training applies the last one."""
    from imgcls.review.queue import Item
    from imgcls.review.session import Session

    img = tmp_path / "frame.png"
    Image.new("RGB", (64, 48), (90, 90, 90)).save(img)
    items = [Item(path=str(img), kind="label", label="cat", why="", box="0.1000 0.1000 0.5000 0.5000"),
             Item(path=str(img), kind="leak", label="cat", why="")]  # fmt: skip
    s = Session(items, tmp_path / "c.csv", classes=["cat", "dog"])
    s.decide(0, "relabel", "dog")
    s.decide(1, "reject")
    s.decide(0, "accept")  # decided again after the whole image: it moves after it
    with open(s.out, newline="") as f:
        assert [(r["action"], r["box"]) for r in csv.DictReader(f)] == [
            ("reject", ""),
            ("accept", "0.1000 0.1000 0.5000 0.5000"),
        ]


def test_the_hint_repeats_the_audits_data_options_and_keeps_its_corrections(audit_folder: Path, tmp_path: Path) -> None:
    earlier = write_csv(tmp_path / "earlier.csv", ["path", "label", "action"], [["/elsewhere/x.jpg", "", "reject"]])
    summary = json.loads((audit_folder / "summary.json").read_text())
    summary.update(data_args=["--data", "/d/frames", "--detections", "/d/md out.json", "--det-categories",
                              "animal,person"], corrections=str(earlier), config="/runs/a/config.yaml")  # fmt: skip
    (audit_folder / "summary.json").write_text(json.dumps(summary))
    (audit_folder.parent / "retrained").mkdir()  # a run folder of that name exists: the next name
    s = open_session(audit=audit_folder)
    assert s.hint == ("imgcls train --config /runs/a/config.yaml --data /d/frames --detections '/d/md out.json' "
                      f"--det-categories animal,person --corrections {audit_folder / 'corrections.csv'} "
                      f"--out {audit_folder.parent / 'retrained-2'}")  # fmt: skip
    assert read_corrections(s.out) == {("/elsewhere/x.jpg", ""): ("reject", [])}  # the audit's corrections carry over


def test_the_classes_offered_are_the_models_not_the_pipelines_blank(tmp_path: Path) -> None:
    camera = [{"path": "/x/a.jpg", "label": "blank", "score": 0.4, "top_k": {"blank": 0.4}, "error": None,
               "detections": []},
              {"path": "/x/b.jpg", "label": "deer", "score": 0.6, "top_k": {"deer": 0.6}, "error": None,
               "detections": [{"bbox": [0.1, 0.2, 0.3, 0.4], "label": "deer", "score": 0.6,
                               "top_k": {"deer": 0.6, "fox": 0.3}}]}]  # fmt: skip
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in camera))
    s = open_session(predictions=preds)
    assert s.classes == ["deer", "fox"] and len(s.items) == 2
    assert s.items[0].candidates == []  # the pipeline's blank is not offered as a label
    assert s.hint.startswith(
        f"imgcls train --data {tmp_path / 'corrections.csv'} --out {tmp_path.parent / 'retrained'} (the reviewed"
    )


def test_a_crop_is_shown_beside_its_frame_with_the_box_drawn(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient

    from imgcls.review.app import create_review_app
    from imgcls.review.queue import Item
    from imgcls.review.session import Session

    frame = tmp_path / "frame.jpg"
    Image.new("RGB", (800, 400), (90, 140, 90)).save(frame)
    items = [Item(path=str(frame), kind="label", label="cat", why="", box="0.2500 0.2500 0.5000 0.5000"),
             Item(path=str(frame), kind="leak", label="cat", why="")]  # fmt: skip
    s = Session(items, tmp_path / "c.csv", classes=["cat", "dog"])
    with TestClient(create_review_app(s)) as c:
        shown = Image.open(io.BytesIO(c.get("/api/image/0?which=frame").content)).convert("RGB")
        assert c.get("/api/image/1?which=frame").json()["error"] == "item 1 is a whole image, not a crop"
    assert shown.size == (768, 384)  # the whole frame, not the crop's square
    px = np.asarray(shown).astype(int)
    red = (px[..., 0] > 180) & (px[..., 1] < 110)
    assert red[100:284, 186:200].any(axis=1).all()  # the box's left side (x = 0.25), drawn in red
    assert not red[100:284, 220:360].any()
    assert abs(px[192, 384] - [90, 140, 90]).max() < 12  # the inside is the picture


def test_the_keys_the_docs_show_are_the_pages() -> None:
    """README's and docs/camera-traps.md's key table is the one the page draws and dispatches on."""
    from imgcls.review.keys import KEYS, markdown_table

    root = Path(__file__).resolve().parents[1]
    for doc in ("README.md", "docs/camera-traps.md"):
        assert markdown_table() in (root / doc).read_text(), f"{doc}: the review keys table differs from the page's"
    assert {k.action for k in KEYS} >= {"accept", "relabel", "reject", "skip", "undo"}
    assert not any("Enter" in k.keys for k in KEYS)  # a reflex Enter must not confirm a doubted label


def test_images_held_in_a_data_file_and_crops_are_shown(tmp_path: Path) -> None:
    from imgcls.data.sources import load_source
    from imgcls.review.queue import Item
    from imgcls.review.session import Session

    data = idx_dataset(tmp_path / "idx", n_train=6, n_test=3)
    first = load_source(str(data)).paths[1]
    big = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1000), (90, 90, 90)).save(big)
    items = [Item(path=first, kind="label", label="1", why=""),
             Item(path=str(big), kind="prediction", label="fox", why="", box="0.1 0.1 0.1 0.2")]  # fmt: skip
    s = Session(items, tmp_path / "c.csv", classes=["0", "1", "2"], data_root=str(data))
    import io

    digit = Image.open(io.BytesIO(s.image(0)))
    crop = Image.open(io.BytesIO(s.image(1)))
    assert digit.size == (252, 252)  # 28 px shown as crisp 9 x 9 squares
    assert crop.size[0] == crop.size[1] <= 768  # the square around the box, as training saw it
    with pytest.raises(UserError, match="'deer' is not one of the data's 3 classes"):
        s.decide(1, "relabel", "deer")  # a new class only when the person confirms it
    s.decide(1, "relabel", "deer", new_class=True)
    with open(s.out, newline="") as f:
        assert list(csv.reader(f)) == [["path", "label", "action", "box"],
                                       [str(big), "deer", "relabel", "0.1 0.1 0.1 0.2"]]  # fmt: skip
    assert "deer" in s.classes


def test_the_api(audit_folder: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imgcls.review.app import create_review_app

    s = open_session(audit=audit_folder)
    with TestClient(create_review_app(s, hint="imgcls train ...")) as c:
        st = c.get("/api/state").json()
        assert len(st["items"]) == 4 and st["position"] == 0 and st["hint"] == "imgcls train ..."
        assert st["items"][0]["name"].endswith("im0.png")
        assert c.get("/api/image/0").headers["content-type"] == "image/jpeg"
        assert c.get("/api/image/3?which=b").status_code == 200
        assert c.get("/api/image/0?which=b").json()["error"] == "item 0 has no second image"
        assert c.get("/api/image/9").status_code == 404 and c.get("/api/image/0?which=c").status_code == 422
        r = c.post("/api/decide", json={"index": 0, "action": "nope"})
        assert r.status_code == 400 and "unknown action" in r.json()["error"]
        assert c.post("/api/decide", json={"index": -1, "action": "accept"}).status_code == 422
        assert c.post("/api/undo").status_code == 400
        assert c.post("/api/decide", json={"index": 0, "action": "accept"}).json()["position"] == 1
        assert c.get("/health").json()["decided"] == 1
        assert "imgcls review" in c.get("/").text


def test_the_page_in_a_real_browser(audit_folder: Path) -> None:
    """Keyboard accept and relabel (a number key and a typed label), reject, skip, undo; a reload
    resumes where it stopped; the corrections file says what was decided."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    playwright = pytest.importorskip("playwright.sync_api")
    if chromium is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "imgcls"), "review", "--audit", str(audit_folder), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#label:text('dog')")
            legend = page.locator("#keys kbd").all_inner_texts()
            accept_line = page.locator("#keys span").first.inner_text()
            page.keyboard.press("Enter")  # decides nothing
            page.keyboard.press("1")  # im0: relabel to the suggestion, cat
            page.wait_for_selector("#label:text('fox')")
            page.keyboard.press("a")  # im1: accept fox
            page.wait_for_selector("#label:text('cat')")
            page.keyboard.press("l")
            page.keyboard.type("lynx")
            page.keyboard.press("Enter")  # im2: a label the data did not have ...
            page.wait_for_selector("#message:text('is not one of the data')")
            assert page.inner_text("#label") == "cat"  # ... is not taken on the first Enter
            page.keyboard.press("Enter")  # ... but on the second
            page.wait_for_selector("#kind:text('leak')")
            assert page.locator("#pictures img").count() == 2  # the copy beside its original
            page.keyboard.press("x")  # im4: reject the leaked test copy
            page.wait_for_selector("#done h2:text('All reviewed')")
            page.keyboard.press("u")  # take the reject back ...
            page.wait_for_selector("#kind:text('leak')")
            page.reload()  # ... and a reload comes back to the same image
            page.wait_for_selector("#kind:text('leak')")
            progress = page.inner_text("#progress-text")
            page.keyboard.press("s")  # skip it: it stays in the queue
            page.wait_for_selector("#done h2:text('1 skipped, the rest decided')")
            page.reload()  # a skipped image comes back
            page.wait_for_selector("#decided:text('skipped earlier')")
            page.keyboard.press("ArrowLeft")
            page.wait_for_selector("#decided:text('relabel → lynx')")
            browser.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    from imgcls.review.keys import KEYS

    assert legend == [k.shown for k in KEYS] and accept_line == "accept: dog is right"
    assert progress.startswith("3 of 4 decided · 1 accepted · 2 relabelled · 0 rejected")
    assert "review 4 images" in out and f"--corrections {audit_folder / 'corrections.csv'}" in out
    with open(audit_folder / "corrections.csv", newline="") as f:
        rows = [(Path(r["path"]).name, r["label"], r["action"]) for r in csv.DictReader(f)]
    assert rows == [("im0.png", "cat", "relabel"), ("im1.png", "fox", "accept"), ("im2.png", "lynx", "relabel")]


def test_only_its_own_names_and_page_reach_the_api(audit_folder: Path) -> None:
    """DNS rebinding: a web page whose name is made to resolve to 127.0.0.1 reaches the loopback
    review under its own name (Host) and origin (Origin): it can neither read the file paths and
    images nor change corrections.csv. The server's own names and page pass."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imgcls.review.app import create_review_app

    s = open_session(audit=audit_folder)
    app = create_review_app(s, host="127.0.0.1", port=8765)
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        own = {"Origin": "http://127.0.0.1:8765"}
        assert c.post("/api/decide", json={"index": 0, "action": "accept"}, headers=own).status_code == 200
        before = s.out.read_bytes()
        for origin in ("http://evil.example:8765", "http://evil.example", "http://localhost:8765", "null"):
            r = c.post("/api/decide", json={"index": 1, "action": "reject"}, headers={"Origin": origin})
            assert r.status_code == 403 and r.json()["error"].startswith(f"Origin {origin} is not this server's page")
            assert c.post("/api/undo", headers={"Origin": origin}).status_code == 403
        for host in ("localhost:8765", "[::1]:8765", "127.0.0.1", "LOCALHOST:9000"):  # 9000: ssh -L 9000:...
            assert c.get("/api/state", headers={"Host": host}).status_code == 200
        r = c.post("/api/decide", json={"index": 1, "action": "skip"}, headers={"Host": "localhost:9000",
                                                                                "Origin": "http://localhost:9000"})  # fmt: skip
        assert r.status_code == 200
    with TestClient(app, base_url="http://evil.example:8765") as evil:
        for r in (evil.get("/api/state"), evil.get("/api/image/0"), evil.get("/"), evil.get("/health"),
                  evil.post("/api/decide", json={"index": 1, "action": "reject"}), evil.post("/api/undo")):  # fmt: skip
            assert r.status_code == 403, r.text
            assert r.json()["error"].startswith("Host evil.example:8765 is not this server's name")
            assert "http://127.0.0.1:8765/" in r.json()["error"]
    assert (s.counts()["decided"], s.counts()["skip"]) == (1, 1)  # a skip is no decision
    with open(s.out, newline="") as f:
        assert [r["action"] for r in csv.DictReader(f)] == ["accept"] and before in s.out.read_bytes()


# ------------------------------------------------------------------ kill -9 at any moment
KILL_ITEMS = 6


def _kill_step(t: int) -> tuple[str, int, str]:
    """The t-th thing the person does (the same in the killed process and the reference)."""
    if t % 7 == 6:
        return "undo", 0, ""
    action = ("relabel", "accept", "reject", "skip", "relabel")[t % 5]
    return action, (t * 5) % KILL_ITEMS, ("cat", "dog", "fox")[t % 3] if action == "relabel" else ""


def _kill_session(out: Path) -> object:
    from imgcls.review.queue import Item
    from imgcls.review.session import Session

    items = [Item(path=f"/imgs/im{i}.png", kind="label", label="cat", why="") for i in range(KILL_ITEMS)]
    return Session(items, out, classes=["cat", "dog", "fox"])


def _do(session: object, t: int) -> None:
    action, index, label = _kill_step(t)
    with contextlib.suppress(UserError):  # nothing to undo
        session.undo() if action == "undo" else session.decide(index, action, label)  # type: ignore[attr-defined]


CHILD = """
import sys
sys.path[:0] = {paths!r}
from pathlib import Path
from test_review import _kill_session, _do
s = _kill_session(Path({out!r}))
t = int(sys.argv[1])
while True:
    _do(s, t)
    print(t, flush=True)  # acknowledged: on disk
    t += 1
"""


def test_a_kill_9_at_any_moment_loses_no_acknowledged_decision(tmp_path: Path) -> None:
    """A process deciding as fast as it can is killed (SIGKILL) at random moments, five times,
    and restarted on the same files: every acknowledged decision is there after each restart (the
    one in flight may be there too), and corrections.csv says exactly what the log says."""
    import random
    import signal

    out, ref_out = tmp_path / "killed" / "corrections.csv", tmp_path / "ref" / "corrections.csv"
    out.parent.mkdir()
    ref_out.parent.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(paths=[str(Path(__file__).parent), *sys.path], out=str(out)))
    ref, t, rng = _kill_session(ref_out), 0, random.Random(7)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, str(script), str(t)], stdout=subprocess.PIPE, text=True)
        acked = [int(proc.stdout.readline()) for _ in range(rng.randint(3, 40))]  # type: ignore[union-attr]
        time.sleep(rng.random() * 0.05)  # and then some more, unacknowledged
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        more = [int(line) for line in proc.stdout.read().split()]  # type: ignore[union-attr]
        for step in acked + more:
            _do(ref, step)
        t = (acked + more)[-1] + 1
        logged = len(out.with_name("corrections-progress.jsonl").read_text().splitlines())
        if logged > len(ref_out.with_name("corrections-progress.jsonl").read_text().splitlines()):
            _do(ref, t)  # the decision in flight reached the log before the kill
            t += 1
        restored = _kill_session(out)
        assert restored.decisions() == ref.decisions()  # type: ignore[attr-defined]
        assert out.read_text() == ref_out.read_text()


def test_a_killed_review_server_restarts_with_every_decision(audit_folder: Path) -> None:
    """The real command: decisions posted to ``imgcls review``, kill -9 right after the last
    answer, a restart: the page's state and corrections.csv hold them all."""
    import httpx

    def start() -> tuple[subprocess.Popen, str]:
        port = free_port()
        cmd = [str(Path(sys.executable).parent / "imgcls"), "review", "--audit", str(audit_folder), "--port", str(port)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "health", timeout=1).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("imgcls review did not start")

    proc, url = start()
    try:
        for body in ({"index": 0, "action": "relabel", "label": "cat"}, {"index": 1, "action": "accept"},
                     {"index": 2, "action": "reject"}, {"index": 3, "action": "relabel", "label": "dog"}):  # fmt: skip
            assert httpx.post(url + "api/decide", json=body, timeout=10).status_code == 200
    finally:
        proc.kill()
        proc.wait()
    proc, url = start()
    try:
        state = httpx.get(url + "api/state", timeout=10).json()
    finally:
        proc.kill()
        proc.wait()
    assert [state["decisions"][it["key"]] for it in state["items"]] == [["relabel", "cat"], ["accept", "fox"],
                                                                        ["reject", "cat"], ["relabel", "dog"]]  # fmt: skip
    assert len(read_corrections(audit_folder / "corrections.csv")) == 4


# ------------------------------------------------------------------ the review's second look
def test_a_suspect_that_is_also_a_leak_is_one_item_with_both_reasons(audit_folder: Path) -> None:
    """One image, one decision: the leak is not decided behind the person's back by the
    decision about the suspect (they shared a key, so deciding one decided the other unseen)."""
    with open(audit_folder / "duplicates.csv", newline="") as f:
        rows = list(csv.reader(f))
    suspect = rows[1][0].replace("im3.png", "im0.png")  # im0, a suspect, is also a held-out copy of im3
    rows.append([rows[1][0], suspect, 0, "exact", "train", "val", True, "cat", "dog"])
    write_csv(audit_folder / "duplicates.csv", rows[0], rows[1:])
    s = open_session(audit=audit_folder)
    assert len(s.items) == 4 and len({it.key for it in s.items}) == 4
    first = s.items[0]
    assert (
        first.kind == "label" and Path(first.other).name == "im3.png" and "also val image, an exact copy" in first.why
    )


def test_a_key_for_another_item_is_refused(audit_folder: Path) -> None:
    s = open_session(audit=audit_folder)
    with pytest.raises(UserError, match="not the image the decision was made on"):
        s.decide(1, "accept", key=s.items[0].key)
    assert s.decide(0, "accept", key=s.items[0].key)["counts"]["decided"] == 1


def test_skipped_images_stay_in_the_queue(audit_folder: Path) -> None:
    s = open_session(audit=audit_folder)
    s.decide(0, "accept")
    assert s.decide(1, "skip")["position"] == 2
    s.decide(2, "reject")
    last = s.decide(3, "skip")
    assert last["position"] == 4 and last["counts"]["decided"] == 2 and last["counts"]["skip"] == 2  # the end ...
    again = open_session(audit=audit_folder)
    assert again.position() == 1  # ... and a restart begins at the first skipped image
    assert again.decide(1, "relabel", "dog")["position"] == 4 and again.position() == 3


def test_an_interrupted_adoption_of_the_audits_corrections_is_done_again(
    audit_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill while the first start takes over the --corrections the audit read: the next start
    takes them all (it took only those before the kill, then never looked again)."""
    from imgcls.review.session import Session

    earlier = write_csv(tmp_path / "earlier.csv", ["path", "label", "action"],
                        [[f"/x/{i}.jpg", "", "reject"] for i in range(3)])  # fmt: skip
    summary = json.loads((audit_folder / "summary.json").read_text())
    (audit_folder / "summary.json").write_text(json.dumps({**summary, "corrections": str(earlier)}))

    def killed(self: Session, *entries: dict) -> None:
        with open(self.log, "a") as f:
            f.write(json.dumps(entries[0]) + "\n" + json.dumps(entries[1])[:20])  # the kill, mid-write
        raise SystemExit

    with monkeypatch.context() as m:
        m.setattr(Session, "_append", killed)
        with pytest.raises(SystemExit):
            open_session(audit=audit_folder)
    s = open_session(audit=audit_folder)
    assert len(read_corrections(s.out)) == 3 and open_session(audit=audit_folder).adopted == 0


def test_a_row_deleted_by_hand_is_undecided_and_undo_takes_back_only_the_persons_own(audit_folder: Path) -> None:
    s = open_session(audit=audit_folder)
    s.decide(0, "reject")
    s.decide(1, "relabel", "dog")
    lines = s.out.read_text().splitlines()
    s.out.write_text("\n".join(line for line in lines if "im0.png" not in line) + "\n")  # a person deletes a row
    again = open_session(audit=audit_folder)
    assert again.decision(again.items[0].key) is None and again.position() == 0
    assert [Path(p).name for p, _ in read_corrections(s.out)] == ["im1.png"]
    text = s.out.read_text().replace(",dog,relabel", ",cat,reject")  # and edits another
    s.out.write_text(text)
    third = open_session(audit=audit_folder)
    assert third.decision(third.items[1].key) == ("reject", "cat")
    third.undo()  # the person's last own decision (relabel dog) is taken back; the hand edit stays
    assert third.decision(third.items[1].key) == ("reject", "cat")


def test_a_whole_frame_accepted_keeps_each_crops_own_label(tmp_path: Path) -> None:
    """A leak of a frame with two crops is shown with one crop's label; accepting it confirms the
    crops' labels, it does not give the other crop that label."""
    from dataclasses import replace

    from imgcls.data.corrections import apply_corrections
    from imgcls.data.sources import load_source
    from imgfactory import image_folder

    data = image_folder(tmp_path / "data", ("deer", "fox"), 1)
    one = load_source(str(data))
    table = replace(one.subset([0, 1]), boxes=np.array([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3]]))
    table = replace(table, paths=[table.paths[0]] * 2)  # one frame, a deer crop and a fox crop
    fixes = write_csv(tmp_path / "c.csv", ["path", "label", "action"], [[table.paths[0], "deer", "accept"]])
    fixed, done = apply_corrections(table, fixes)
    assert [fixed.label_names(i)[0] for i in range(2)] == ["deer", "fox"] and done.relabelled == 0


def test_typing_ahead_decides_the_next_image_not_the_same_one_again(
    audit_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With saves slowed down (a slow disk), keys pressed 50 ms apart: each decides its own image
    (the second key landed on the image still on screen, replacing the first decision)."""
    import threading

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    playwright = pytest.importorskip("playwright.sync_api")
    uvicorn = pytest.importorskip("uvicorn")
    if chromium is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    from imgcls.review.app import create_review_app
    from imgcls.review.session import Session

    slow = Session._write_corrections
    monkeypatch.setattr(Session, "_write_corrections", lambda self: (time.sleep(0.3), slow(self))[1])
    s = open_session(audit=audit_folder)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_review_app(s, host="127.0.0.1", port=port), port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#label:text('dog')")
            page.keyboard.press("1")  # im0: relabel to cat ...
            time.sleep(0.05)
            page.keyboard.press("a")  # ... and at once im1: accept fox
            page.wait_for_selector("#label:text('cat')")  # im2 on screen: both were saved
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    decided = {Path(p).name: d for (p, _), d in read_corrections(s.out).items()}
    assert decided == {"im0.png": ("relabel", ["cat"]), "im1.png": ("accept", ["fox"])}


def test_imgcls_megadetector_output_gives_its_classified_crops_and_below_keeps_the_doubtful(tmp_path: Path) -> None:
    """``predict --format megadetector`` carries the boxes a CSV cannot (it was refused: 'not a
    predictions file imgcls wrote'); ``below`` keeps only what the model doubts."""
    md = {"info": {"format_version": "1.4"}, "detection_categories": {"1": "animal"},
          "classification_categories": {"0": "cat", "1": "horse", "2": "empty"},
          "images": [{"file": "images/a.jpg", "detections": [
                         {"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.3, 0.3],
                          "classifications": [["0", 0.55], ["1", 0.45]]},
                         {"category": "1", "conf": 0.8, "bbox": [0.5, 0.5, 0.2, 0.2],
                          "classifications": [["1", 0.97], ["0", 0.03]]},
                         {"category": "1", "conf": 0.1, "bbox": [0.7, 0.7, 0.1, 0.1]}]},  # not classified
                     {"file": "images/b.jpg", "failure": "unreadable"}]}  # fmt: skip
    out = tmp_path / "md_classified.json"
    out.write_text(json.dumps(md))
    items, classes = read_predictions(out, limit=10, below=1.0)
    assert [(it.box, it.label, it.candidates) for it in items] == [
        ("0.1000 0.1000 0.3000 0.3000", "cat", ["cat", "horse"]), ("0.5000 0.5000 0.2000 0.2000", "horse", ["horse", "cat"])]  # fmt: skip
    assert items[0].path == str(tmp_path / "images" / "a.jpg") and classes == ["cat", "horse"]
    assert [it.label for it in read_predictions(out, limit=10, below=0.9)[0]] == ["cat"]
