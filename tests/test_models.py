"""The architecture registry: every built-in name builds, runs forward and backward, has the
reference parameter count, and exchanges weights with torchvision / timm."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

import imgcls
from imgcls.errors import UserError
from imgcls.models import build_model, create_model, get_entry, list_models, preprocess_config

REQUIRED = [
    "lenet", "alexnet",
    "vgg11", "vgg11_lrn", "vgg13", "vgg16_c", "vgg16", "vgg19",
    "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "seresnet18", "seresnet34", "seresnet50", "seresnet101", "seresnet152",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
    "convnextv2_tiny", "convnextv2_base", "convnextv2_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
]  # fmt: skip
ALL = list_models()


def _meta(name: str, **kw: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kw)  # type: ignore[arg-type]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _reference(name: str) -> nn.Module:
    """The library model our entry must equal at 1000 classes."""
    with torch.device("meta"):
        if name in torchvision.models.list_models(module=torchvision.models):
            return torchvision.models.get_model(name, weights=None)
        return timm.create_model(name)


def test_required_names_are_registered() -> None:
    assert set(REQUIRED) <= set(ALL)
    assert imgcls.list_models() == ALL


def test_duplicate_registration_is_an_error() -> None:
    from imgcls.models.registry import register_model

    with pytest.raises(ValueError, match="already registered"):
        register_model(get_entry("resnet18"))


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_and_head_size(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    size = preprocess_config(model).image_size
    x = torch.randn(2, 3, 32, 32) if size <= 32 else torch.randn(2, 3, 64, 64)
    model.train()
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)


@pytest.mark.parametrize("name", [n for n in REQUIRED if n not in ("lenet", "vgg11_lrn", "vgg16_c")])
def test_parameter_count_equals_reference_model(name: str) -> None:
    assert _count(_meta(name)) == _count(_reference(name))


def test_parameter_counts_of_own_architectures() -> None:
    # LeNet of the PyTorch tutorial at 10 classes: 456 + 2416 + 48120 + 10164 + 850.
    assert _count(_meta("lenet", num_classes=10)) == 62_006
    # A-LRN adds no parameters to A; C replaces three 3x3 convs of D with 1x1 convs.
    assert _count(_meta("vgg11_lrn")) == _count(_reference("vgg11"))
    saved = (256 * 256 + 2 * 512 * 512) * (9 - 1)
    assert _count(_meta("vgg16_c")) == _count(_reference("vgg16")) - saved
    convs = [m for m in _meta("vgg16_c").modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs].count(1) == 3
    lrn = [m for m in _meta("vgg11_lrn").modules() if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrn) == 1 and lrn[0].size == 5


@pytest.mark.parametrize(
    "name", ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
             "alexnet", "resnet18", "resnet50"],
)  # fmt: skip
def test_state_dict_layout_equals_torchvision(name: str) -> None:
    ours = {k: tuple(v.shape) for k, v in _meta(name).state_dict().items()}
    ref = {k: tuple(v.shape) for k, v in _reference(name).state_dict().items()}
    assert ours == ref


def test_torchvision_weights_load_unchanged_and_compute_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "tv_resnet18.pth"
    torch.save(tv.state_dict(), path)
    model, report = build_model("resnet18", pretrained=str(path))
    assert report is not None and not report.new and not report.ignored
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model.eval()(x), tv(x))


def test_transfer_to_new_classes_keeps_backbone_and_replaces_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = timm.create_model("convnext_tiny", num_classes=1000)
    path = tmp_path / "convnext.safetensors"
    save_file(src.state_dict(), str(path))
    model, report = build_model("convnext_tiny", num_classes=5, pretrained=str(path))
    assert report is not None
    assert sorted(report.new) == ["head.fc.bias", "head.fc.weight"]
    assert len(report.loaded) == len(src.state_dict()) - 2
    torch.testing.assert_close(model.stem[0].weight, src.stem[0].weight)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_torchvision_checkpoint_wrappers_and_prefixes_are_unwrapped(tmp_path: Path) -> None:
    tv = torchvision.models.vgg11_bn(weights=None)
    wrapped = {"model": {f"module.{k}": v for k, v in tv.state_dict().items()}, "epoch": 3}
    path = tmp_path / "ckpt.pt"
    torch.save(wrapped, path)
    model, report = build_model("vgg11_bn", num_classes=3, pretrained=str(path))
    assert report is not None and sorted(report.new) == ["classifier.6.bias", "classifier.6.weight"]
    torch.testing.assert_close(model.features[0].weight, tv.features[0].weight)


class _Exploit:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickle_that_would_execute_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    plain = tmp_path / "evil.pth"
    with open(plain, "wb") as f:
        pickle.dump({"fc.weight": _Exploit(marker)}, f)
    zipped = tmp_path / "evil2.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Exploit(marker)}, zipped)
    assert not marker.exists()  # saving does not call it
    for p in (plain, zipped):
        with pytest.raises(UserError, match="refusing to load"):
            create_model("resnet18", pretrained=str(p))
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r18.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(path))
    with pytest.raises(UserError, match=r"does not fit.*missing"):
        create_model("resnet34", pretrained=str(path))
    with pytest.raises(UserError, match=r"does not fit.*differ in shape"):
        create_model("resnet50", pretrained=str(path))
    # adding attention to a pretrained backbone is a deliberate partial load
    with pytest.raises(UserError, match="missing"):
        create_model("resnet18", attn="se", pretrained=str(path))
    _, report = build_model("resnet18", attn="se", pretrained=str(path), partial=True)
    assert report is not None and all(".se." in k for k in report.new if not k.startswith("fc."))
    save_file({"foo": torch.zeros(3)}, str(tmp_path / "foo.safetensors"))
    with pytest.raises(UserError, match="none of the 1 tensors"):
        create_model("resnet18", pretrained=str(tmp_path / "foo.safetensors"))
    with pytest.raises(UserError, match="not found"):
        create_model("resnet18", pretrained=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="safetensors"):
        create_model("resnet18", pretrained=str(tmp_path / "junk.safetensors"))


def test_published_weights_offline_give_a_clear_error() -> None:
    with pytest.raises(UserError, match="no published pretrained weights"):
        create_model("vgg16_c", pretrained=True)
    with pytest.raises(UserError, match="timm publishes no weights"):
        create_model("alexnet", pretrained="timm")
    with pytest.raises(UserError, match="cannot get torchvision's weights"):
        create_model("alexnet", pretrained="torchvision")  # TORCH_HOME is empty, no network


@pytest.mark.parametrize("name", ["lenet", "vgg11", "resnet18"])
@pytest.mark.parametrize("norm", ["batch", "group", "layer", "instance", "none"])
def test_norm_option(name: str, norm: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, norm=norm)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    if norm == "none":
        assert not norms
    else:
        assert norms
        for m in norms:
            if norm == "batch":
                assert isinstance(m, nn.BatchNorm2d)
            else:
                assert isinstance(m, nn.GroupNorm)
                # layer: one group; instance: one channel a group; group: G = 32 (Wu & He), or the
                # largest divisor of C that divides 32 for narrow layers (LeNet's 6 and 16 channels)
                expected = {"layer": 1, "instance": m.num_channels, "group": math.gcd(m.num_channels, 32)}[norm]
                assert m.num_groups == expected, (m.num_channels, m.num_groups)
        if norm == "group":
            widths = {m.num_channels: m.num_groups for m in norms}
            assert widths.get(64, 32) == 32 and widths.get(6, 2) == 2 and widths.get(16, 16) == 16
    x = torch.randn(2, 3, 32, 32)
    assert torch.isfinite(model.train()(x)).all()


@pytest.mark.parametrize("name", ["lenet", "vgg11", "resnet18"])
def test_se_attention_option(name: str) -> None:
    from timm.layers import SEModule

    plain = create_model(name, num_classes=4)
    se = create_model(name, num_classes=4, attn="se")
    assert not any(isinstance(m, SEModule) for m in plain.modules())
    n_se = sum(isinstance(m, SEModule) for m in se.modules())
    assert n_se == {"lenet": 2, "vgg11": 5, "resnet18": 8}[name]
    assert se.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_resnet_with_se_is_seresnet() -> None:
    a = _meta("resnet50", attn="se").state_dict()
    b = _meta("seresnet50").state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_options_are_refused_where_they_do_not_apply() -> None:
    with pytest.raises(UserError, match="no norm option"):
        create_model("convnext_tiny", norm="group")
    with pytest.raises(UserError, match="unknown norm"):
        create_model("resnet18", norm="weird")
    with pytest.raises(UserError, match=r"unknown architecture 'resnet19'; did you mean"):
        create_model("resnet19")
    with pytest.raises(UserError, match="at least 1"):
        create_model("lenet", num_classes=0)


def test_any_timm_or_torchvision_classifier_by_prefix() -> None:
    m = create_model("timm/mobilenetv3_small_050", num_classes=3)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    m = create_model("torchvision/mobilenet_v3_small", num_classes=3)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert preprocess_config(m).input_size == (3, 224, 224)
    with pytest.raises(UserError, match="timm has no model"):
        create_model("timm/not_a_model")
    with pytest.raises(UserError, match="torchvision has no image classifier"):
        create_model("torchvision/fasterrcnn_resnet50_fpn")


@pytest.mark.parametrize("name", ALL)
def test_default_preprocessing_is_exposed(name: str) -> None:
    cfg = preprocess_config(_meta(name))
    assert cfg.input_size[0] == 3 and cfg.image_size >= 28
    assert len(cfg.mean) == 3 and len(cfg.std) == 3 and all(s > 0 for s in cfg.std)
    assert 0.5 < cfg.crop_pct <= 1.0
    assert cfg.interpolation in ("bilinear", "bicubic", "nearest")


def test_published_weights_come_from_the_cache_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model fetched once before is there offline: timm's weights read from the Hugging Face
    cache (written here as the hub lays it out), with no request; without them, the error is
    immediate and names what to do instead."""
    import huggingface_hub.constants as hub
    from safetensors.torch import save_file

    from imgcls.models import weights as W

    torch.manual_seed(3)
    published = timm.create_model("resnet18").state_dict()
    snapshot = tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file(published, str(snapshot / "model.safetensors"))
    (tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(W, "reachable", lambda host, timeout=3.0: False)  # no network
    model = create_model("resnet18", num_classes=1000, pretrained=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in published.items() if "num_batches" not in k)
    with pytest.raises(UserError, match=r"huggingface\.co cannot be reached and they are not in the cache; train "
                       "from scratch with --pretrained none"):  # fmt: skip
        create_model("convnext_tiny", pretrained=True)  # not cached: said at once, no minute of retries


# ----------------------------------------------------------------- He et al.'s CIFAR networks
CIFAR = [f"{kind}{depth}" for depth in (20, 32, 44, 56, 110) for kind in ("resnet", "plain")]


def test_cifar_resnets_have_the_papers_parameter_counts() -> None:
    """6n+2 weighted layers on 16/32/64 channels, option-A shortcuts: Table 6's counts at 10
    classes (0.27M, 0.46M, 0.66M, 0.85M, 1.7M), and a plain network has exactly its residual
    counterpart's parameters."""
    assert set(CIFAR) <= set(ALL)
    counts = {name: _count(_meta(name, num_classes=10)) for name in CIFAR}
    for depth, millions in ((20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)):
        assert round(counts[f"resnet{depth}"] / 1e6, 2 if depth < 110 else 1) == millions
        assert counts[f"plain{depth}"] == counts[f"resnet{depth}"]
        model = _meta(f"resnet{depth}", num_classes=10)
        weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert len(weighted) == depth  # no projection shortcut adds a layer
        assert [m.out_channels for m in weighted[:-1]][:: (depth - 2) // 3][1:] == [16, 32, 64]
    assert preprocess_config(_meta("resnet20")).input_size == (3, 32, 32)


def test_a_plain_block_has_no_shortcut() -> None:
    """The same two convolutions; only the residual block adds its input: with the second
    convolution's output zeroed, a residual network's block passes its input on (ReLU of it),
    a plain network's passes nothing."""
    torch.manual_seed(0)
    residual, plain = create_model("resnet20", num_classes=3), create_model("plain20", num_classes=3)
    assert {k: v.shape for k, v in residual.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(2, 16, 8, 8)
    for model in (residual, plain):
        block = model.eval().layer1[0]
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
    with torch.no_grad():
        assert torch.equal(residual.layer1[0](x), torch.relu(x))
        assert torch.equal(plain.layer1[0](x), torch.zeros_like(x))
        residual.layer2[0].eval()
        down = residual.layer2[0].shortcut(torch.randn(2, 16, 8, 8))  # option A: subsample, zero channels
    assert down.shape == (2, 32, 4, 4) and not down[:, :8].any() and not down[:, 24:].any()
