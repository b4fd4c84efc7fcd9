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
    os.utime(model / "model.int8.onnx", (1, 1))  # older than the weights (cp -r may do that): still current
    assert imgcls.load(model, precision="int8").engine == "onnxruntime int8"
    config = json.loads((model / "config.json").read_text())
    config["provenance"]["run"] = str(tmp_path / "gone")
    (model / "config.json").write_text(json.dumps(config))  # another model: its int8 file is stale
    with pytest.raises(UserError, match=r"no current model\.int8\.onnx"):
        imgcls.load(model, precision="int8")
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


def test_calibration_uses_only_the_rows_the_run_trained_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data with train/ and test/ folders: the run holds out part of train/ for validation, and
    those rows measure the int8 cost, so they must not calibrate it."""
    import csv

    import imgcls.quantize as q
    from imgfactory import image_folder

    image_folder(tmp_path / "data" / "train", ("cat", "dog"), 10)
    image_folder(tmp_path / "data" / "test", ("cat", "dog"), 2, seed=1)
    run = imgcls.train(tmp_path / "data", out=tmp_path / "run", arch="lenet", epochs=1, batch_size=8, image_size=32,
                       pretrained="none", cache_dir=tmp_path / "cache")  # fmt: skip
    with open(run / "splits.csv", newline="") as f:
        split = {r["path"]: r["split"] for r in csv.DictReader(f)}
    assert "val" in split.values()
    seen: list[str] = []
    calibrate = q._calibration_batches

    def spy(ref: object, table: object, rows: np.ndarray, workers: object) -> list[np.ndarray]:
        seen.extend(table.paths[int(i)] for i in rows)  # type: ignore[attr-defined]
        return calibrate(ref, table, rows, workers)

    monkeypatch.setattr(q, "_calibration_batches", spy)
    r = q.quantize_int8(run / "model", run / "model" / "model.onnx", calibration_images=1000)
    assert seen and {split[p] for p in seen} == {"train"}
    assert len(seen) == sum(s == "train" for s in split.values()) == r.calibration_images
    assert r.validation_images == sum(s == "val" for s in split.values())


def test_agreement_is_of_the_models_own_decisions() -> None:
    """A binary model deciding at 0.8 and a multi-label one at 0.3 / 0.7: two graphs agree where
    their decisions at those thresholds do, not at the arg-max or 0.5."""
    from imgcls.artifacts import ModelInfo
    from imgcls.config import PreprocessConfig
    from imgcls.export import decision_agreement

    pre = PreprocessConfig(input_size=(3, 32, 32))
    binary = ModelInfo(arch="lenet", num_outputs=1, label_names=["animal", "blank"], task="binary",
                       positive_class="animal", thresholds=[0.8], preprocess=pre)  # fmt: skip
    a = np.array([[0.55, 0.45], [0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
    b = np.array([[0.45, 0.55], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])  # at 0.8 rows 0, 2, 3 agree; arg-max 1, 2
    assert decision_agreement(binary, a, b) == pytest.approx(3 / 4)
    multi = ModelInfo(arch="lenet", num_outputs=2, label_names=["sky", "sea"], task="multilabel",
                      thresholds=[0.3, 0.7], preprocess=pre)  # fmt: skip
    a = np.array([[0.4, 0.6], [0.2, 0.8], [0.9, 0.9]])
    b = np.array([[0.6, 0.4], [0.25, 0.75], [0.35, 0.65]])  # row 0 agrees at 0.3/0.7, not at 0.5
    assert decision_agreement(multi, a, b) == pytest.approx(2 / 3)
