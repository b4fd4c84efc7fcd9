"""Per-layer summaries: totals add up, and the classic figures are reproduced by hand."""

from __future__ import annotations

import pytest

from imgcls.models import list_models, summarize_arch


@pytest.mark.parametrize("name", list_models())
def test_columns_add_up_to_the_totals(name: str) -> None:
    s = summarize_arch(name)
    assert s.layers
    assert sum(r.params for r in s.layers) == s.total_params
    assert s.layer_macs == s.total_macs > 0
    assert all(r.memory_kb >= 0 and r.macs >= 0 for r in s.layers)
    assert s.layers[-1].output_shape == [1000]


def test_alexnet_first_layer_by_hand() -> None:
    s = summarize_arch("alexnet")
    conv1 = s.layers[0]
    assert (conv1.name, conv1.type, conv1.output_shape) == ("features.0", "Conv2d", [64, 55, 55])
    assert conv1.params == 64 * 3 * 11 * 11 + 64
    assert conv1.macs == 64 * 3 * 11 * 11 * 55 * 55
    assert conv1.memory_kb == pytest.approx(64 * 55 * 55 * 4 / 1024)
    fc = s.layers[-1]
    assert (fc.name, fc.params, fc.macs) == ("classifier.6", 4096 * 1000 + 1000, 4096 * 1000)


def test_lenet_totals_by_hand() -> None:
    s = summarize_arch("lenet", num_classes=10)
    conv = 6 * 3 * 25 * 28 * 28 + 16 * 6 * 25 * 10 * 10
    fc = 400 * 120 + 120 * 84 + 84 * 10
    assert s.total_macs == conv + fc
    assert s.total_params == 62_006
    assert [r.output_shape for r in s.layers if r.type == "MaxPool2d"] == [[6, 14, 14], [16, 5, 5]]


def test_a_module_called_twice_counts_its_parameters_once() -> None:
    s = summarize_arch("torchvision/resnet18")  # torchvision reuses one ReLU per block
    relus = [r for r in s.layers if r.name == "layer1.0.relu"]
    assert len(relus) == 2
    assert sum(r.params for r in s.layers) == s.total_params == 11_689_512


def test_modules_holding_parameters_directly_get_a_row() -> None:
    s = summarize_arch("convnext_tiny")
    blocks = [r for r in s.layers if r.type == "ConvNeXtBlock"]
    assert blocks and all(r.params > 0 for r in blocks)  # layer scale (gamma)


def test_input_size_and_options_change_the_table() -> None:
    small = summarize_arch("resnet18", input_size=(3, 112, 112))
    full = summarize_arch("resnet18")
    assert small.total_params == full.total_params
    assert small.total_macs < full.total_macs / 3
    se = summarize_arch("resnet18", attn="se", norm="group")
    assert any(r.type == "GroupNorm" for r in se.layers)
    assert any(".se." in r.name for r in se.layers)


def test_json_contract() -> None:
    d = summarize_arch("lenet", input_size=(3, 32, 32), num_classes=10).to_dict()
    assert {"arch", "input_size", "total_params", "total_macs", "layers"} <= set(d)
    assert d["input_size"] == [3, 32, 32]
    assert set(d["layers"][0]) == {"name", "type", "output_shape", "params", "memory_kb", "macs"}


def test_a_failing_forward_pass_leaves_no_dispatch_mode_behind() -> None:
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    with pytest.raises(RuntimeError):
        summarize_arch("alexnet", input_size=(3, 8, 8))
    assert not _get_current_dispatch_mode_stack()
