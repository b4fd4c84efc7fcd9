"""Prediction at scale: input forms, output formats, bad files, resume, ONNX, timm, who decodes
(torchrun and --shard: test_multinode.py)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls.cli import main
from imgcls.outputs import _truncate_to_last_newline
from imgcls.predict import count_inputs, iter_inputs
from imgfactory import broken_files, image_folder

BIN = Path(sys.executable).parent


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_every_input_form(tmp_path: Path) -> None:
    image_folder(tmp_path / "a", ("x", "y"), 2)
    (tmp_path / "b").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "b" / f"IMG_{i}.JPG")
    (tmp_path / "list.txt").write_text("# a comment\na/x/x_000.jpg\n\nb/IMG_0.JPG\n")
    (tmp_path / "list.csv").write_text("path,other\na/y/y_001.jpg,1\n")
    inputs = [
        str(tmp_path / "a"),
        str(tmp_path / "b" / "*.JPG"),
        str(tmp_path / "list.txt"),
        str(tmp_path / "list.csv"),
        str(tmp_path / "missing.jpg"),
    ]
    got = list(iter_inputs(inputs))
    assert got[:4] == [
        str(tmp_path / "a" / d / f)
        for d, f in (("x", "x_000.jpg"), ("x", "x_001.jpg"), ("y", "y_000.jpg"), ("y", "y_001.jpg"))
    ]
    assert got[4:7] == [str(tmp_path / "b" / f"IMG_{i}.JPG") for i in range(3)]
    assert got[7:] == [
        str(tmp_path / "a/x/x_000.jpg"),
        str(tmp_path / "b/IMG_0.JPG"),
        str(tmp_path / "a/y/y_001.jpg"),
        str(tmp_path / "missing.jpg"),
    ]
    assert count_inputs(inputs) == len(got) == 11


def test_mixed_good_and_broken_files_give_one_row_each(trained: dict, tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs", ("cat", "dog"), 4)
    broken = broken_files(folder / "bad")
    out = tmp_path / "p.csv"
    listing = tmp_path / "more.txt"
    listing.write_text("nope.jpg\n")  # a list naming a file that is gone: a row with its error
    assert main(["predict", "--model", str(trained["model"]), str(folder), str(listing), "--out", str(out)]) == 0
    rows = read_csv(out)
    broken.pop("drawing.svg")  # not an image format's name: left out of the folder, not a row
    assert len(rows) == 8 + len(broken) + 1
    assert len({r["path"] for r in rows}) == len(rows)
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == set(broken) | {"nope.jpg"}
    assert errors["nope.jpg"] == "file not found"
    good = [r for r in rows if not r["error"]]
    assert all(r["label"] in ("cat", "dog", "fox") for r in good)
    for r in good:
        top = json.loads(r["top_k"])
        assert abs(sum(top.values()) - 1) < 1e-3 and max(top, key=top.get) == r["label"]
        assert float(r["score"]) == pytest.approx(top[r["label"]], abs=1e-5)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_every_output_format(trained: dict, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"p{suffix}"
    assert (
        main(
            [
                "predict",
                "--model",
                str(trained["model"]),
                str(trained["data"] / "cat"),
                "--out",
                str(out),
                "--top-k",
                "2",
            ]
        )
        == 0
    )
    if suffix == ".csv":
        rows = read_csv(out)
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        doc = json.loads(out.read_text())
        rows = doc["predictions"]
        assert doc["model"]["label_names"] == ["cat", "dog", "fox"]
        assert not list(tmp_path.glob(".*partial*"))
    assert len(rows) == 10
    top = rows[0]["top_k"] if suffix != ".csv" else json.loads(rows[0]["top_k"])
    assert len(top) == 2


def test_threshold_gives_unknown_and_tta_averages_the_logits_of_the_image_and_its_mirror(
    trained: dict, tmp_path: Path
) -> None:
    from imgcls.data.preprocess import normalize_np

    out = tmp_path / "p.csv"
    argv = ["predict", "--model", str(trained["model"]), str(trained["data"] / "dog"), "--out", str(out)]
    assert main([*argv, "--threshold", "0.9999", "--tta", "flip"]) == 0
    rows = read_csv(out)
    assert len(rows) == 10 and {r["label"] for r in rows} == {"unknown"}
    assert all(float(r["score"]) < 0.9999 for r in rows)
    clf = imgcls.load(trained["model"], backend="torch")
    pixels = np.stack(
        [np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in sorted((trained["data"] / "dog").iterdir())]
    )
    x = normalize_np(pixels, clf.preprocess)
    z = clf.backend.logits(x).astype(np.float64)
    z_mirror = clf.backend.logits(np.ascontiguousarray(x[..., ::-1])).astype(np.float64)
    assert np.abs(z - z_mirror).max() > 1e-3  # the mirror is another input
    mean = (z + z_mirror) / 2 / clf.info.temperature
    expected = np.exp(mean - mean.max(1, keepdims=True))
    np.testing.assert_allclose(
        clf.probabilities(pixels, tta=True), expected / expected.sum(1, keepdims=True), rtol=1e-6
    )
    plain = (z / clf.info.temperature) - (z / clf.info.temperature).max(1, keepdims=True)
    np.testing.assert_allclose(
        clf.probabilities(pixels, tta=False), np.exp(plain) / np.exp(plain).sum(1, keepdims=True), rtol=1e-6
    )


def test_resume_after_a_partial_write_writes_every_input_exactly_once(trained: dict, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    args = [
        "predict",
        "--model",
        str(trained["model"]),
        str(trained["data"]),
        "--out",
        str(out),
        "--batch-size",
        "4",
    ]
    assert main(args) == 0
    full = out.read_text()
    lines = full.splitlines(keepends=True)
    out.write_text("".join(lines[:9]) + lines[9][:17])  # killed in the middle of a row
    assert main(args) == 0
    assert out.read_text() == full
    _truncate_to_last_newline(out)
    assert out.read_text() == full


def test_resuming_with_another_model_or_options_is_refused(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.csv"
    base = ["predict", str(trained["data"]), "--out", str(out)]
    assert main([*base, "--model", str(trained["model"])]) == 0
    first = out.read_text()
    assert main([*base, "--model", str(trained["model"]), "--top-k", "1"]) == 2
    assert "top_k was 5, now 1" in capsys.readouterr().err
    assert main([*base, "--model", str(trained["model"] / "model.onnx")]) == 2
    assert "another model" in capsys.readouterr().err
    assert out.read_text() == first  # refused runs leave the output as it was
    assert main([*base, "--model", str(trained["model"] / "model.onnx"), "--overwrite"]) == 0
    assert len(out.read_text().splitlines()) == len(first.splitlines())


def _other_model(trained: dict, tmp_path: Path) -> Path:
    """A second model: the trained one with another config (so another fingerprint)."""
    other = tmp_path / "other_model"
    shutil.copytree(trained["model"], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["provenance"]["note"] = "another model"
    (other / "config.json").write_text(json.dumps(cfg))
    return other


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_an_interrupted_output_is_not_continued_with_another_model(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    from imgcls.outputs import JsonlWriter, resume_record

    out = tmp_path / f"p{suffix}"
    argv = ["predict", str(trained["data"]), "--out", str(out), "--batch-size", "4"]
    # interrupted after 8 rows: a .json document is not assembled yet, its rows are in the part file
    monkeypatch.setattr(JsonlWriter, "write", _stop_after(8, JsonlWriter.write))
    assert main([*argv, "--model", str(trained["model"])]) == 130
    monkeypatch.undo()
    in_progress = out.with_name(f".{out.name}.partial.jsonl") if suffix == ".json" else out
    assert not (suffix == ".json" and out.exists()) and len(read_jsonl(in_progress)) == 8
    rows_before, record_before = in_progress.read_text(), resume_record(out).read_text()
    assert main([*argv, "--model", str(_other_model(trained, tmp_path))]) == 2
    assert "another model" in capsys.readouterr().err
    assert in_progress.read_text() == rows_before and resume_record(out).read_text() == record_before
    assert main([*argv, "--model", str(trained["model"])]) == 0  # the same model continues it
    rows = json.loads(out.read_text())["predictions"] if suffix == ".json" else read_jsonl(out)
    assert len(rows) == len({r["path"] for r in rows}) == 30


def _stop_after(n: int, write: Any) -> Any:
    """A writer's write that is interrupted (Ctrl-C) once ``n`` rows are written."""
    seen = [0]

    def wrapped(self: object, rows: Any) -> None:
        rows = list(rows)
        if seen[0] >= n:
            raise KeyboardInterrupt
        seen[0] += len(rows)
        write(self, rows)

    return wrapped


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_killed_predict_restarted_with_the_same_command(trained: dict, tmp_path: Path) -> None:
    data = tmp_path / "many"
    for k in range(30):
        shutil.copytree(trained["data"], data / f"copy{k}")
    out = tmp_path / "p.csv"
    cmd = [
        str(BIN / "imgcls"),
        "predict",
        "--model",
        str(trained["model"]),
        str(data),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 40):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "predict finished before the kill"
    partial = out.read_text().count("\n")
    assert 40 <= partial < 901
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = read_csv(out)
    paths = [x["path"] for x in rows]
    assert len(paths) == len(set(paths)) == 900
    assert paths == list(iter_inputs([str(data)]))
    assert "already done" in r.stderr


