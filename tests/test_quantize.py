"""INT8 models (imgcls.quantize): ONNX Runtime static quantisation, its cost measured on the
run's validation split, refusal above the allowed drop, and ``--precision int8``; the CPU tier
probe that decides 7-bit weights."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import imgcls
from imgcls.cli import main
from imgcls.errors import UserError


@pytest.fixture()
def model(trained: dict, tmp_path: Path) -> Path:
    """A copy of the shared trained model directory (its provenance still names the run)."""
    return Path(shutil.copytree(trained["model"], tmp_path / "model"))


def test_int8_export_measures_its_cost_and_predicts(
    model: Path, trained: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--model", str(model), "--quantize", "int8", "--calibration-images", "12"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "(int8, calibrated on 12 training images" in out and "decisions agree on" in out
    assert "histogram" not in out and "Percentile" not in out  # ONNX Runtime's calibration prints are not ours
    record = json.loads((model / "model.int8.json").read_text())
    assert record["calibration_images"] == 12 and record["metric"] == "top1"
    assert record["validation_images"] == 6  # the run's validation split: 20% of 30 images
    assert abs(record["drop_points"] - 100 * (record["fp32"] - record["int8"])) < 1e-3
    import onnx

    graph = onnx.load(str(model / "model.int8.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["label_names"]) == ["cat", "dog", "fox"] and "imgcls_config" in meta
    assert json.loads(meta["imgcls_int8"])["agreement"] == record["agreement"]
    # predict and evaluate run it with --precision int8 (ONNX Runtime), or given the file
    files = sorted(str(p) for p in trained["data"].rglob("*.jpg"))
    clf = imgcls.load(model, precision="int8")
    assert type(clf.backend).__name__ == "OnnxBackend"
    a = clf.predict(files)
    b = imgcls.load(model, precision="fp32").predict(files)
    agree = np.mean([ra["label"] == rb["label"] for ra, rb in zip(a, b, strict=True)])
    assert agree >= 0.9
    assert [r["label"] for r in imgcls.load(model / "model.int8.onnx").predict(files)] == [r["label"] for r in a]


def test_a_refused_int8_model_writes_nothing(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgcls.quantize as q

    def worse(*args: object, **kwargs: object) -> dict:
        return {"validation_images": 6, "metric": "top1", "fp32": 0.9, "int8": 0.8, "drop_points": 10.0,
                "agreement": 0.8}  # fmt: skip

    monkeypatch.setattr(q, "_measure", worse)
    with pytest.raises(UserError, match=r"0.9000 -> 0.8000 \(10.00 points, over --max-accuracy-drop 1\)"):
        q.quantize_int8(model, model / "model.onnx")
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.onnx", "model.safetensors"]


def test_int8_needs_a_current_file_and_the_run(
    model: Path, trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "--model", str(model), str(trained["data"]), "--precision", "int8"]) == 2
    assert "no current model.int8.onnx (run 'imgcls export" in capsys.readouterr().err
    assert main(["export", "--model", str(model), "--quantize", "int8", "--calibration-images", "6"]) == 0
    os.utime(model / "model.int8.onnx", (1, 1))  # older than the weights: stale
    with pytest.raises(UserError, match=r"no current model\.int8\.onnx"):
        imgcls.load(model, precision="int8")
    config = json.loads((model / "config.json").read_text())
    config["provenance"]["run"] = str(tmp_path / "gone")
    (model / "config.json").write_text(json.dumps(config))
    assert main(["export", "--model", str(model), "--quantize", "int8"]) == 2
    assert "needs the model's run folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "tier", "reduce_range"),
    [
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}, "AMX", False),
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "AVX512-BF16", False),
        ({"avx2", "avx512f", "avx512_vnni"}, "AVX512-VNNI", False),
        ({"avx2", "avx_vnni"}, "AVX2-VNNI", False),
        ({"avx2", "fma"}, "AVX2", True),
    ],
)
def test_the_cpu_tier_decides_the_weight_bits(
    flags: set[str], tier: str, reduce_range: bool, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imgcls.quantize as q
    from imgcls import runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert runtime.cpu_tier() == tier
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert runtime.cpu_tier().startswith("AVX2 (held by ONEDNN_MAX_CPU_ISA")
    if tier in ("AVX512-VNNI", "AVX2"):  # one quantisation each way is enough
        r = q.quantize_int8(model, model / "model.onnx", calibration_images=6)
        assert r.reduce_range is reduce_range
        assert json.loads((model / "model.int8.json").read_text())["reduce_range"] is reduce_range


def test_training_can_write_the_int8_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imgfactory import image_folder

    data = image_folder(tmp_path / "data", ("cat", "dog"), 8)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--arch", "lenet", "--pretrained", "none",
                 "--epochs", "1", "--image-size", "32", "--batch-size", "4", "--export-int8",
                 "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    assert "model.int8.onnx: validation top1" in capsys.readouterr().err
    assert (out / "model" / "model.onnx").is_file() and (out / "model" / "model.int8.onnx").is_file()


def test_the_fastest_engine_is_measured_once_per_machine_and_model(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgcls import runtime
    from imgcls.predict import choose

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert choose.fastest(model, batch_size=8, device="cpu") is not None  # torch and model.onnx
    assert main(["export", "--model", str(model), "--quantize", "int8", "--calibration-images", "6"]) == 0
    real = choose.fastest(model, batch_size=8, device="cpu")  # measured for real: three engines
    assert real is not None and not real.cached and len(real.rates) == 3
    assert real.label == max(real.rates, key=real.rates.__getitem__) and min(real.rates.values()) > 0
    calls: list[tuple[str, str]] = []

    def rate(path: Path, backend: str, precision: str, batch_size: int) -> float:
        calls.append((backend, precision))
        return {"int8": 300.0, "auto": 100.0 if backend == "torch" else 150.0}[precision]

    monkeypatch.setattr(choose, "_rate", rate)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2"}))  # another CPU: measured again
    c = choose.fastest(model, batch_size=8, device="cpu")
    assert c is not None and (c.backend, c.precision, c.label, c.cached) == ("onnx", "int8", "onnxruntime int8", False)
    assert (
        len(calls) == 3 and "backend: onnxruntime int8, 300 img/s (torch fp32 100, onnxruntime fp32 150" in c.describe()
    )
    again = choose.fastest(model, batch_size=8, device="cpu")
    assert again is not None and again.cached and len(calls) == 3  # remembered
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun: a remembered measurement only, never a new one
    assert choose.fastest(model, batch_size=8, device="cpu").cached  # type: ignore[union-attr]
    assert choose.fastest(model, batch_size=16, device="cpu") is None and len(calls) == 3
    monkeypatch.delenv("WORLD_SIZE")
    assert choose.fastest(model, batch_size=16, device="cpu").cached is False  # type: ignore[union-attr]
    assert choose.fastest(model / "model.onnx", batch_size=8) is None  # an .onnx file: nothing to choose


def test_predict_and_evaluate_run_on_the_engine_measured_fastest(
    model: Path, trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from imgcls.predict import choose

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["export", "--model", str(model), "--quantize", "int8", "--calibration-images", "6"]) == 0
    monkeypatch.setattr(
        choose, "_rate", lambda path, backend, precision, batch_size: 9.0 if precision == "int8" else 1.0
    )
    files = sorted(str(p) for p in trained["data"].rglob("*.jpg"))
    listing = tmp_path / "many.txt"
    listing.write_text("\n".join((files * 8)[: choose.FEW_IMAGES + 1]) + "\n")  # more than a few: measured
    capsys.readouterr()
    assert main(["predict", "--model", str(model), str(listing), "--out", str(tmp_path / "p.csv")]) == 0
    assert "backend: onnxruntime int8" in capsys.readouterr().err
    assert (
        main(["predict", "--model", str(model), str(listing), "--backend", "torch", "--out", str(tmp_path / "q.csv")])
        == 0
    )
    assert "backend:" not in capsys.readouterr().err  # forced: nothing measured
    assert main(["predict", "--model", str(model), files[0]]) == 0
    assert "backend:" not in capsys.readouterr().err  # a few images: ONNX Runtime at once
    monkeypatch.setattr(choose, "FEW_IMAGES", 5)  # the 30 images of the data are "many" here
    assert main(["evaluate", "--model", str(model), "--split", "all", "--out", str(tmp_path / "report")]) == 0
    assert "backend: onnxruntime int8" in capsys.readouterr().err
    from imgcls.serve.app import ServeConfig, load_classifier

    served = load_classifier(ServeConfig(model=str(model), backend="auto"))
    assert served.backend.path.name == "model.int8.onnx"


def test_multilabel_and_binary_models_are_measured_by_their_own_metric(tmp_path: Path) -> None:
    from imgfactory import image_folder

    image_folder(tmp_path / "d", ("a", "b", "c"), 10)
    lines = ["path,label"] + [
        f"d/{f.parent.name}/{f.name},{ {'a': 'sky;water', 'b': 'water', 'c': 'sky;tree'}[f.parent.name] }"
        for f in sorted((tmp_path / "d").rglob("*.jpg"))
    ]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    binary = image_folder(tmp_path / "b", ("animal", "blank"), 10)
    for name, data in (("multilabel", tmp_path / "m.csv"), ("binary", binary)):
        out = tmp_path / name
        assert main(["train", "--data", str(data), "--out", str(out), "--arch", "lenet", "--pretrained", "none",
                     "--epochs", "2", "--image-size", "32", "--batch-size", "4", "--export-int8",
                     "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
        record = json.loads((out / "model" / "model.int8.json").read_text())
        assert record["metric"] == ("top1" if name == "binary" else "mAP") or record["metric"] == "agreement"
        assert 0 <= record["agreement"] <= 1 and record["validation_images"] > 0
        rows = imgcls.load(out / "model", precision="int8").predict(
            sorted(str(p) for p in (tmp_path / "d").rglob("*.jpg"))[:3]
        )
        assert all(r["error"] is None for r in rows)
