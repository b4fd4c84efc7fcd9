"""What ``--time-budget`` chooses (imgcls.engine.candidates) and the progressive-resizing schedule
it may choose (imgcls.engine.resolution), with the machine's speed patched in."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from imgcls.config import RunConfig
from imgcls.data.transforms import PRESETS, BatchAugment
from imgcls.engine import candidates
from imgcls.engine.budget import BudgetPlan
from imgcls.engine.candidates import NEED_EPOCHS, Candidate, choose, open_choices, pick
from imgcls.engine.distributed import Dist
from imgcls.engine.plan import ModelPlan, Plan
from imgcls.engine.resolution import SizeSchedule, low_size, parse_progressive
from imgcls.models.registry import get_entry


def test_the_schedule_starts_small_and_ends_at_full_size() -> None:
    s = SizeSchedule(low_size(28), 28)
    sizes = [s.size(step, 1000) for step in range(1000)]
    assert sizes[0] == 16 and sizes[249] == 16  # the first quarter at the low size
    assert all(v == 28 for v in sizes[750:])  # the last quarter at the size it is evaluated at
    assert sizes == sorted(sizes) and set(sizes) == {16, 20, 24, 28}  # growing, on a 4-px grid
    assert SizeSchedule(low_size(224), 224).size(0, 10) == 128  # fast.ai's 128 -> 224
    assert {SizeSchedule(128, 224).size(i, 100) for i in range(100)} <= {128, 160, 192, 224}
    # its cost: the pixels, plus a share that does not scale with them
    assert s.cost(28) == 1.0 and s.cost(16) == pytest.approx((16 / 28) ** 2)
    assert SizeSchedule(16, 28, fixed=0.1).cost(16) == pytest.approx(0.1 + 0.9 * (16 / 28) ** 2)
    assert 0.6 < s.mean_cost(0, 1000) < 0.7  # a third of the steps' pixels saved
    assert s.mean_cost(800, 1000) == 1.0 and SizeSchedule(28, 28).mean_cost(0, 10) == 1.0


def test_progressive_resize_option() -> None:
    assert parse_progressive("auto", 28) is None  # a time budget decides
    assert parse_progressive("off", 28) == SizeSchedule(28, 28)
    assert parse_progressive("on", 224) == SizeSchedule(128, 224)
    assert parse_progressive("20", 28) == SizeSchedule(20, 28)
    assert parse_progressive(64, 28) == SizeSchedule(28, 28)  # never larger than the size


def test_the_augmentation_draws_each_batch_at_the_scheduled_size() -> None:
    from imgcls.config import PreprocessConfig

    pre = PreprocessConfig(input_size=(3, 28, 28), mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=1.0)
    x = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    assert BatchAugment(pre, PRESETS["small"])(x, g, 16).shape == (4, 3, 16, 16)
    assert BatchAugment(pre, PRESETS["none"])(x, g, 20).shape == (4, 3, 20, 20)
    assert BatchAugment(pre, PRESETS["small"])(x, g).shape == (4, 3, 28, 28)


def test_a_budget_plans_more_steps_with_progressive_resizing() -> None:
    flat = BudgetPlan(budget=600, steps_per_epoch=214, val_images=5000, batch_size=256)
    sizes = SizeSchedule(16, 28)
    grown = BudgetPlan(budget=600, steps_per_epoch=214, val_images=5000, batch_size=256, sizes=sizes)
    a = flat.total_steps(10.0, 0.6, 0, 0.001)
    b = grown.total_steps(10.0, 0.6, 0, 0.001)
    assert 1.45 < b / a < 1.6  # the steps' mean cost is 0.65 of a full-size one
    # what the plan spends: each step at its own size's cost, plus the validation passes
    spent = sum(0.6 * sizes.cost(sizes.size(s, b)) for s in range(b)) + (-(-b // 214)) * 5.0
    assert 0.97 * (600 - 10 - 12) < spent <= 600 - 10 - 12


def candidate(arch: str, epochs: float, low: int = 28) -> Candidate:
    c = Candidate(arch, SizeSchedule(low, 28), full_step=0.5, batch=256)
    c.epochs = epochs
    return c


def test_the_most_capable_setting_that_trains_enough_epochs_is_chosen() -> None:
    found = [candidate("smallnet", 4.6), candidate("smallnet", 7.0, 16), candidate("smallnet_075", 6.4),
             candidate("smallnet_075", 10.5, 16), candidate("smallnet_050", 11.0)]  # fmt: skip
    index, why = pick(found, need=8)
    assert index == 3 and "would train only 4.6 epochs" in why and "this trains 10.5" in why
    index, why = pick([candidate("smallnet", 9.2), *found[1:]], need=8)
    assert index == 0 and "9.2 epochs" in why  # the default fits: nothing given up
    index, why = pick([candidate("smallnet", 1.0), candidate("smallnet", 1.4, 16)], need=8)
    assert index == 1 and "no setting reaches 8 epochs" in why


def test_what_is_left_open_is_chosen() -> None:
    small = ModelPlan("smallnet", None, None, None, "multiclass", 10, 28)
    cfg = RunConfig()
    assert open_choices(cfg, small, 28) == ([], False)  # no budget: nothing to choose
    cfg.train.time_budget = "10m"
    # small images: the width (progressive resizing from 16 px lost accuracy on 28-px images)
    assert open_choices(cfg, small, 28) == (["smallnet", "smallnet_075", "smallnet_050"], False)
    cfg.model.arch = "smallnet"  # the user named the network, and small images keep their size
    assert open_choices(cfg, small, 28) == ([], False)
    cfg.model.arch = "auto"
    tuned = ModelPlan("resnet18", None, None, "default", "multiclass", 10, None)
    assert open_choices(cfg, tuned, 224) == (["resnet18"], True)  # fine-tuning keeps its network
    assert open_choices(cfg, tuned, 64) == ([], False)
    cfg.data.progressive_resize = "off"
    assert open_choices(cfg, tuned, 224) == ([], False)


def make_plan(model: ModelPlan, full: int = 28) -> Plan:
    from imgcls.config import PreprocessConfig

    pre = PreprocessConfig(input_size=(3, full, full), mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=1.0)
    return Plan(model=model, preprocess=pre, augment="small", tta="auto", batch_size=256, lr=2e-3,
                weight_decay=0.05, backbone_lr_mult=1.0, head_epochs=0, sizes=SizeSchedule(full, full))  # fmt: skip


@pytest.mark.parametrize(
    ("tier", "images_per_second", "chosen"),
    [("AVX2, fp32", 431, "smallnet_050"), ("AVX512-BF16, bf16", 900, "smallnet_075"), ("GPU", 20000, "smallnet")],
)
def test_a_slower_machine_gets_a_cheaper_setting(
    tier: str, images_per_second: float, chosen: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fashion-MNIST in 10 minutes: the full-width speed measured on each tier (BENCHMARKS.md)
    patched in for the timed steps, the narrower nets 1.6x and 3.3x faster (as measured there)."""
    faster = {256: 1.0, 192: 1.6, 128: 3.3}  # by the width of the last stage

    def step_seconds(model: torch.nn.Module, cfg: RunConfig, batch: int, size: int, spend: float) -> float:
        fc = model.fc
        assert isinstance(fc, torch.nn.Linear)
        speed = images_per_second * faster[fc.in_features]
        return batch / speed

    monkeypatch.setattr(candidates, "step_seconds", step_seconds)
    cfg = RunConfig()
    cfg.train.time_budget = "10m"
    small = ModelPlan("smallnet", None, None, None, "multiclass", 10, 28)
    out = choose(cfg, small, make_plan(small), tmp_path, train_images=55000, val_images=5000,
                 started=time.monotonic() - 15, dist=Dist())  # fmt: skip
    assert out is not None
    mp, plan, said = out
    assert mp.arch == chosen and not plan.sizes.enabled, said
    assert plan.model.arch == mp.arch and said.startswith("time budget: chose")
    record = json.loads((tmp_path / "budget.json").read_text())
    assert [c["arch"] for c in record["candidates"]] == ["smallnet", "smallnet_075", "smallnet_050"]
    assert sum(c["chosen"] for c in record["candidates"]) == 1 and record["reason"] in said
    assert get_entry(mp.arch).family == "smallnet"


