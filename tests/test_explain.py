"""Class-activation maps (imgcls.explain): where the evidence is, for every family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls.cli import main
from imgcls.errors import UserError
from imgcls.explain import Explainer, Explanation, feature_layer, grad_cam, overlay, strip
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
        table = list(csv.DictReader(f))
    first = table[0]
    assert {r["layer"] for r in table[:-1]} == {"stages"} and table[-1]["layer"] == ""  # the map each picture shows
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


# The layer each family is explained at: timm's own feature description (``feature_info``, its
# last entry) where the model has one, else the last convolutional map before the classifier's
# pooling (AlexNet's and VGG's ``features``, not the adaptive 7 x 7 pool that resizes it; LeNet's
# second conv stage, not its 5 x 5 adaptive pool).
FEATURE_MAPS = [
    ("lenet", "pool2"),
    ("smallnet", "stages"),
    ("alexnet", "features"),
    ("vgg11_lrn", "features"),
    ("vgg16_c", "features"),
    ("resnet18", "layer4"),
    ("seresnet18", "layer4"),
    ("convnext_tiny", "stages.3"),
    ("convnextv2_tiny", "stages.3"),
    ("efficientnet_b0", "blocks.6"),
    ("timm/regnetx_002", "s4"),
    ("timm/swin_tiny_patch4_window7_224", "layers.3"),  # channels-last (NHWC): seen channels-first
    ("torchvision/vgg11", "features"),
    ("torchvision/resnet18", "layer4"),
]


@pytest.mark.parametrize(("arch", "layer"), FEATURE_MAPS)
def test_each_family_is_explained_at_its_last_feature_map(arch: str, layer: str) -> None:
    with torch.device("meta"):  # shapes only: nothing computed, nothing initialised
        model = create_model(arch, num_classes=3).eval()
    size = tuple(model.pretrained_cfg["input_size"])
    name, module = feature_layer(model, size)
    assert name == layer
    seen: list[tuple[int, ...]] = []
    module.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    model(torch.zeros(1, *size, device="meta"))
    (_, channels, h, w), *_ = seen
    assert channels >= 16 > h == w >= 2, seen  # (batch, channels, height, width), what Grad-CAM weighs


@pytest.mark.parametrize("arch", ["timm/vit_tiny_patch16_224", "torchvision/vit_b_16"])
def test_a_transformer_has_no_map_to_explain(arch: str) -> None:
    with torch.device("meta"):
        model = create_model(arch, num_classes=3).eval()
    with pytest.raises(UserError, match=r"has no spatial feature map \(.*tokens.*Grad-CAM needs a convolutional"):
        feature_layer(model, (3, 224, 224), arch=arch)


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory of timm's ViT-Tiny (random weights: nothing downloads)."""
    from imgcls.artifacts import save_model
    from imgcls.config import PreprocessConfig

    torch.manual_seed(0)
    model = create_model("timm/vit_tiny_patch16_224", num_classes=2)
    out = tmp_path_factory.mktemp("vit") / "model"
    return save_model(model, out, label_names=["a", "b"], preprocess=PreprocessConfig(input_size=(3, 224, 224)))