def test_python_api_with_paths_and_pil_images(trained: dict) -> None:
    clf = imgcls.load(trained["model"])
    path = next((trained["data"] / "fox").iterdir())
    rows = clf.predict([str(path), Image.open(path)], top_k=3)
    assert [r["path"] for r in rows] == [str(path), "<image>"]
    assert rows[0]["label"] == rows[1]["label"] and len(rows[0]["top_k"]) == 3
    assert rows[0]["score"] == pytest.approx(rows[1]["score"], abs=1e-6)
    assert clf.label_names == ["cat", "dog", "fox"]
    assert isinstance(clf.model, torch.nn.Module)
    x = clf.transform(Image.open(path))
    assert x.shape == (3, 32, 32)
    bad = clf.predict(b"not a path".decode())
    assert bad[0]["error"] == "file not found"
    assert (bad[0]["label"], bad[0]["score"]) == (None, None)  # an error row has neither, as serve's API says


def test_predict_errors(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(next((trained["data"] / "cat").iterdir()))
    assert main(["predict", "--model", str(tmp_path / "none"), image]) == 2
    assert "model not found" in capsys.readouterr().err
    assert main(["predict", "--model", str(trained["model"]), image, "--out", str(tmp_path / "p.xyz")]) == 2
    assert "unknown output suffix" in capsys.readouterr().err
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert main(["predict", "--model", str(trained["model"]), image, "--out", str(tmp_path / "other.csv")]) == 2
    assert "not an imgcls prediction CSV" in capsys.readouterr().err
    # nothing to predict: an error, and --overwrite does not delete the output first
    (tmp_path / "empty").mkdir()
    kept = tmp_path / "kept.csv"
    kept.write_text("path,label,score,top_k,error\n")
    argv = ["predict", "--model", str(trained["model"]), str(tmp_path / "empty"), "--out", str(kept), "--overwrite"]
    assert main(argv) == 2
    assert "no files found" in capsys.readouterr().err and kept.exists()


def test_training_exports_onnx_and_few_images_start_without_torch(trained: dict, tmp_path: Path) -> None:
    from imgcls.predict import OnnxBackend, TorchBackend

    model = trained["model"]
    assert (model / "model.onnx").is_file()  # written at the end of training
    assert isinstance(imgcls.load(model, backend="auto").backend, OnnxBackend)
    assert isinstance(imgcls.load(model).backend, TorchBackend)  # the API's default: a torch module
    image = next((trained["data"] / "cat").iterdir())
    code = (
        "import sys; from imgcls.cli import main; "
        f"rc = main(['predict', '--model', {str(model)!r}, {str(image)!r}]); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].startswith(str(image))
    # another model in the directory (its config is not the one the export carries): the export
    # is stale and PyTorch does the work
    stale = tmp_path / "model"
    shutil.copytree(model, stale)
    config = json.loads((stale / "config.json").read_text())
    config["provenance"]["note"] = "retrained"
    (stale / "config.json").write_text(json.dumps(config))
    assert isinstance(imgcls.load(stale, backend="auto").backend, TorchBackend)


def test_folders_leave_out_sidecar_files_and_missing_inputs_are_errors(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "card"
    shutil.copytree(trained["data"] / "cat", folder)
    (folder / "manifest.json").write_text("{}")
    (folder / "notes.txt").write_text("site visit")
    (folder / "Thumbs.db").write_bytes(b"\0" * 64)
    (folder / "clip.MP4").write_bytes(b"\0" * 64)
    shutil.copy(next((trained["data"] / "dog").iterdir()), folder / "IMG_0001")  # no extension: tried
    (folder / "broken.jpg").write_bytes(b"not a jpeg")  # an image's name: tried, a row with its error
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to("..")  # a link back up: walked once, not 40 times over
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(trained["model"]), str(folder), "--out", str(out)]) == 0
    assert len(read_csv(out)) == 12
    rows = {Path(r["path"]).name: r for r in read_csv(out)}
    assert len(rows) == 12 and rows["IMG_0001"]["label"] and "not an image" in rows["broken.jpg"]["error"]
    assert not {"manifest.json", "notes.txt", "Thumbs.db", "clip.MP4"} & set(rows)
    err = capsys.readouterr().err
    assert "left out 4 files that are not images (.db 1, .json 1, .mp4 1, .txt 1)" in err
    # a file named explicitly is always tried
    assert main(["predict", "--model", str(trained["model"]), str(folder / "manifest.json")]) == 0
    assert "not an image" in capsys.readouterr().out
    # a named input that does not exist, or a pattern that matches nothing: an error, not a row
    for missing in (str(tmp_path / "nonexistent" / "dir"), str(tmp_path / "*.nothing")):
        assert main(["predict", "--model", str(trained["model"]), str(folder), missing]) == 2
        err = capsys.readouterr().err
        assert missing in err and ("no such file" in err or "matches no file" in err)
    # the output is one of the inputs: refused before anything is read or removed, --overwrite too
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "\n".join(str(p) for p in sorted(folder.glob("*.jpg"))[:2]) + "\n")
    before = listing.read_text()
    for extra in ([], ["--overwrite"]):
        assert main(["predict", "--model", str(trained["model"]), str(listing), "--out", str(listing), *extra]) == 2
        assert "is also an input" in capsys.readouterr().err and listing.read_text() == before


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except FileNotFoundError:  # a thread that ended while the tasks were listed: it forked nobody now
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_decoding_workers_end_when_predict_is_killed(trained: dict, tmp_path: Path) -> None:
    data = tmp_path / "many"
    for k in range(30):
        shutil.copytree(trained["data"], data / f"copy{k}")
    out = tmp_path / "p.csv"
    cmd = [str(BIN / "imgcls"), "predict", "--model", str(trained["model"]), str(data), "--out", str(out),
           "--workers", "2", "--batch-size", "2", "--backend", "torch"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and not (len(workers) >= 2 and out.exists() and out.read_text().count("\n") > 20):
        workers = _children(proc.pid)
        time.sleep(0.02)
    assert len(workers) >= 2, "the decoding workers did not start"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "predict finished before the kill"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.05)
    alive = [
        w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2]
    ]
    assert not alive, f"workers {alive} outlived their parent"


