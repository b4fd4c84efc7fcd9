"""ONNX export verified against PyTorch (imgcls.export)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import imgcls
from imgcls.cli import main


def test_onnx_export_matches_the_model_directory(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", "--model", str(trained["model"]), "--out", str(onnx_file)]) == 0
    assert "max |probability diff|" in capsys.readouterr().out
    import onnx
    import onnxruntime as ort

    meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert json.loads(meta["label_names"]) == ["cat", "dog", "fox"]
    assert json.loads(meta["mean"]) == [0.5, 0.5, 0.5] and json.loads(meta["input_size"]) == [
        3,
        32,
        32,
    ]
    session = ort.InferenceSession(str(onnx_file))
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch size
    for b in (1, 7):
        assert session.run(None, {"input": np.zeros((b, 3, 32, 32), np.float32)})[0].shape == (b, 3)
    files = sorted(str(p) for p in trained["data"].rglob("*.jpg"))
    a = imgcls.load(trained["model"], precision="fp32").predict(files, top_k=3)
    b = imgcls.load(onnx_file).predict(files, top_k=3)
    assert [r["label"] for r in a] == [r["label"] for r in b]
    diff = max(abs(ra["top_k"][k] - rb["top_k"][k]) for ra, rb in zip(a, b, strict=True) for k in ra["top_k"])
    assert diff <= 1e-4  # every class's probability (top 3 of 3)


def test_export_to_a_place_that_cannot_be_written(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "model.onnx"  # its parent is a file
    assert main(["export", "--model", str(trained["model"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: {blocker} is a file, not a folder" in err and len(err.strip().splitlines()) == 1


def test_export_fails_loudly_above_tolerance(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    # a negative tolerance cannot be met: the verification must fail and write nothing
    assert main(["export", "--model", str(trained["model"]), "--out", str(out), "--tolerance", "-1"]) == 2
    assert "ONNX verification failed" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())
    assert main(["export", "--model", str(tmp_path / "nothing")]) == 2
    assert "model not found" in capsys.readouterr().err
    # an opset the exporters cannot write: refused, not silently replaced by another
    assert main(["export", "--model", str(trained["model"]), "--out", str(out), "--opset", "3"]) == 2
    assert "--opset 3: not available for this model (the exporter wrote opset 18)" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())
    assert main(["export", "--model", str(trained["model"]), "--out", str(out), "--opset", "13"]) == 0
    import onnx

    assert [o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")] == [13]


def test_a_model_only_the_second_exporter_handles_prints_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Adaptive pooling to a size that does not divide the input (LeNet at 64 px): the
    TorchScript exporter fails and its C++ side printed the whole graph to standard output
    ('Torch IR graph at exception') before the torch.export-based one succeeded."""
    import torch

    from imgcls.export import _export_graph

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.pool = torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pool(self.conv(x)).flatten(1)

    model = Net().eval()
    _export_graph(model, torch.zeros(2, 3, 15, 15), tmp_path / "m.onnx", torch.export.Dim("batch", min=1, max=64), 18)
    print("after")  # standard output works again afterwards
    out = capfd.readouterr().out
    assert out == "after\n" and (tmp_path / "m.onnx").is_file()