def test_explain_refuses_a_vision_transformer_in_one_line(
    vit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    code = main(["explain", "--model", str(vit), str(tmp_path / "a.png"), "--out", str(tmp_path / "why")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "timm/vit_tiny_patch16_224 has no spatial feature map" in err and "Grad-CAM needs a convolutional" in err
    assert not (tmp_path / "why").exists()


def test_serve_answers_409_for_a_model_without_a_map(vit: Path) -> None:
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient

    from imgcls.serve.app import ServeConfig, create_app

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
    cfg = ServeConfig(model=str(vit))
    with TestClient(create_app(cfg), base_url=f"http://127.0.0.1:{cfg.port}", raise_server_exceptions=False) as c:
        r = c.post("/explain", files={"file": ("a.png", buf.getvalue(), "image/png")})
    assert r.status_code == 409 and "has no spatial feature map" in r.text, (r.status_code, r.text)


def test_a_channels_last_map_is_weighed_per_channel() -> None:
    """Swin's stages give (batch, height, width, channels): Grad-CAM's channel weights are the
    gradient averaged over height and width, whatever the layout."""
    import timm
    from captum.attr import LayerGradCam

    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", num_classes=3, img_size=64, window_size=2,
                              embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)).eval()  # fmt: skip
    name, module = feature_layer(model, (3, 64, 64))
    assert name == "layers.3"
    x = torch.randn(2, 3, 64, 64)
    got = LayerGradCam(model, module).attribute(x, target=torch.tensor([0, 2]), relu_attributions=True)
    kept: list[torch.Tensor] = []
    model.get_submodule("layers.3").register_forward_hook(lambda _m, _i, out: kept.append(out))
    scores = model(x)
    (nhwc,) = kept
    grads = torch.autograd.grad(scores[0, 0] + scores[1, 2], nhwc)[0]
    weights = grads.mean(dim=(1, 2), keepdim=True)  # per image and channel
    want = torch.relu((weights * nhwc).sum(dim=-1))[:, None]  # (2, 1, 2, 2)
    assert got.shape == want.shape == (2, 1, 2, 2)
    torch.testing.assert_close(got, want.detach())


def test_each_overlay_names_its_layer() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    maps = rng.random((2, 32, 32)).astype(np.float32)
    plain, named = overlay(pixels, maps[0]), np.asarray(overlay(pixels, maps[0], layer="layer4"))
    changed = np.argwhere((np.asarray(plain) != named).any(axis=-1))
    assert len(changed) and changed[:, 0].min() >= 192 - 16  # a caption along the bottom, the map left whole
    assert (np.asarray(overlay(pixels, maps[0], layer="stages.3")) != named).any()  # the name, not a mark
    picture = np.asarray(strip(Explanation("a.png", pixels, ["x", "y"], [0.6, 0.3], maps, layer="layer4")))
    assert picture.shape == (192 + 18, 3 * 192, 3)
    for i in (1, 2):  # each overlay of the strip carries the caption
        panel = picture[18:, i * 192 : (i + 1) * 192]
        assert np.array_equal(panel, np.asarray(overlay(pixels, maps[i - 1], layer="layer4")))


def test_a_reused_out_holds_only_this_runs_pictures_and_never_loses_the_users_files(
    squares: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second explain into the same --out left the first one's 40 pictures beside its own."""
    import csv

    model = str(squares / "run" / "model")
    out = tmp_path / "why"
    out.mkdir()
    (out / "000.png").write_bytes(b"the user's own picture")  # a name explain would write
    (out / "notes.txt").write_text("mine")
    assert main(["explain", "--model", model, str(squares / "data" / "blue"), "--out", str(out)]) == 0
    assert "explained 40 images ->" in capsys.readouterr().out
    assert (out / "000.png").read_bytes() == b"the user's own picture" and (out / "000-2.png").is_file()
    red = squares / "data" / "red"
    assert main(["explain", "--model", model, str(red / "003.png"), str(red / "004.png"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "explained 2 images ->" in captured.out
    assert "removed the 40 pictures of the earlier explain" in captured.err
    with open(out / "explanations.csv", newline="") as f:
        listed = {r["explanation"] for r in csv.DictReader(f)}
    assert listed == {"003.png", "004.png"}
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "003.png", "004.png", "explanations.csv", "notes.txt"]
    assert (out / "000.png").read_bytes() == b"the user's own picture"
    # one image: the count's noun agrees
    assert main(["explain", "--model", model, str(red / "005.png"), "--out", str(out)]) == 0
    assert "explained 1 image ->" in capsys.readouterr().out
    # an explanations.csv explain did not write: refused in one line, nothing deleted
    other = tmp_path / "other"
    other.mkdir()
    (other / "explanations.csv").write_text("name,score\nx.png,1\n")
    (other / "x.png").write_bytes(b"keep")
    assert main(["explain", "--model", model, str(red / "005.png"), "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert "explanations.csv that 'imgcls explain' did not write" in err and len(err.strip().splitlines()) == 1
    assert (other / "x.png").read_bytes() == b"keep" and sorted(p.name for p in other.iterdir()) == [
        "explanations.csv", "x.png"]  # fmt: skip


def test_a_coarse_map_says_so_in_the_csv_the_picture_and_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's ResNet-18 at 64 px is explained at layer4's 2 x 2 map: four blocks, the hot
    spot of a '3' in a corner of background, and nothing said so."""
    import csv

    from imgcls.artifacts import save_model
    from imgcls.config import PreprocessConfig
    from imgcls.explain import coarse_note, feature_map

    note = coarse_note((2, 2), (3, 64, 64))
    assert note == (
        "the map is 2 x 2 at this input size (64 px): coarse, a cell per 32 px; "
        "a model trained at --image-size 224 or more gives 7 x 7"
    )
    assert coarse_note((7, 7), (3, 224, 224)) == coarse_note((4, 4), (3, 28, 28)) == ""
    with torch.device("meta"):
        resnet = create_model("resnet18", num_classes=3).eval()
    assert feature_map(resnet, (3, 64, 64)).grid == (2, 2) and feature_map(resnet, (3, 224, 224)).grid == (7, 7)
    torch.manual_seed(0)
    lenet = create_model("lenet", num_classes=2)  # at 20 px its pool2 map is 2 x 2 too
    model = save_model(
        lenet, tmp_path / "model", label_names=["a", "b"], preprocess=PreprocessConfig(input_size=(3, 20, 20))
    )
    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "a.png")
    assert main(["explain", "--model", str(model), str(tmp_path / "a.png"), "--out", str(tmp_path / "why")]) == 0
    said = capsys.readouterr().out
    assert "note: the map is 2 x 2 at this input size (20 px): coarse" in said, said
    with open(tmp_path / "why" / "explanations.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["layer"] == "pool2" and row["note"].startswith("the map is 2 x 2 at this input size (20 px)")
    e = Explanation("a.png", np.zeros((20, 20, 3), np.uint8), ["a"], [0.6], np.zeros((1, 20, 20)), "pool2", (2, 2))
    fine = Explanation("a.png", np.zeros((20, 20, 3), np.uint8), ["a"], [0.6], np.zeros((1, 20, 20)), "pool2", (7, 7))
    assert (np.asarray(strip(e))[:18] != np.asarray(strip(fine))[:18]).any()  # the caption above says so
