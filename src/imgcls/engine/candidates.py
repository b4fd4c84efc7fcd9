"""``--time-budget`` chooses the setting that fits the machine.

A budget buys a different amount of training on every machine: ten minutes of Fashion-MNIST are
9 epochs of ``smallnet`` on a 2-core CPU with bf16 units and 4 in fp32 on one without them, and a
network that gets too few epochs ends far from what it could reach. So before a budgeted run
trains, it times training steps of each candidate setting on this machine (with the run's
device, precision, memory format and batch size, on random images: the candidates' speeds, not
their accuracy) and plans each one's epochs with the arithmetic the run itself plans its steps
with (:class:`imgcls.engine.budget.BudgetPlan`, the run's own final validation passes and
closing work included). The candidates, the most capable first:

1. the planned architecture at full size, then, for images larger than 64 px, with progressive
   resizing (the first steps on smaller images: :mod:`imgcls.engine.resolution`);
2. for small images on the default small-image net (``--arch auto``), ``smallnet_075`` and
   ``smallnet_050`` (0.75 and 0.5 of the width).

How they are timed (:func:`time_settings`, :func:`check`): each setting (a network at a size)
first takes an untimed step (oneDNN or cuDNN choose their kernels, the optimiser makes its
state), then the settings take turns, one timed step each a round, so a machine that gets busier
slows them all alike; a setting's price is the median of its rounds (3 to 5, as many as fit in
:data:`MEASURING_SHARE` of the budget; fewer only where 3 do not). On a busy machine a step is
only ever measured slower than the machine can run it (a process preempted, never one sped up),
so the timings check each other: a step cannot cost more than a heavier setting's (more
arithmetic: :func:`arithmetic`) nor more than a lighter one's times their arithmetic's ratio
(:data:`TOLERANCE` aside). A setting over that bound is timed again, and if it still is, it is
priced at the bound and said to be: what decides is then the other settings' timing and the
arithmetic, never one noisy figure (a 2-core machine under load once timed ``smallnet_075`` at
23.5 img/s and ``smallnet_050`` at 1,269.6).

Small images are not offered progressive resizing: on 28-px Fashion-MNIST, steps from 16 px
bought ``smallnet_075`` 10 epochs instead of 7 in ten minutes but ended lower (93.16% test top-1
against 93.35% for the full-width net's 5 epochs at full size), since what a net learns on 16-px
images carries over poorly to 28 px. Large images keep their detail at 4/7 of the side (fast.ai's
128 -> 224 px).

The first candidate whose plan reaches :data:`NEED_EPOCHS` (10: the schedule imgcls trains
without a budget; with ``--epochs N`` as well, N, since the run trains no more, and the plans are
capped at N) is chosen, or, when none does, the one with the most epochs (measured on
Fashion-MNIST in ten minutes: BENCHMARKS.md). The choice is printed with its reason and written
with every candidate's timings and planned epochs to ``RUN_DIR/budget.json``.

Only what the user left open is chosen: the width with ``--arch auto``, the sizes with
``--progressive-resize auto`` (the default). A resumed run keeps its choice (``config.yaml``
records the architecture and the sizes, the checkpoint the measured cost of the small sizes).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from imgcls.config import RunConfig, parse_duration
from imgcls.engine.budget import CLOSING_FLOOR, BudgetPlan, Clock
from imgcls.engine.distributed import Dist
from imgcls.engine.plan import DEFAULT_EPOCHS, SMALL_ARCH, SMALL_IMAGE, ModelPlan, Plan
from imgcls.engine.resolution import SizeSchedule, low_size, parse_progressive
from imgcls.io import atomic_write_text
from imgcls.runtime import make_runtime

if TYPE_CHECKING:
    from imgcls.engine.loop import Trainer

#: epochs a setting should get before a more capable one is given up for it: the schedule imgcls
#: trains without a budget
NEED_EPOCHS = DEFAULT_EPOCHS
NARROWER = {SMALL_ARCH: ("smallnet_075", "smallnet_050")}
WARMUP_STEPS = 1  # untimed, per setting
MIN_ROUNDS, MAX_ROUNDS = 3, 5  # timed rounds (one step of each setting a round)
MEASURING_SHARE = 0.02  # of the budget, for the timed rounds (and as much again to time doubtful ones again)
#: how much more a step may cost than another setting's timing and their arithmetic allow
#: (narrow layers use the vector units less well than wide ones)
TOLERANCE = 1.25


@dataclass(frozen=True)
class Timing:
    """When the run started, on which clock, and the seconds its closing work is priced at."""

    started: float
    clock: Clock = time.monotonic
    closing: float = CLOSING_FLOOR


@dataclass
class Setting:
    """One network at one size, timed."""

    arch: str
    size: int
    work: int  # its arithmetic (:func:`arithmetic`)
    step: Callable[[], None]  # one training step on a random batch
    times: list[float] = field(default_factory=list)
    price: float = 0.0  # seconds a step: the median of ``times``, or the bound the others put on it
    note: str = ""  # why the price is not the measurement

    @property
    def measured(self) -> float:
        return statistics.median(self.times)


@dataclass
class Candidate:
    arch: str
    sizes: SizeSchedule
    full_step: float  # seconds of a training step at full size, as priced
    batch: int
    epochs: float = 0.0  # planned in the budget
    measured: float = 0.0  # seconds of a full-size step as timed (``full_step`` unless the check bounded it)
    note: str = ""  # why a timing was not used as measured

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


def training_step(model: nn.Module, cfg: RunConfig, batch: int, size: int) -> Callable[[], None]:
    """One training step of ``model`` (AdamW, the run's precision and memory format) on a random
    batch of ``size``-px images, as a function."""
    t = cfg.train
    runtime = make_runtime(model, device=t.device, precision=t.precision, channels_last=t.channels_last)
    net = runtime.prepare(model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-6)
    x = runtime.inputs(torch.randn(batch, 3, size, size))

    def step() -> None:
        with runtime.autocast():
            loss = net(x).float().logsumexp(1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize(runtime.device)

    return step


def time_settings(settings: list[Setting], spend: float, clock: Clock, *, warm: bool = True) -> None:
    """Warm each setting up (untimed), then time rounds of one step of each in turn: as many
    rounds as fit in ``spend`` seconds, between :data:`MIN_ROUNDS` and :data:`MAX_ROUNDS` (at
    least one where not even those fit)."""
    if warm:
        for s in settings:
            for _ in range(WARMUP_STEPS):
                s.step()
    start, rounds, allowed = clock(), 0, MAX_ROUNDS
    while rounds < allowed:
        for s in settings:
            t0 = clock()
            s.step()
            s.times.append(clock() - t0)
        rounds += 1
        if rounds == 1:
            allowed = max(1, min(MAX_ROUNDS, int(spend / max(clock() - start, 1e-9))))


def bound(s: Setting, settings: list[Setting]) -> tuple[float, Setting | None]:
    """The least a step of ``s`` can cost at most by the others' timings: a heavier setting's
    step (more arithmetic), or a lighter one's times the ratio of their arithmetic; and the
    setting that bounds it."""
    best: tuple[float, Setting | None] = (float("inf"), None)
    for o in settings:
        if o is not s and o.times:
            limit = o.measured * max(1.0, s.work / max(1, o.work))
            if limit < best[0]:
                best = (limit, o)
    return best


def check(settings: list[Setting], spend: float, clock: Clock) -> None:
    """Price every setting: its median, unless that is over what the others allow (:func:`bound`,
    with :data:`TOLERANCE`) even after timing the doubtful ones again: then at that bound, with
    a note saying so."""

    def doubtful() -> list[Setting]:
        return [s for s in settings if s.measured > TOLERANCE * bound(s, settings)[0]]

    again = doubtful()
    if again:  # timed again, beside the setting that bounds each (the same machine for both)
        pairs = {id(x): x for s in again for x in (s, bound(s, settings)[1]) if x is not None}
        time_settings(list(pairs.values()), spend, clock, warm=False)
        again = doubtful()
    for s in settings:
        s.price, s.note = s.measured, ""
        if s in again:
            limit, by = bound(s, settings)
            assert by is not None
            s.price = limit
            s.note = (
                f"{s.arch} at {s.size} px timed at {s.measured:.3g} s a step, more than {by.arch} "
                f"at {by.size} px ({by.measured:.3g} s) and their arithmetic allows; priced at {limit:.3g} s"
            )


def arithmetic(model: nn.Module, size: int) -> int:
    """A step's arithmetic, up to a factor the candidates share: parameters times pixels. For the
    candidates (one network's widths, one network's sizes) it is proportional to the
    multiply-adds within a few percent (smallnet against smallnet_050: 3.99 to 3.96), and costs
    nothing to compute (torch's FLOP counter first imports torch._dynamo: 2 s of a budget)."""
    return sum(p.numel() for p in model.parameters()) * size * size


def measure(
    cfg: RunConfig, mp: ModelPlan, plan: Plan, archs: list[str], choose_sizes: bool, budget: float,
    clock: Clock = time.monotonic,
) -> list[Candidate]:  # fmt: skip
    """Every candidate, in order of capability, with its step priced (not yet its epochs)."""
    from imgcls.models.factory import build_model

    full = plan.preprocess.image_size
    low = low_size(full) if choose_sizes else full
    settings: list[Setting] = []
    for arch in archs:
        model, _ = build_model(arch, num_classes=mp.num_outputs, norm=mp.norm, attn=mp.attn)
        for size in dict.fromkeys((full, low)):
            work = arithmetic(model, size)
            settings.append(Setting(arch, size, work, training_step(model, cfg, plan.batch_size, size)))
    spend = MEASURING_SHARE * budget
    time_settings(settings, spend, clock)
    check(settings, spend, clock)
    out: list[Candidate] = []
    for arch in archs:
        at = {s.size: s for s in settings if s.arch == arch}
        notes = "; ".join(s.note for s in at.values() if s.note)
        options = [plan.sizes]
        if low < full:
            options = [SizeSchedule(full, full), SizeSchedule.timed(low, full, at[low].price, at[full].price)]
        out += [Candidate(arch, sizes, at[full].price, plan.batch_size, measured=at[full].measured, note=notes)
                for sizes in options]  # fmt: skip
    return out


def final_passes(cfg: RunConfig, task: str, val_images: int) -> float:
    """The validation passes the run's closing work makes (:func:`imgcls.engine.finish.final_val_passes`:
    two where test-time flips are to be decided), for a run whose trainer is not built yet:
    ``cfg`` resolved, ``task`` the task's name."""
    from imgcls.engine.finish import final_val_passes

    run = SimpleNamespace(cfg=cfg, task=SimpleNamespace(name=task),
                          data=SimpleNamespace(splits=SimpleNamespace(val=range(val_images))))  # fmt: skip
    return final_val_passes(cast("Trainer", run))


def plan_epochs(
    c: Candidate, budget: float, elapsed: float, train_images: int, val_images: int, *, final: float = 1.0,
    closing: float = CLOSING_FLOOR, max_epochs: int | None = None,
) -> float:  # fmt: skip
    """The epochs the run's own step planning would give ``c`` in the rest of the budget, with
    ``final`` validation passes and ``closing`` seconds after the last epoch, at most
    ``max_epochs`` (``--epochs`` given with the budget caps the run, as :func:`plan_steps` does)."""
    spe = max(1, train_images // c.batch)
    bp = BudgetPlan(budget=budget, steps_per_epoch=spe, val_images=val_images, batch_size=c.batch,
                    final_passes=final, sizes=c.sizes, closing=closing,
                    max_steps=max_epochs * spe if max_epochs else None)  # fmt: skip
    return bp.total_for(elapsed, c.full_step) / spe


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
    cfg: RunConfig, mp: ModelPlan, plan: Plan, run: Path, *, train_images: int, val_images: int, timing: Timing,
    dist: Dist,
) -> tuple[ModelPlan, Plan, str] | None:  # fmt: skip
    """The model plan and plan of the chosen candidate and what to say of it (None when there is
    nothing to choose); the measurements are written to ``RUN_DIR/budget.json``."""
    archs, choose_sizes = open_choices(cfg, mp, plan.preprocess.image_size)
    if not archs:
        return None
    budget = parse_duration(str(cfg.train.time_budget))
    clock = timing.clock
    t0 = clock()
    found = measure(cfg, mp, plan, archs, choose_sizes, budget, clock)
    spent = clock() - t0
    elapsed = clock() - timing.started
    passes = final_passes(plan.config(cfg), mp.task, val_images)
    cap = cfg.train.epochs  # --epochs with the budget: the run trains at most that many, so that many is enough
    need = min(NEED_EPOCHS, cap) if cap else NEED_EPOCHS
    for c in found:
        c.epochs = plan_epochs(c, budget, elapsed, train_images, val_images, final=passes, closing=timing.closing,
                               max_epochs=cap)  # fmt: skip
    index, why = pick(found, need)
    index = int(dist.broadcast(index))  # every process trains what the first one measured
    chosen = found[index]
    notes = list(dict.fromkeys(c.note for c in found if c.note))
    if notes:
        why += f" (timings checked: {'; '.join(notes)})"
    if dist.main:
        record(run, found, index, why, {"measuring_seconds": round(spent, 2), "final_passes": passes,
                                        "closing_seconds": round(timing.closing, 2),
                                        "epochs_wanted": need})  # fmt: skip
    mp = dataclasses.replace(mp, arch=chosen.arch)
    return mp, dataclasses.replace(plan, model=mp, sizes=chosen.sizes), f"time budget: chose {chosen.describe()}: {why}"


def record(run: Path, found: list[Candidate], index: int, why: str, extra: dict[str, Any]) -> None:
    rows: list[dict[str, Any]] = [
        {"arch": c.arch, "start_size": c.sizes.low, "size": c.sizes.full,
         "images_per_second": round(c.images_per_second, 1),
         "measured_images_per_second": round(c.batch / c.measured, 1) if c.measured else None,
         **({"fixed_share": round(c.sizes.fixed, 4)} if c.sizes.enabled else {}),
         "planned_epochs": round(c.epochs, 2), "chosen": i == index, **({"note": c.note} if c.note else {})}
        for i, c in enumerate(found)
    ]  # fmt: skip
    doc = {"candidates": rows, "reason": why, **extra}
    atomic_write_text(run / "budget.json", json.dumps(doc, indent=2) + "\n")


def fit_to_budget(
    cfg: RunConfig, mp: ModelPlan, plan: Plan, model: nn.Module, run: Path, *, train_images: int, val_images: int,
    timing: Timing, dist: Dist,
) -> tuple[nn.Module, ModelPlan, Plan, str]:  # fmt: skip
    """What to train: the planned model, model plan and plan, or the chosen candidate's (a
    narrower net is built afresh, from scratch like the planned one), and what to say of the
    choice ('' when there was nothing to choose)."""
    chosen = choose(cfg, mp, plan, run, train_images=train_images, val_images=val_images, timing=timing, dist=dist)
    if chosen is None:
        return model, mp, plan, ""
    if chosen[0].arch != mp.arch:
        from imgcls.models.factory import build_model

        model, _ = build_model(chosen[0].arch, num_classes=mp.num_outputs, norm=mp.norm, attn=mp.attn,
                               drop_rate=cfg.model.drop_rate)  # fmt: skip
    return model, *chosen