@pytest.mark.parametrize(("images_per_second", "progressive"), [(40.0, True), (400.0, False)])
def test_large_images_start_smaller_when_the_budget_is_short(
    images_per_second: float, progressive: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fine-tuning ResNet-18 on 20,000 224-px images for an hour: 40 img/s gives 7 epochs at full
    size, so the run starts at 128 px (measured cost: the pixels plus a fixed 10%); 400 img/s
    trains 70 epochs at full size."""

    def step_seconds(model: torch.nn.Module, cfg: RunConfig, batch: int, size: int, spend: float) -> float:
        return batch / images_per_second * (0.1 + 0.9 * (size / 224) ** 2)

    monkeypatch.setattr(candidates, "step_seconds", step_seconds)
    cfg = RunConfig()
    cfg.train.time_budget = "1h"
    tuned = ModelPlan("resnet18", None, None, "default", "multiclass", 10, None)
    out = choose(cfg, tuned, make_plan(tuned, 224), tmp_path, train_images=20000, val_images=1000,
                 started=time.monotonic(), dist=Dist())  # fmt: skip
    assert out is not None
    mp, plan, said = out
    assert mp.arch == "resnet18" and plan.sizes.enabled == progressive, said
    if progressive:
        assert plan.sizes == SizeSchedule(128, 224, fixed=pytest.approx(0.1))  # type: ignore[arg-type]
        assert "would train only" in said
    record = json.loads((tmp_path / "budget.json").read_text())
    assert [c["start_size"] for c in record["candidates"]] == [224, 128]


def test_a_budgeted_run_on_small_images_chooses_the_width_and_keeps_it(tmp_path: Path) -> None:
    import yaml

    import imgcls
    from imgfactory import image_folder

    data = image_folder(tmp_path / "imgs", ("cat", "dog", "fox"), 12, size=(28, 28))
    run = imgcls.train(data, out=tmp_path / "run", time_budget="8s", pretrained="none", cache_dir=tmp_path / "c")
    record = json.loads((run / "budget.json").read_text())
    assert [c["arch"] for c in record["candidates"]] == ["smallnet", "smallnet_075", "smallnet_050"]
    assert all(c["images_per_second"] > 0 and c["planned_epochs"] >= 0 for c in record["candidates"])
    chosen = next(c for c in record["candidates"] if c["chosen"])
    # the rule, whatever this machine's speed (a loaded machine may plan no candidate 10 epochs)
    planned = [c["planned_epochs"] for c in record["candidates"]]
    enough = [c for c in record["candidates"] if c["planned_epochs"] >= NEED_EPOCHS]
    assert chosen is enough[0] if enough else chosen["planned_epochs"] >= max(planned) - 0.01
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["arch"] == chosen["arch"]  # recorded, so --resume trains the same network
    assert config["data"]["progressive_resize"] == "off"  # 28-px images keep their size
    assert imgcls.load(run / "model").predict([next(data.glob("cat/*.jpg"))])[0]["label"] in ("cat", "dog", "fox")


def test_progressive_resizing_trains_small_first_and_ends_at_full_size(tmp_path: Path) -> None:
    import yaml

    import imgcls
    from imgfactory import image_folder

    data = image_folder(tmp_path / "imgs", ("cat", "dog", "fox"), 12, size=(48, 48))
    run = imgcls.train(data, out=tmp_path / "run", epochs=4, batch_size=4, progressive_resize="on", image_size=48,
                       pretrained="none", cache_dir=tmp_path / "c")  # fmt: skip
    sizes = [json.loads(line)["train_size"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sizes[0] == 28 and sizes[-1] == 48 and sizes == sorted(sizes)  # 4/7 of 48 px, then growing
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["progressive_resize"] == "28" and config["data"]["image_size"] == 48
    assert imgcls.load(run / "model").preprocess.image_size == 48  # the model is used at full size


def test_the_timed_steps_stay_within_their_share_of_the_budget() -> None:
    """A warm-up step, then up to three timed ones while they fit what measuring may spend (a
    short budget still gets one)."""

    class Counted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.fc(x.mean((2, 3)))

    cfg = RunConfig()
    cfg.train.precision, cfg.train.device = "fp32", "cpu"
    for spend, calls in ((0.0, 2), (float("inf"), 1 + candidates.TIMED_STEPS)):
        model = Counted()
        assert candidates.step_seconds(model, cfg, 4, 8, spend) > 0
        assert model.calls == calls
