"""Label less, end to end: ``imgcls suggest`` -> ``imgcls review --label next.csv`` -> ``imgcls train
--data old --data next-labels.csv``. The labelling queue, every decision kept across a kill and a
restart, the labels file read back as a ``--data`` spec (the round trip), the training command
the page prints run as printed, and the page driven by the keyboard in headless Chromium."""

from __future__ import annotations

import csv
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgcls.cli import main
from imgcls.data.sources import load_source
from imgcls.errors import UserError
from imgcls.review import open_label_session
from imgfactory import class_image, image_folder
from localnet import free_port


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model trained on cat/dog/fox, a pool of unlabelled images (one of them a kind the model
    does not know), and suggest's picks of five of them."""
    import imgcls
    from imgcls.suggest import suggest

    root = tmp_path_factory.mktemp("label")
    old = image_folder(root / "old", ("cat", "dog", "fox"), 8, size=(24, 24))
    run = imgcls.train(old, out=root / "run", arch="lenet", epochs=1, batch_size=8, image_size=16,
                       pretrained="none", cache_dir=root / "cache", seed=0, export_onnx=False)  # fmt: skip
    pool = root / "pool"
    pool.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        class_image(i % 4, rng, (24, 24)).save(pool / f"p{i:02d}.png")  # class 3: none the model knows
    suggest(run / "model", [str(pool)], n=5, out=root / "next.csv", show_progress=False)
    return {"root": root, "old": old, "run": run, "model": run / "model", "next": root / "next.csv"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fresh(project: dict, tmp_path: Path) -> Path:
    """A copy of suggest's output (and its model record) in ``tmp_path``: each test labels its own."""
    for name in ("next.csv", "next.model.json"):
        shutil.copy(project["root"] / name, tmp_path / name)
    return tmp_path / "next.csv"


def test_the_queue_is_the_suggestions_in_order_with_the_models_classes(project: dict, tmp_path: Path) -> None:
    nxt = _fresh(project, tmp_path)
    session = open_label_session(nxt)
    listed = _rows(nxt)
    assert [it.path for it in session.items] == [r["path"] for r in listed]
    first = session.items[0]
    assert first.kind == "unlabelled" and first.label == listed[0]["guess"]
    assert first.candidates == [listed[0]["guess"], listed[0]["guess2"]]
    assert first.why.startswith(f"the model: {listed[0]['guess']} ") and listed[0]["reason"] in first.why
    assert session.classes == ["cat", "dog", "fox"]  # the model's (suggest recorded which one)
    assert session.out == tmp_path / "next-labels.csv"


def test_labels_survive_a_restart_and_read_back_as_a_data_spec(project: dict, tmp_path: Path) -> None:
    """The round trip: each kind of decision, undo, a restart; the file is an ordinary manifest."""
    nxt = _fresh(project, tmp_path)
    s = open_label_session(nxt)
    items = s.items
    s.decide(0, "accept")  # the model's guess
    other = next(c for c in s.classes if c != items[1].label)
    s.decide(1, "relabel", other)
    with pytest.raises(UserError, match="not one of the data's 3 classes"):
        s.decide(2, "relabel", "badger")  # a new class needs the person's confirmation ...
    s.decide(2, "relabel", "badger", new_class=True)  # ... "none of these"
    s.decide(3, "reject")
    s.decide(4, "relabel", "cat")
    s.undo()  # the last one taken back
    s.decide(4, "skip")
    again = open_label_session(nxt)  # a restart (a kill loses nothing: the log is synced per decision)
    assert again.counts() == {"accept": 1, "relabel": 2, "reject": 1, "skip": 1, "decided": 4, "total": 5}
    assert again.position() == 4  # the skipped image is still to label
    assert "badger" in again.classes
    table = load_source(tmp_path / "next-labels.csv")
    got = {Path(p).name: table.label_names(i)[0] for i, p in enumerate(table.paths)}
    assert got == {Path(items[0].path).name: items[0].label, Path(items[1].path).name: other,
                   Path(items[2].path).name: "badger"}  # fmt: skip
    assert dict(table.skipped)[str(Path(items[3].path).resolve())].startswith("left out by the review")


def test_the_printed_training_command_runs_on_the_old_data_and_the_new_labels(
    project: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    nxt = _fresh(project, tmp_path)
    s = open_label_session(nxt)
    for k in range(len(s.items)):
        s.decide(k, "relabel", "badger" if k == 0 else "dog", new_class=True)
    words = shlex.split(s.hint)  # the command as printed, pasted
    assert words[:4] == ["imgcls", "train", "--config", str(project["run"].resolve() / "config.yaml")]
    assert words[4:8] == ["--data", str(project["old"].resolve()), "--data", str(s.out.resolve())]
    assert s.hint_note == f"add --pretrained {project['model'].resolve()} to start from the model's weights"
    assert main([*words[1:], "--epochs", "1", "--cache-dir", str(tmp_path / "cache")]) == 0
    said = capsys.readouterr()
    counts = next(line for line in (said.out + said.err).splitlines() if line.startswith("from "))
    assert f"{project['old'].resolve()}: 24" in counts and f"{s.out.resolve()}: 5" in counts
    run = Path(words[words.index("--out") + 1])
    listed = {Path(r["path"]).name for r in _rows(run / "splits.csv")}
    assert {Path(it.path).name for it in s.items} <= listed
    from imgcls.artifacts import read_info

    assert read_info(run / "model").label_names == ["cat", "dog", "fox", "badger"]


def test_one_line_errors(project: dict, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="suggestions file not found"):
        open_label_session(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.png,cat\n")
    with pytest.raises(UserError, match="not an imgcls suggest output"):
        open_label_session(bad)
    nxt = _fresh(project, tmp_path)
    with pytest.raises(UserError, match="is the suggestions file itself"):
        open_label_session(nxt, out=nxt)
    assert main(["review", "--label", str(nxt), "--audit", str(tmp_path)]) == 2


def test_the_label_keys_the_docs_show_are_the_pages() -> None:
    from imgcls.review.keys import LABEL_KEYS, markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table(LABEL_KEYS, "the labels file") in readme
    assert not any("Enter" in k.keys for k in LABEL_KEYS)


def _chromium() -> tuple[Any, str]:
    """Playwright and the machine's chromium, or the test is skipped saying what is missing."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return playwright, chromium


def _open(p: Any, chromium: str, port: int) -> tuple[Any, Any]:
    """A headless browser and its page on the labelling server at ``port``."""
    browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/")
    return browser, page


def _start(nxt: Path, port: int) -> subprocess.Popen:
    import httpx

    cmd = [str(Path(sys.executable).parent / "imgcls"), "review", "--label", str(nxt), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("imgcls review --label did not start")


def test_the_page_in_a_real_browser_and_a_kill(project: dict, tmp_path: Path) -> None:
    """Number keys (the guess, the runner-up), N with a new class (taken on the second Enter),
    X, S, U, a reload; then kill -9 and a restart: every label is there."""
    playwright, chromium = _chromium()
    nxt = _fresh(project, tmp_path)
    listed = _rows(nxt)
    port = free_port()
    proc = _start(nxt, port)
    try:
        with playwright.sync_playwright() as p:
            browser, page = _open(p, chromium, port)
            page.wait_for_selector("#kind:text('to label · 1 / 5')")
            title = page.inner_text("#title")
            legend = page.locator("#keys kbd").all_inner_texts()
            first_choice = page.locator("#choices li span").first.inner_text()
            page.keyboard.press("1")  # the model's guess
            page.wait_for_selector("#kind:text('2 / 5')")
            last_said = page.inner_text("#last")
            page.keyboard.press("2")  # its runner-up
            page.wait_for_selector("#kind:text('3 / 5')")
            page.keyboard.press("n")
            page.keyboard.type("badger")
            page.keyboard.press("Enter")
            page.wait_for_selector('#message:text("is not one of the model\'s 3 classes")')
            page.keyboard.press("Enter")  # a new class, confirmed
            page.wait_for_selector("#kind:text('4 / 5')")
            page.keyboard.press("x")  # no usable image
            page.wait_for_selector("#kind:text('5 / 5')")
            page.keyboard.press("s")
            page.wait_for_selector("#done h2:text('1 skipped, the rest decided')")
            hint = page.inner_text("#done code")
            skip_said = page.inner_text("#last")
            page.keyboard.press("u")  # takes the skip back
            page.wait_for_selector("#kind:text('5 / 5')")
            undo_said = page.inner_text("#last")
            page.reload()  # a reload comes back to the first image without a label
            page.wait_for_selector("#kind:text('5 / 5')")
            page.keyboard.press("ArrowLeft")
            page.wait_for_selector("#decided:text('decided: left out')")
            page.keyboard.press("l")  # a second look: it is a fox after all
            page.keyboard.type("fox")
            page.keyboard.press("Enter")
            page.wait_for_selector("#kind:text('5 / 5')")
            page.keyboard.press("s")
            page.wait_for_selector("#done h2:text('1 skipped, the rest decided')")
            progress = page.inner_text("#progress-text")
            browser.close()
    finally:
        proc.kill()  # kill -9: nothing acknowledged may be lost
        proc.wait()
    from imgcls.review.keys import LABEL_KEYS

    assert title == "imgcls label" and legend == [k.shown for k in LABEL_KEYS]
    assert first_choice.startswith(listed[0]["guess"])
    assert progress.startswith("4 of 5 decided · 1 as the model guessed · 3 another class · 0 left out · 1 skipped")
    assert last_said == f"saved: {Path(listed[0]['path']).name} → {listed[0]['guess']} (the model's guess)"
    fifth = Path(listed[4]["path"]).name  # a skip saves nothing, and U says what it took back
    assert skip_said == f"skipped: {fifth} (no decision; it comes back later)"
    assert undo_said == f"taken back: {fifth} (no decision now)"
    assert "--data" in hint and "next-labels.csv" in hint
    proc = _start(nxt, port)
    try:
        import httpx

        state = httpx.get(f"http://127.0.0.1:{port}/api/state", timeout=10).json()
    finally:
        proc.kill()
        proc.wait()
    keys = [it["key"] for it in state["items"]]
    assert [state["decisions"].get(k) for k in keys] == [
        ["accept", listed[0]["guess"]], ["relabel", listed[1]["guess2"]], ["relabel", "badger"],
        ["relabel", "fox"], ["skip", listed[4]["guess"]]]  # fmt: skip
    rows = [(r["label"], r["action"]) for r in _rows(tmp_path / "next-labels.csv")]
    assert rows == [(listed[0]["guess"], "accept"), (listed[1]["guess2"], "relabel"), ("badger", "relabel"),
                    ("fox", "relabel")]  # fmt: skip


# ------------------------------------------------------------------ camera-trap crops
def test_suggest_ranks_detection_crops_and_their_labels_train_as_crops(project: dict, tmp_path: Path) -> None:
    """``suggest --detections``: one item per crop (path and box), blank frames and frames the
    detector did not list left out; a labelled crop (``--labelled`` with a box column) is left
    out alone, its sibling crop stays; the labels file of crops reads back with its boxes."""
    import json

    from imgcls.suggest import suggest

    pool = tmp_path / "frames"
    pool.mkdir()
    rng = np.random.default_rng(7)
    for i in range(4):
        class_image(i % 3, rng, (48, 48)).save(pool / f"f{i}.png")
    boxes = {"f0.png": [[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.4, 0.4]], "f1.png": [[0.2, 0.2, 0.5, 0.5]], "f2.png": []}
    md = {"detection_categories": {"1": "animal"}, "images": [
        {"file": name, "detections": [{"category": "1", "conf": 0.9, "bbox": b} for b in bs]}
        for name, bs in boxes.items()]}  # fmt: skip
    (pool / "md.json").write_text(json.dumps(md))
    labelled = tmp_path / "done.csv"
    labelled.write_text(f"path,label,box\n{pool / 'f0.png'},cat,0.1000 0.1000 0.4000 0.4000\n")
    r = suggest(project["model"], [str(pool)], n=5, out=tmp_path / "next.csv", detections=pool / "md.json",
                labelled=[str(labelled)], show_progress=False)  # fmt: skip
    assert r.crops and r.blank == 1 and r.labelled == 1 and r.unlisted == 1
    assert r.pool == 3 and r.scored_now == 3  # the 3 crops, not the frame the file does not list
    assert [Path(p).name for p, _ in r.skipped] == ["f3.png"] and "not in the detections file" in r.skipped[0][1]
    rows = _rows(tmp_path / "next.csv")
    assert sorted((Path(x["path"]).name, x["box"]) for x in rows) == [
        ("f0.png", "0.5000 0.5000 0.4000 0.4000"), ("f1.png", "0.2000 0.2000 0.5000 0.5000")]  # fmt: skip
    s = open_label_session(tmp_path / "next.csv")
    assert all(it.box for it in s.items)
    for k in range(len(s.items)):
        s.decide(k, "relabel", "dog")
    table = load_source(s.out)
    assert table.boxes is not None and sorted(map(tuple, table.boxes.tolist())) == [
        (0.2, 0.2, 0.5, 0.5), (0.5, 0.5, 0.4, 0.4)]  # fmt: skip
    again = suggest(project["model"], [str(pool)], n=5, out=tmp_path / "next2.csv", detections=pool / "md.json",
                    labelled=[str(labelled), str(s.out)], show_progress=False)  # fmt: skip
    assert again.rows == [] and again.labelled == 3


def test_digit_classes_are_chosen_by_their_own_key(tmp_path: Path) -> None:
    """Classes named 0-9 (the digits): pressing 7 labels the image 7 whatever its place in the
    list; the model suggest recorded is gone, so its recorded classes are offered (with a note)."""
    import json

    playwright, chromium = _chromium()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        p = tmp_path / f"d{i}.png"
        class_image(i, rng, (16, 16)).save(p)
        rows.append(f"{i + 1},{p},3,0.4,8,0.3,0.9,uncertain,0")
    nxt = tmp_path / "next.csv"
    nxt.write_text("rank,path,guess,p_guess,guess2,p_guess2,uncertainty,reason,duplicates\n" + "\n".join(rows) + "\n")
    (tmp_path / "next.model.json").write_text(
        json.dumps({"model": str(tmp_path / "gone"), "classes": list("0123456789")})
    )
    port = free_port()
    proc = _start(nxt, port)
    try:
        with playwright.sync_playwright() as p:
            browser, page = _open(p, chromium, port)
            page.wait_for_selector("#kind:text('1 / 3')")
            keys = page.locator("#choices kbd").all_inner_texts()
            legend_first = page.locator("#keys kbd").first.inner_text()
            page.keyboard.press("7")
            page.wait_for_selector("#kind:text('2 / 3')")
            page.keyboard.press("n")  # none of these: a new class ...
            page.keyboard.type("unknown")
            page.keyboard.press("Enter")
            page.keyboard.press("Enter")
            page.wait_for_selector("#kind:text('3 / 3')")
            page.reload()  # the new class is among the classes now: the keys must not change meaning
            page.wait_for_selector("#kind:text('3 / 3')")
            keys_after = page.locator("#choices kbd").all_inner_texts()
            page.keyboard.press("0")  # ... and a digit still means its digit
            page.wait_for_selector("#done")
            browser.close()
    finally:
        proc.kill()
        out, _ = proc.communicate()
    assert keys == ["3", "8", "0", "1", "2", "4", "5", "6", "7", "9"]  # the guess first, each on its own digit
    assert keys_after == keys  # (reviewed: after a reload with the new class, 1 was the guess, 5 the 5th class)
    assert legend_first == "0–9"
    assert [(r["label"], r["action"]) for r in _rows(tmp_path / "next-labels.csv")] == [
        ("7", "relabel"), ("unknown", "relabel"), ("0", "relabel")]  # fmt: skip
    assert "is gone: its classes as recorded are offered" in out


def test_suggest_never_writes_over_a_labels_file(project: dict, tmp_path: Path) -> None:
    from imgcls.suggest import suggest

    labels = tmp_path / "next-labels.csv"
    labels.write_text("path,label,action\n/x.png,cat,accept\n")
    with pytest.raises(UserError, match="exists and is not a suggestions file"):
        suggest(project["model"], [str(project["root"] / "pool")], n=2, out=labels, show_progress=False)
    assert labels.read_text() == "path,label,action\n/x.png,cat,accept\n"
    again = tmp_path / "next.csv"
    for _ in range(2):  # an earlier suggestions file is replaced
        suggest(project["model"], [str(project["root"] / "pool")], n=2, out=again, show_progress=False)
    assert len(_rows(again)) == 2
