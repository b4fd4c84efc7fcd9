"""Class-activation maps (imgcls.explain): where the evidence is, for every family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls.cli import main
from imgcls.explain import Explainer, feature_layer, grad_cam
from imgcls.models import create_model
from imgfactory import square_scene

pytest.importorskip("captum")


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (root / "data" / name).mkdir(parents=True)
        for i in range(40):
            square_scene(rng, colour).save(root / "data" / name / f"{i:03d}.png")
    imgcls.train(root / "data", out=root / "run", arch="smallnet", pretrained="none", image_size=64, epochs=10,
                 batch_size=16, lr=3e-3, augment="flip", cache_dir=root / "c", seed=0)  # fmt: skip
    return root


def test_the_map_is_highest_over_the_object(squares: Path, tmp_path: Path) -> None:
    clf = imgcls.load(squares / "run" / "model", backend="torch", precision="fp32")
    explainer = Explainer(clf)
    rng = np.random.default_rng(5)
    hits = 0
    corners = [(4, 4), (44, 6), (8, 42), (40, 40), (24, 24)]
    for k, (x, y) in enumerate(corners):
        pixels = np.asarray(square_scene(rng, (220, 30, 30), at=(x, y)))
        (e,) = explainer.explain([(f"scene{k}", pixels)], top=1)
        assert e.labels == ["red"]
        peak_y, peak_x = np.unravel_index(np.argmax(e.maps[0]), e.maps[0].shape)
        inside = x - 4 <= peak_x < x + 20 and y - 4 <= peak_y < y + 20  # the square, give or take a feature cell
        hits += inside
        square, rest = e.maps[0][y : y + 16, x : x + 16].mean(), e.maps[0].mean()
        assert square > 2 * rest, (x, y, square, rest)
    assert hits >= 4, hits


def test_explain_command_writes_a_picture_per_image_and_refuses_onnx(
    squares: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = squares / "data" / "blue"
    (tmp_path / "notes.jpg").write_bytes(b"not an image")
    out = tmp_path / "why"
    assert main(["explain", "--model", str(squares / "run" / "model"), str(images), str(tmp_path / "notes.jpg"),
                 "--out", str(out), "--top-k", "2"]) == 0  # fmt: skip
    assert "explained 40 images (1 unreadable)" in capsys.readouterr().out
    pictures = sorted(out.glob("*.png"))
    assert len(pictures) == 40 and Image.open(pictures[0]).size == (3 * 192, 192 + 18)  # input + 2 classes
    rows = (out / "explanations.csv").read_text().splitlines()
    assert len(rows) == 42 and "not an image" in rows[-1]
    import csv

    with open(out / "explanations.csv", newline="") as f:
        first = next(csv.DictReader(f))
    clf = imgcls.load(squares / "run" / "model", backend="torch")
    said = clf.predict(first["path"], top_k=2)[0]  # the classes explained are the ones predict gives
    assert first["labels"] == ";".join(said["top_k"]) and float(first["probabilities"].split(";")[0]) == pytest.approx(
        said["score"], abs=2e-3
    )
    assert main(["explain", "--model", str(squares / "run" / "model" / "model.onnx"), str(images), "--out",
                 str(tmp_path / "x")]) == 2  # fmt: skip
    assert "an ONNX model cannot be explained" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arch", ["lenet", "smallnet", "alexnet", "vgg11", "resnet18", "seresnet18", "convnext_tiny", "efficientnet_b0"]
)
def test_every_family_has_a_feature_map_to_explain(arch: str) -> None:
    from captum.attr import LayerGradCam

    torch.manual_seed(0)
    model = create_model(arch, num_classes=3).eval()
    size = (3, 64, 64)
    name, layer = feature_layer(model, size)
    maps = grad_cam(LayerGradCam(model, layer), torch.randn(2, *size), np.array([[0, 1], [2, 0]]))
    assert maps.shape == (2, 2, 64, 64) and maps.min() >= 0 and maps.max() <= 1 and name
