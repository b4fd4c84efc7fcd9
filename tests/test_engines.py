"""Which engine answers (imgcls.predict.choose): one per model directory and machine, whatever
the number of inputs; float32 unless the user asks for another precision; named in every output."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import imgcls
from imgcls.cli import main


@pytest.fixture()
def model(trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shared trained model directory, and a private backends.json."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return Path(shutil.copytree(trained["model"], tmp_path / "model"))


@pytest.fixture()
def with_int8(model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The model with a current model.int8.onnx, which the (faked) timings call the fastest
    engine, and a call of more than 5 inputs counted as large enough to measure."""
    from imgcls.predict import choose

    assert main(["export", "--model", str(model), "--quantize", "int8", "--calibration-images", "6"]) == 0
    monkeypatch.setattr(choose, "_rate", lambda path, backend, precision, *_: 9.0 if precision == "int8" else
                        (2.0 if backend == "torch" else 1.0))  # fmt: skip
    monkeypatch.setattr(choose, "FEW_IMAGES", 5)
    return model


def read_jsonl(path: Path) -> dict[str, dict[str, float]]:
    return {r["path"]: r["top_k"] for r in (json.loads(line) for line in path.read_text().splitlines())}


def settings_of(out: Path) -> dict:
    return json.loads(out.with_name(f".{out.name}.settings.json").read_text())


def test_one_image_gets_one_answer_whatever_the_number_of_inputs(
    with_int8: Path, trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A call of one file and a call of many (measured) give the image the same probabilities,
    and neither is the int8 graph's, although it is there and timed fastest."""
    files = sorted(str(p) for p in trained["data"].rglob("*.jpg"))
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    argv = ["predict", "--model", str(with_int8), "--top-k", "3"]
    assert main([*argv, files[0], "--out", str(one)]) == 0
    assert main([*argv, *files, "--out", str(many)]) == 0
    a, b = read_jsonl(one)[files[0]], read_jsonl(many)[files[0]]
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], atol=2e-6)
    assert settings_of(one)["engine"].endswith("fp32") and settings_of(many)["engine"].endswith("fp32")
    err = capsys.readouterr().err
    assert "int8" not in err and "fp32" in err  # the closing lines name the engine
    again = tmp_path / "again.jsonl"  # the measurement (PyTorch faster) switches nothing
    assert main([*argv, files[0], "--out", str(again)]) == 0
    assert settings_of(again)["engine"] == settings_of(many)["engine"] == "onnxruntime fp32"
    assert "torch fp32 is 2.0x faster here: --backend torch runs it" in err
    asked = tmp_path / "int8.jsonl"  # int8 when asked for
    assert main([*argv, files[0], "--precision", "int8", "--out", str(asked)]) == 0
    assert settings_of(asked)["engine"] == "onnxruntime int8"


def test_evaluate_and_serve_choose_by_the_same_rule_and_name_the_engine(
    with_int8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["evaluate", "--model", str(with_int8), "--split", "all", "--out", str(out)]) == 0
    said = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["engine"] == "onnxruntime fp32" and "onnxruntime fp32" in said.out  # PyTorch timed faster
    assert "by onnxruntime fp32" in (out / "report.html").read_text()
    assert main(["evaluate", "--model", str(with_int8), "--split", "all", "--precision", "int8", "--out",
                 str(out)]) == 0  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["engine"] == "onnxruntime int8"
    assert "onnxruntime int8" in (out / "report.html").read_text()
    from imgcls.serve.app import ServeConfig, load_classifier

    served = load_classifier(ServeConfig(model=str(with_int8), backend="auto"))
    assert served.engine == "onnxruntime fp32"  # the same rule, whatever was measured