def test_one_file_left_out_is_one_file_that_is_not_an_image(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'left out 1 file that is not images': the count decides file/files and image/images."""
    folder = tmp_path / "card"
    shutil.copytree(trained["data"] / "cat", folder)
    (folder / "notes.txt").write_text("site visit")
    assert main(["predict", "--model", str(trained["model"]), str(folder), "--out", str(tmp_path / "p.csv")]) == 0
    assert "; left out 1 file that is not an image (.txt)\n" in capsys.readouterr().err


def _slow_decode(item: Any, cfg: Any, max_pixels: Any) -> np.ndarray:
    time.sleep(0.25)
    return np.zeros((2, 2, 3), np.uint8)


def test_a_consumer_that_stops_early_does_not_wait_for_the_chunks_in_flight() -> None:
    """Closing the stream (Ctrl-C, an error, enough rows) waited in the pool's shutdown for
    every chunk in flight: 32 chunks at the start, here 32 x 2 items x 0.25 s / 2 workers = 8 s."""
    import multiprocessing

    from imgcls.config import PreprocessConfig
    from imgcls.predict import decode_stream

    stream = decode_stream(range(10_000), PreprocessConfig(), workers=2, chunk=2, fn=_slow_decode)
    assert next(stream)[0] == 0
    workers = multiprocessing.active_children()
    assert len(workers) >= 2
    t0 = time.monotonic()
    stream.close()
    assert time.monotonic() - t0 < 2.0
    assert not [w for w in workers if w.is_alive()]


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX process group")
@pytest.mark.parametrize("backend", ["torch", "onnx"])  # onnx: no torch, so the exit joins the pool's threads
def test_ctrl_c_during_predict_is_one_line(trained: dict, tmp_path: Path, backend: str) -> None:
    """Ctrl-C reaches the whole process group: each decoding worker printed its own
    KeyboardInterrupt traceback before the friendly line (and the exit could hang on a worker
    that died holding the queue's lock)."""
    data = tmp_path / "many"
    for k in range(7):  # 210 small images
        shutil.copytree(trained["data"], data / f"copy{k}")
    out = tmp_path / "p.csv"
    cmd = [str(BIN / "imgcls"), "predict", "--model", str(trained["model"]), str(data), "--out", str(out),
           "--workers", "2", "--batch-size", "2", "--backend", backend]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and out.read_text().count("\n") > 4):
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("predict hung after Ctrl-C")
    if proc.returncode == 0 and "predicted 210 images" in err and out.read_text().count("\n") == 211:
        # the rows came in one burst at the end (seen in full-suite runs): Ctrl-C never met a running predict
        pytest.skip("predict finished before the Ctrl-C reached it: nothing to check this time")
    assert proc.returncode == 130, err
    friendly = f"imgcls: interrupted; run the same command again to continue where it stopped ({out} keeps every row)"
    assert err == friendly + "\n"


# ------------------------------------------------------------------------ who decodes (--decoder)
class _FakeDevice:
    """Stands in for the GPU's decoder: the CPU's own pixels for the JPEGs it accepts (so rows must
    come out identical), None for the rest (PNGs, and every third file as if nvJPEG failed on it);
    it records what it was given."""

    def __init__(self, cfg: Any) -> None:
        self.cfg, self.given, self.decoded = cfg, list[Any](), list[Any]()

    def decode(self, sources: list[Any]) -> list[np.ndarray | None]:
        from imgcls.data.image import ImageError
        from imgcls.predict import decode_for_model

        out: list[np.ndarray | None] = []
        for src in sources:
            self.given.append(src)
            jpeg = src.startswith(b"\xff\xd8") if isinstance(src, bytes) else src.endswith(".jpg")
            try:
                arr = decode_for_model(src, self.cfg) if jpeg and len(self.given) % 3 else None
            except ImageError:
                arr = None
            out.append(arr)
            if arr is not None:
                self.decoded.append(src)
        return out


def test_rows_are_identical_with_0_1_and_2_workers_and_with_the_device_decoder_on_or_off(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from imgcls.data import load_source
    from imgcls.evaluate.run import collect_probabilities
    from imgcls.predict import Classifier, decoders, run_predict
    from imgcls.serve.app import ServeConfig, Service

    folder = tmp_path / "in"
    for p in sorted(trained["data"].rglob("*.jpg"))[::3]:
        (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.parent.name / p.name)
    broken_files(folder / "bad")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "red.png")
    image = str(sorted(folder.glob("cat/*.jpg"))[0])
    assert main(["predict", "--model", str(trained["model"]), image, "--decoder", "cuda"]) == 2  # no GPU here
    assert "--decoder cuda: no CUDA GPU" in capsys.readouterr().err
    clf = Classifier.load(trained["model"], backend="torch")

    def rows(name: str, **kw: Any) -> list[dict[str, str]]:
        run_predict(clf, [str(folder)], out=tmp_path / f"{name}.csv", show_progress=False, **kw)
        return read_csv(tmp_path / f"{name}.csv")

    ref = rows("w0", workers=0, decoder="cpu")
    assert len(ref) == 10 + 5 + 1 and sum(1 for r in ref if r["error"]) == 5
    assert rows("w1", workers=1, decoder="cpu") == ref and rows("w2", workers=2, decoder="cpu") == ref
    fake = _FakeDevice(clf.preprocess)
    monkeypatch.setattr(decoders, "available", lambda gpu: True)
    monkeypatch.setattr(decoders, "device_decoder", lambda cfg, gpu, max_pixels: fake)
    assert rows("cuda", workers=2, decoder="cuda") == ref  # every file offered to the device
    assert len(fake.given) == len(ref) and 0 < len(fake.decoded) < 10  # what it refused, the CPU decoded
    # auto, the model on "the GPU", both decoding (remembered: half the files by a hash of the path)
    monkeypatch.setattr(decoders, "model_gpu", lambda clf: "cuda")
    monkeypatch.setattr(decoders, "_remembered", lambda key: {"cpu": 1, "cuda": 1, "cpu+cuda": 2, "share": 0.5})
    fake.given.clear()
    assert rows("auto1", workers=1, decoder="auto") == ref
    first = sorted(fake.given)
    fake.given.clear()
    assert rows("auto2", workers=2, decoder="auto") == ref and sorted(fake.given) == first  # one file, one decoder
    assert 0 < len(first) < len(ref)
    # evaluate and serve take the same decoder
    table = load_source(trained["data"])
    keep = np.arange(6)
    on = collect_probabilities(clf, table, keep, workers=1, decoder="cuda")
    off = collect_probabilities(clf, table, keep, workers=1, decoder="cpu")
    assert np.array_equal(on[0], off[0]) and np.array_equal(on[1], off[1])
    service = Service(ServeConfig(model=str(trained["model"]), decoder="cuda"), clf)
    fake.decoded.clear()
    for _ in range(3):  # the third is refused (as nvJPEG may): the CPU answers alike
        assert np.array_equal(service.decode("x.jpg", Path(image).read_bytes()), ref_pixels(image, clf))
    assert len(fake.decoded) == 2 and service.decode("r.png", (folder / "red.png").read_bytes()).shape == (32, 32, 3)


def ref_pixels(path: str, clf: Any) -> np.ndarray:
    from imgcls.predict import decode_for_model

    return decode_for_model(path, clf.preprocess)


def test_the_decoder_is_chosen_by_a_measurement_made_once_and_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto on a GPU: the fastest of the CPU, the device and both, measured by the first call of
    an image size whatever its number of inputs (so a file is decoded alike from the first call
    on), remembered; torchrun and a server never measure; cuda and cpu force."""
    from imgcls.config import PreprocessConfig
    from imgcls.errors import UserError
    from imgcls.predict import decoders

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = PreprocessConfig(input_size=(3, 32, 32))
    big, png = tmp_path / "big.jpg", tmp_path / "a.png"
    Image.new("RGB", (1600, 1200)).save(big)  # 1.9 MP: measured as 2-MP JPEGs
    Image.new("RGB", (1600, 1200)).save(png)
    measured: list[float] = []
    rates = {"cpu": 500.0, "cuda": 600.0, "cpu+cuda": 1000.0, "share": 0.55}
    monkeypatch.setattr(decoders, "available", lambda gpu: gpu.startswith("cuda"))
    monkeypatch.setattr(decoders, "device_decoder", lambda cfg, gpu, max_pixels: "the device")
    monkeypatch.setattr(decoders, "measure_rates", lambda cfg, gpu, w, mp, px: measured.append(mp) or dict(rates))

    def plan(decoder: str = "auto", gpu: str | None = "cuda", sample: Path = big, **kw: Any) -> Any:
        return decoders.plan(decoder, kw.pop("cfg", cfg), gpu=gpu, workers=4, sample=str(sample), **kw)

    assert plan("cpu") is None and plan(gpu=None) is None  # asked for the CPU; the model runs on the CPU
    assert plan(sample=png) is None and plan(measure=False) is None and measured == []  # no JPEG; a server
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's processes would time each other
    assert plan() is None and measured == []
    monkeypatch.delenv("WORLD_SIZE")
    said: list[str] = []
    share = plan(say=said.append)
    assert measured == [2.0] and share.decoder == "the device" and share.share == 0.55
    assert said == ["decoder: cpu+cuda (55% of the files to cuda), 1000 img/s (cpu 500, cuda 600; measured now on "
                    "2-MP JPEGs)"]  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert plan(say=said.append, measure=False).share == 0.55 and measured == [2.0] and len(said) == 1  # remembered
    monkeypatch.delenv("WORLD_SIZE")
    # a call of a few inputs decodes without workers: the same plan, so a file keeps its decoder
    # (failed before: the plan was remembered per worker count, and 0 workers measured anew)
    few = decoders.plan("auto", cfg, gpu="cuda", workers=0, sample=str(big), say=said.append)
    assert few is not None and few.share == 0.55 and measured == [2.0]
    assert "2MP" in next(iter(json.loads((tmp_path / "cache" / "imgcls" / "decoders.json").read_text())))
    rates.update({"cpu": 900.0, "cpu+cuda": 800.0})  # a machine where the CPU alone is fastest
    Image.new("RGB", (4000, 3000)).save(big)  # 12 MP: another size, measured anew
    assert plan() is None and measured == [2.0, 16.0]
    assert plan("cuda").share == 1.0  # forced: every JPEG the device takes
    with pytest.raises(UserError, match="'lanczos' resize"):
        plan("cuda", cfg=PreprocessConfig(interpolation="lanczos"))
    monkeypatch.setattr(decoders, "available", lambda gpu: False)
    assert plan() is None
    with pytest.raises(UserError, match="--decoder cuda: no CUDA GPU"):
        plan("cuda")


def test_the_device_decoder_run_on_the_cpu_gives_the_cpus_inputs_within_a_few_levels(tmp_path: Path) -> None:
    """The device decoder's own code (torchvision's decode_jpeg, the transform in torch) on the
    CPU: what nvJPEG runs on a GPU, minus nvJPEG. What it refuses is None, for the CPU to decode."""
    from imgcls.config import PreprocessConfig
    from imgcls.data.device_decode import DeviceDecoder
    from imgcls.predict import decode_for_model, decoders
    from imgfactory import class_image, exif_rotated_jpeg

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(160, 120), (90, 200), (64, 64), (33, 47)]):
        class_image(i % 3, rng, size).save(folder / f"{i}.jpg", quality=92)
    (folder / "rotated.jpg").write_bytes(exif_rotated_jpeg(6))
    good = sorted(str(p) for p in folder.glob("*.jpg"))
    Image.new("RGB", (40, 30)).save(folder / "x.png")
    Image.new("CMYK", (40, 30)).save(folder / "cmyk.jpg")
    Image.new("L", (40, 30)).save(folder / "gray.jpg")
    data = (folder / "0.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    refused = [str(folder / n) for n in ("x.png", "cmyk.jpg", "gray.jpg", "cut.jpg", "missing.jpg")]
    for cfg in (PreprocessConfig(input_size=(3, 32, 32)),
                PreprocessConfig(input_size=(3, 48, 48), crop_pct=0.9, interpolation="bicubic", resize_mode="pad")):  # fmt: skip
        got = DeviceDecoder(cfg, "cpu", batch=3).decode([*good, *refused, data])
        assert all(g is None for g in got[len(good) : -1])
        for path, arr in zip([*good, str(folder / "0.jpg")], [*got[: len(good)], got[-1]], strict=True):
            ref = decode_for_model(path, cfg)
            assert arr is not None and arr.shape == ref.shape and arr.dtype == np.uint8, path
            assert np.abs(arr.astype(int) - ref).mean() < 3.0, path  # upright, same crop, a few levels apart
    rates = decoders.measure_rates(PreprocessConfig(input_size=(3, 32, 32)), "cpu", 0, 0.25, None, seconds=0.05)
    assert rates["cpu"] > 0 and rates["cuda"] > 0 and rates["cpu+cuda"] > 0 and 0 < rates["share"] < 1


class _Refuses:
    def decode(self, sources: list[Any]) -> list[None]:
        return [None] * len(sources)


def _pid_input(path: str, cfg: Any, max_pixels: Any = None) -> np.ndarray:
    """The decoding process's pid, whole, in the pixels' bytes (pid % 251 once matched a worker's:
    a 1-in-125 failure in CI)."""
    return np.frombuffer(os.getpid().to_bytes(12, "little"), np.uint8).reshape(2, 2, 3).copy()


def _pid_of(arr: np.ndarray) -> int:
    return int.from_bytes(arr.astype(np.uint8).tobytes(), "little")


def test_what_the_device_refuses_is_decoded_by_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused files (every PNG of a folder under --decoder cuda) were decoded one at a time in
    the device's thread, in the parent; they go to the worker processes, in input order."""
    import imgcls.predict.decode as decode
    from imgcls.config import PreprocessConfig

    monkeypatch.setattr(decode, "decode_for_model", _pid_input)
    paths = [f"{i}.png" for i in range(40)]
    got = list(decode.decode_stream(paths, PreprocessConfig(), workers=2, device=decode.DeviceShare(_Refuses(), 1.0)))
    assert [p for p, _, _ in got] == paths and all(err is None for _, _, err in got)
    assert os.getpid() not in (pids := {_pid_of(arr) for _, arr, _ in got}) and 0 not in pids
