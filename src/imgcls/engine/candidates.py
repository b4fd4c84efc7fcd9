"""``--time-budget`` chooses the setting that fits the machine.

A budget buys a different amount of training on every machine: ten minutes of Fashion-MNIST are
9 epochs of ``smallnet`` on a 2-core CPU with bf16 units and 4 in fp32 on one without them, and a
network that gets too few epochs ends far from what it could reach. So before a
budgeted run trains, it times a few training steps of each candidate setting on this machine
(with the run's device, precision, memory format and batch size, on random images: the
candidates' speeds, not their accuracy; a warm-up step, then up to three timed ones within 1% of
the budget) and plans each one's epochs with the arithmetic the run
itself plans its steps with (:class:`imgcls.engine.budget.BudgetPlan`). The candidates, the most
capable first:

1. the planned architecture at full size, then, for images larger than 64 px, with progressive
   resizing (the first steps on smaller images: :mod:`imgcls.engine.resolution`);
2. for small images on the default small-image net (``--arch auto``), ``smallnet_075`` and
   ``smallnet_050`` (0.75 and 0.5 of the width).

Small images are not offered progressive resizing: on 28-px Fashion-MNIST, steps from 16 px
bought ``smallnet_075`` 10 epochs instead of 7 in ten minutes but ended lower (93.16% test top-1
against 93.35% for the full-width net's 5 epochs at full size), since what a net learns on 16-px
images carries over poorly to 28 px (its validation top-1 at 28 px fell to 0.56-0.77 during the
16-px epochs). Large images keep their detail at 4/7 of the side (fast.ai's 128 -> 224 px).

The first candidate whose plan reaches :data:`NEED_EPOCHS` (10: the schedule imgcls trains
without a budget) is chosen, or, when none does, the one with the most epochs: a budget keeps the
training long enough and makes the network fit it. Measured on Fashion-MNIST in ten minutes with
PyTorch held to AVX2 (fp32): ``smallnet`` trains 4.5 epochs (93.35% test top-1), a 48-96-192 net
7 (93.63%), ``smallnet_050`` 14 (94.02%, chosen by this rule); with bf16 units ``smallnet``
trains 9 epochs (94.1%), ``smallnet_075`` 14 (94.45%, chosen) (BENCHMARKS.md). The choice is
printed with its reason and written with every candidate's measured speed and planned epochs to
``RUN_DIR/budget.json``.

Only what the user left open is chosen: the width with ``--arch auto``, the sizes with
``--progressive-resize auto`` (the default). A resumed run keeps its choice (``config.yaml``
records the architecture and the sizes).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.config import RunConfig, parse_duration
from imgcls.engine.budget import BudgetPlan
from imgcls.engine.distributed import Dist
from imgcls.engine.plan import DEFAULT_EPOCHS, SMALL_ARCH, SMALL_IMAGE, ModelPlan, Plan
from imgcls.engine.resolution import SizeSchedule, low_size, parse_progressive
from imgcls.io import atomic_write_text
from imgcls.runtime import make_runtime

#: epochs a setting should get before a more capable one is given up for it: the schedule imgcls
#: trains without a budget
NEED_EPOCHS = DEFAULT_EPOCHS
NARROWER = {SMALL_ARCH: ("smallnet_075", "smallnet_050")}
TIMED_STEPS = 3  # at most, after one warm-up step
MEASURING_SHARE = 0.01  # of the budget, for the timed steps after the warm-ups (at least one each)


@dataclass
class Candidate:
    arch: str
    sizes: SizeSchedule
    full_step: float  # seconds of a training step at full size, measured
    batch: int
    epochs: float = 0.0  # planned in the budget

    @property
    def images_per_second(self) -> float:
        """Over the whole schedule (progressive resizing: its mean step)."""
        return self.batch / (self.full_step * self.sizes.mean_cost(0, 1000))

    def describe(self) -> str:
        return f"{self.arch}, {self.sizes.describe()}"


def open_choices(cfg: RunConfig, mp: ModelPlan, size: int) -> tuple[list[str], bool]:
    """The architectures to choose between and whether to choose the sizes, for a run that trains
    at ``size`` px (empty / False: the user fixed both, or there is no budget)."""
    if not cfg.train.time_budget:
        return [], False
    archs = [mp.arch]
    if cfg.model.arch == "auto" and mp.pretrained is None:
        archs += list(NARROWER.get(mp.arch, ()))
    sizes = size > SMALL_IMAGE and parse_progressive(cfg.data.progressive_resize, size) is None  # auto
    return (archs if len(archs) > 1 or sizes else []), sizes


def step_seconds(model: nn.Module, cfg: RunConfig, batch: int, size: int, spend: float = float("inf")) -> float:
    """The fastest of a few training steps of ``model`` (AdamW, the run's precision and memory
    format) on a random batch of ``size``-px images: after a warm-up step, up to
    :data:`TIMED_STEPS` while they take less than ``spend`` seconds (at least one)."""
    t = cfg.train
    runtime = make_runtime(model, device=t.device, precision=t.precision, channels_last=t.channels_last)
    net = runtime.prepare(model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-6)
    x = runtime.inputs(torch.randn(batch, 3, size, size))
    best = float("inf")
    for i in range(1 + TIMED_STEPS):
        start = time.perf_counter()
        with runtime.autocast():
            loss = net(x).float().logsumexp(1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize(runtime.device)
        if i:
            best = min(best, time.perf_counter() - start)
            if i * best > spend:
                break
    return best


def measure(
    cfg: RunConfig, mp: ModelPlan, plan: Plan, archs: list[str], choose_sizes: bool, budget: float
) -> list[Candidate]:
    """Every candidate, in order of capability, with its measured speed (not yet its epochs)."""
    from imgcls.models.factory import build_model

    full = plan.preprocess.image_size
    low = low_size(full) if choose_sizes else full
    spend = MEASURING_SHARE * budget / (len(archs) * (1 + (low < full)))
    out: list[Candidate] = []
    for arch in archs:
        model, _ = build_model(arch, num_classes=mp.num_outputs, norm=mp.norm, attn=mp.attn)
        t_full = step_seconds(model, cfg, plan.batch_size, full, spend)
        options = [plan.sizes]
        if low < full:
            t_low = step_seconds(model, cfg, plan.batch_size, low, spend)
            options = [SizeSchedule(full, full), SizeSchedule.timed(low, full, t_low, t_full)]
        out += [Candidate(arch, sizes, t_full, plan.batch_size) for sizes in options]
    return out


def plan_epochs(c: Candidate, budget: float, elapsed: float, train_images: int, val_images: int) -> float:
    """The epochs the run's own step planning would give ``c`` in the rest of the budget."""
    spe = max(1, train_images // c.batch)
    bp = BudgetPlan(budget=budget, steps_per_epoch=spe, val_images=val_images, batch_size=c.batch,
                    final_passes=1.0, sizes=c.sizes)  # fmt: skip
    return bp.total_for(elapsed, c.full_step, 0) / spe


def pick(found: list[Candidate], need: float) -> tuple[int, str]:
    """The index of the chosen candidate and why."""
    for i, c in enumerate(found):
        if c.epochs >= need:
            if i == 0:
                return 0, f"it trains {c.epochs:.1f} epochs in the budget (at least {need:g} wanted)"
            return i, (f"{found[0].describe()} would train only {found[0].epochs:.1f} epochs in the budget; "
                       f"this trains {c.epochs:.1f} (at least {need:g} wanted)")  # fmt: skip
    best = max(range(len(found)), key=lambda i: found[i].epochs)
    most = found[best].epochs
    return best, f"no setting reaches {need:g} epochs in the budget; this one trains the most ({most:.1f})"


def choose(
    cfg: RunConfig, mp: ModelPlan, plan: Plan, run: Path, *, train_images: int, val_images: int, started: float,
    dist: Dist,
) -> tuple[ModelPlan, Plan, str] | None:  # fmt: skip
    """The model plan and plan of the chosen candidate and what to say of it (None when there is
    nothing to choose); the measurements are written to ``RUN_DIR/budget.json``."""
    archs, choose_sizes = open_choices(cfg, mp, plan.preprocess.image_size)
    if not archs:
        return None
    budget = parse_duration(str(cfg.train.time_budget))
    t0 = time.perf_counter()
    found = measure(cfg, mp, plan, archs, choose_sizes, budget)
    spent = time.perf_counter() - t0
    elapsed = time.monotonic() - started
    for c in found:
        c.epochs = plan_epochs(c, budget, elapsed, train_images, val_images)
    index, why = pick(found, NEED_EPOCHS)
    index = int(dist.broadcast(index))  # every process trains what the first one measured
    chosen = found[index]
    if dist.main:
        record(run, found, index, why, spent)
    mp = dataclasses.replace(mp, arch=chosen.arch)
    return mp, dataclasses.replace(plan, model=mp, sizes=chosen.sizes), f"time budget: chose {chosen.describe()}: {why}"


def record(run: Path, found: list[Candidate], index: int, why: str, seconds: float) -> None:
    rows: list[dict[str, Any]] = [
        {"arch": c.arch, "start_size": c.sizes.low, "size": c.sizes.full,
         "images_per_second": round(c.images_per_second, 1), "planned_epochs": round(c.epochs, 2),
         "chosen": i == index}
        for i, c in enumerate(found)
    ]  # fmt: skip
    atomic_write_text(
        run / "budget.json",
        json.dumps({"candidates": rows, "reason": why, "measuring_seconds": round(seconds, 1)}, indent=2) + "\n",
    )


def fit_to_budget(
    cfg: RunConfig, mp: ModelPlan, plan: Plan, model: nn.Module, run: Path, *, train_images: int, val_images: int,
    started: float, dist: Dist,
) -> tuple[nn.Module, ModelPlan, Plan, str]:  # fmt: skip
    """What to train: the planned model, model plan and plan, or the chosen candidate's (a
    narrower net is built afresh, from scratch like the planned one), and what to say of the
    choice ('' when there was nothing to choose)."""
    chosen = choose(cfg, mp, plan, run, train_images=train_images, val_images=val_images, started=started, dist=dist)
    if chosen is None:
        return model, mp, plan, ""
    if chosen[0].arch != mp.arch:
        from imgcls.models.factory import build_model

        model, _ = build_model(chosen[0].arch, num_classes=mp.num_outputs, norm=mp.norm, attn=mp.attn,
                               drop_rate=cfg.model.drop_rate)  # fmt: skip
    return model, *chosen