def test_a_continued_output_keeps_its_engine(
    with_int8: Path, trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An output continues with the engine its settings record names; one begun by an imgcls
    that did not record the engine continues and gains the record; int8 rows are not continued
    in float32."""
    files = sorted(str(p) for p in trained["data"].rglob("*.jpg"))
    out = tmp_path / "p.csv"
    argv = ["predict", "--model", str(with_int8), *files[:4], "--out", str(out)]
    assert main(argv) == 0
    record = out.with_name(f".{out.name}.settings.json")
    old = {k: v for k, v in json.loads(record.read_text()).items() if k != "engine"}
    record.write_text(json.dumps(old))  # as an earlier imgcls wrote it
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]))
    assert main(argv) == 0
    assert "did not record its engine" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 5 and settings_of(out)["engine"] == "onnxruntime fp32"
    out.write_text("".join(lines[:3]))
    assert main([*argv, "--precision", "int8"]) == 2
    assert "engine was 'onnxruntime fp32', now 'onnxruntime int8'" in capsys.readouterr().err


def test_the_fastest_float32_engine_is_measured_once_per_machine_and_model(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgcls import runtime
    from imgcls.predict import choose

    assert choose.fastest(model, device="cpu", measure=False) is None  # not measured, not known
    real = choose.fastest(model, device="cpu")  # measured for real: PyTorch and model.onnx
    assert real is not None and not real.cached and set(real.rates) == {"torch fp32", "onnxruntime fp32"}
    assert real.label == max(real.rates, key=real.rates.__getitem__) and min(real.rates.values()) > 0
    assert choose.fastest(model, device="cpu", measure=False).cached  # type: ignore[union-attr]
    calls: list[tuple[str, str]] = []

    def rate(path: Path, backend: str, precision: str) -> float:
        calls.append((backend, precision))
        return 100.0 if backend == "torch" else 150.0

    monkeypatch.setattr(choose, "_rate", rate)
    monkeypatch.setattr(runtime, "physical_cores", lambda: 64)  # another machine: measured again
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun: a remembered measurement only, never a new one
    assert choose.fastest(model, device="cpu") is None and not calls
    monkeypatch.delenv("WORLD_SIZE")
    c = choose.fastest(model, device="cpu")
    assert c is not None and (c.backend, c.label, c.cached) == ("onnx", "onnxruntime fp32", False)
    assert c.describe() == "engine: onnxruntime fp32, 150 img/s here (torch fp32 100; measured now, once for this " \
        "model and machine)"  # fmt: skip
    assert choose.fastest(model, device="cpu").cached and len(calls) == 2  # type: ignore[union-attr]
    assert choose.fastest(model / "model.onnx") is None  # an .onnx file: nothing to choose
    # the rule: int8 and bf16 only when asked; a GPU runs PyTorch; else ONNX Runtime on a current
    # model.onnx, else PyTorch, both float32, whatever the number of inputs; a large call times them
    monkeypatch.setattr(runtime, "physical_cores", lambda: 65)
    assert choose.engine(model, device="cpu", images=1, say=print) == ("auto", "fp32") and len(calls) == 2
    assert choose.engine(model, device="cpu", images=1000, say=print) == ("auto", "fp32") and len(calls) == 4
    assert choose.engine(model, device="cpu", precision="int8") == ("onnx", "int8")
    assert choose.engine(model, device="cpu", precision="bf16") == ("torch", "bf16")
    assert choose.engine(model, device="cpu", backend="torch") == ("torch", "auto")


def test_backends_json_is_written_under_a_lock(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes remembering at once: neither measurement is lost."""
    from imgcls.predict import choose

    choose._store("first", {"x": 1.0})
    cache = choose.cache_file()
    real_read = Path.read_text
    read, release = threading.Event(), threading.Event()

    def slow_read(self: Path, *a: object, **kw: object) -> str:
        text = real_read(self, *a, **kw)  # type: ignore[arg-type]
        if self.name == "backends.json" and threading.current_thread().name == "a":
            read.set()
            release.wait(5)  # holds what it read while the other stores
        return text

    monkeypatch.setattr(Path, "read_text", slow_read)
    a = threading.Thread(target=choose._store, args=("a", {"x": 2.0}), name="a")
    b = threading.Thread(target=choose._store, args=("b", {"x": 3.0}), name="b")
    a.start()
    assert read.wait(5)
    b.start()
    b.join(0.5)
    release.set()
    a.join(5)
    b.join(5)
    assert not a.is_alive() and not b.is_alive()
    assert set(json.loads(real_read(cache))) == {"first", "a", "b"}


def test_the_api_names_its_engine(model: Path) -> None:
    assert imgcls.load(model, backend="onnx").engine == "onnxruntime fp32"
    assert imgcls.load(model / "model.onnx").engine == "onnxruntime fp32"
    assert imgcls.load(model, precision="fp32").engine == "torch fp32"


def test_the_engine_is_the_same_whatever_the_call_size_and_history(
    model: Path, trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1-image call, a 300-image call (more than FEW_IMAGES: it measures the engines, here with
    PyTorch timed faster), then a 1-image call again: each names the same engine and gives the
    image bitwise the same probabilities. The measurement used to switch every later call to the
    engine it found faster, so the answer depended on the call's size and the calls before it."""
    from imgcls.predict import choose

    monkeypatch.setattr(choose, "_rate", lambda path, backend, precision, *_: 2.0 if backend == "torch" else 1.0)
    files = sorted(trained["data"].rglob("*.jpg"))
    many = []
    for k in range(10):  # 300 distinct paths: hard links of the 30 images
        (tmp_path / "in" / str(k)).mkdir(parents=True)
        for f in files:
            many.append(tmp_path / "in" / str(k) / f.name)
            many[-1].hardlink_to(f)
    assert len(many) > choose.FEW_IMAGES
    image = str(many[0])
    probs, engines = [], []
    for call, inputs in enumerate(([image], [str(p) for p in many], [image])):
        out = tmp_path / f"call{call}.jsonl"
        assert main(["predict", "--model", str(model), *inputs, "--top-k", "3", "--out", str(out)]) == 0
        probs.append(read_jsonl(out)[image])
        engines.append(settings_of(out)["engine"])
    assert engines == ["onnxruntime fp32"] * 3
    assert probs[0] == probs[1] == probs[2]  # bitwise: one engine, one answer
    assert json.loads(choose.cache_file().read_text())  # the large call measured (for the record only)
