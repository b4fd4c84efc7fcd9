"""Learning-rate schedules, default rates and parameter groups (imgcls.engine.optim)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from imgcls.engine.optim import Schedule, build_optimizer, default_lr, lr_factor, param_groups
from imgcls.models import create_model


def test_warmup_then_cosine_values() -> None:
    total, warmup = 110, 10
    assert [lr_factor(s, total, warmup, "cosine") for s in range(3)] == pytest.approx([1 / 11, 2 / 11, 3 / 11])
    assert lr_factor(9, total, warmup, "cosine") == pytest.approx(10 / 11)
    assert lr_factor(10, total, warmup, "cosine") == pytest.approx(1.0)  # the peak right after warm-up
    assert lr_factor(60, total, warmup, "cosine") == pytest.approx(0.5)  # half-way down the cosine
    assert lr_factor(35, total, warmup, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(109, total, warmup, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lr_factor(110, total, warmup, "cosine") == 0.0
    assert [lr_factor(s, 100, 0, "constant") for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert lr_factor(3, 100, 10, "constant") == pytest.approx(4 / 11)


def test_one_cycle_rises_over_30_percent_then_falls() -> None:
    f = [lr_factor(s, 100, 0, "onecycle") for s in range(101)]
    assert f[0] == pytest.approx(1 / 25) and f[30] == pytest.approx(1.0) and max(f) == pytest.approx(1.0)
    assert f[100] == pytest.approx(1 / 25e4)
    assert all(a <= b for a, b in itertools.pairwise(f[:31]))
    assert all(a >= b for a, b in itertools.pairwise(f[30:]))


def test_schedule_sets_every_group_with_its_multiplier() -> None:
    model = create_model("lenet", num_classes=3)
    groups = param_groups(model, classifier="fc3", weight_decay=0.05, backbone_lr_mult=0.1)
    opt = build_optimizer("adamw", groups, lr=1e-3)
    lr = Schedule(base_lr=1e-3, total=100, warmup=0).apply(opt, 50)
    assert lr == pytest.approx(5e-4)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(5e-4 * (1.0 if g["is_head"] else 0.1))
    # no weight decay on biases and norms
    for g in opt.param_groups:
        assert g["weight_decay"] == (0.05 if all(p.ndim > 1 for p in g["params"]) else 0.0)


def test_default_learning_rates_scale_with_the_batch() -> None:
    assert default_lr("sgd", 256) == pytest.approx(0.1) and default_lr("sgd", 64) == pytest.approx(0.025)
    assert default_lr("adamw", 64) == pytest.approx(1e-3) and default_lr("adamw", 256) == pytest.approx(2e-3)
    assert isinstance(build_optimizer("sgd", [{"params": [torch.nn.Parameter(torch.zeros(2))]}], lr=0.1),
                      torch.optim.SGD)  # fmt: skip
