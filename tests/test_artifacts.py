"""The model directory: timm's hub layout, written as a whole (imgcls.artifacts)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import timm
import torch

import imgcls
from imgcls.artifacts import load_model, save_model
from imgcls.config import PreprocessConfig
from imgcls.io import current_umask
from imgcls.models import create_model
from imgfactory import image_folder


def test_timm_loads_a_saved_model_directory_unchanged(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "d", ("a", "b"), 6)
    run = imgcls.train(
        data,
        out=tmp_path / "run",
        arch="resnet18",
        norm="group",
        attn="se",
        epochs=1,
        batch_size=4,
        image_size=32,
        pretrained="none",
        cache_dir=tmp_path / "c",
    )
    ours = imgcls.load(run / "model", precision="fp32").model.eval()
    theirs = timm.create_model(f"local-dir:{run / 'model'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x.contiguous(memory_format=torch.channels_last)))
    assert theirs.pretrained_cfg["label_names"] == ["a", "b"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_model_interrupted_before_the_config_keeps_the_old_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imgcls.artifacts as artifacts

    pre = PreprocessConfig(input_size=(3, 32, 32))
    torch.manual_seed(0)
    first = create_model("lenet", num_classes=3)
    save_model(first, tmp_path / "model", label_names=["a", "b", "c"], preprocess=pre)
    assert mode(tmp_path / "model" / "config.json") == 0o666 & ~current_umask()
    second = create_model("lenet", num_classes=3)
    real_dumps = json.dumps

    def dumps(obj: object, **kw: object) -> str:
        if isinstance(obj, dict) and obj.get("label_names") == ["x", "y", "z"]:
            raise KeyboardInterrupt  # killed after the weights, before the config
        return real_dumps(obj, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(artifacts.json, "dumps", dumps)
    with pytest.raises(KeyboardInterrupt):
        save_model(second, tmp_path / "model", label_names=["x", "y", "z"], preprocess=pre)
    monkeypatch.undo()
    model, info = load_model(tmp_path / "model")
    assert info.label_names == ["a", "b", "c"]
    for k, v in first.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_an_export_is_current_by_the_config_it_carries(trained: dict, tmp_path: Path) -> None:
    """Not by modification times: a copy (cp -r, rsync, an unpacked archive) may leave the
    weights newer than their own export, and an edited config.json makes it another model."""
    import os
    import shutil

    from imgcls.artifacts import current_int8
    from imgcls.predict import exported_onnx

    model = Path(shutil.copytree(trained["model"], tmp_path / "model"))
    shutil.copy(model / "model.onnx", model / "model.int8.onnx")  # carries the same config
    for f in ("model.onnx", "model.int8.onnx"):
        os.utime(model / f, (1, 1))  # older than the weights
    assert exported_onnx(model) == model / "model.onnx" and current_int8(model) == model / "model.int8.onnx"
    config = json.loads((model / "config.json").read_text())
    config["temperature"] = 2.0
    (model / "config.json").write_text(json.dumps(config))
    for f in ("model.onnx", "model.int8.onnx"):
        os.utime(model / f)  # newer than the weights, but made from another config
    assert exported_onnx(model) is None and current_int8(model) is None
