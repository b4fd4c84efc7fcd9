"""``--time-budget`` arithmetic (imgcls.engine.budget), simulated with a clock of its own."""

from __future__ import annotations

import numpy as np
import pytest

from imgcls.engine.budget import (
    MEASURED_FIRST,
    BudgetPlan,
    parse_duration,
    planned_warmup,
    provisional_warmup,
    replan,
    replan_due,
)
from imgcls.engine.optim import lr_factor


def simulate(budget: float, *, spe: int, step_s: float, batch: int, val_images: int, start: float) -> dict:
    """The loop's schedule under a budget: train_one_epoch's steps and re-plans, a validation
    pass at each epoch end (20% slower than the planner assumes), the final passes."""
    plan = BudgetPlan(budget=budget, steps_per_epoch=spe, val_images=val_images, batch_size=batch, final_passes=2.0)
    total = 10_000 * spe  # fit.plan_steps: provisional until measured
    warmup = provisional_warmup(0.05, spe)
    clock, times, lrs = start, [], []
    val_pass = val_images * step_s / batch / 3 * 1.2
    epoch = 0
    while epoch * spe < total:
        for step in range(spe):
            g = epoch * spe + step
            if g >= total:
                break
            lrs.append(lr_factor(g, total, warmup, "cosine"))
            clock += step_s
            times.append(step_s)
            if len(times) >= MEASURED_FIRST and replan_due(step + 1, spe):
                total, warmup = replan(plan, elapsed=clock, step_seconds=float(np.median(times[-50:])),
                                       steps_done=g + 1, warmup_share=0.05, warmup=warmup)  # fmt: skip
        clock += val_pass
        epoch += 1
    clock += 2 * val_pass / 1.2
    return {"end": clock, "lrs": lrs, "total": total, "warmup": warmup}


@pytest.mark.parametrize("budget", [30, 60, 180, 600])
# Fashion-MNIST at 256; a small set; a tiny one, an epoch of one step (it once never re-planned)
@pytest.mark.parametrize(("spe", "step_s"), [(187, 0.25), (30, 0.05), (1, 0.05)])
def test_a_budgeted_run_warms_up_for_its_share_and_ends_its_cosine(budget: int, spe: int, step_s: float) -> None:
    run = simulate(budget, spe=spe, step_s=step_s, batch=256, val_images=5000, start=6.0)
    lrs = run["lrs"]
    assert len(lrs) == run["total"]  # every planned step ran
    assert run["end"] <= budget  # training, validation and the final passes fit
    # ... and use it, up to the reserve and the last step's and validation pass's granularity
    grain = step_s + 5000 * step_s / 256 / 3 * 1.2
    assert run["end"] > min(0.9 * budget, budget - max(3.0, 0.02 * budget) - 2 * grain)
    assert abs(run["warmup"] - 0.05 * run["total"]) <= max(2, 0.01 * run["total"])  # the configured share
    assert max(lrs) > 0.95  # the warm-up ended and the peak rate was reached
    assert lrs[-1] < 0.01  # the last step's rate is the end of the cosine


def test_warmup_follows_the_plan_only_while_it_runs() -> None:
    assert planned_warmup(0.05, 1000, warmup=187, steps_done=5) == 50  # shorter plan, still warming up
    assert planned_warmup(0.05, 1000, warmup=40, steps_done=45) == 40  # over: never back into warm-up
    assert planned_warmup(0.05, 100, warmup=187, steps_done=30) == 30  # shrunk below the current step


def test_total_steps_fit_the_remaining_time() -> None:
    plan = BudgetPlan(budget=100.0, steps_per_epoch=10, val_images=100, batch_size=10, final_passes=1.0)
    # 0.5 s a step, validation 0.01 s an image (1 s a pass); 10 s spent, 3 s reserved: 87 s left
    total = plan.total_steps(elapsed=10.0, step_seconds=0.5, steps_done=0, val_image_seconds=0.01)
    epochs = -(-total // 10)
    assert total * 0.5 + (epochs + 1) * 1.0 <= 87.0 < (total + 1) * 0.5 + (-(-(total + 1) // 10) + 1) * 1.0
    # the budget is spent: no step more (the epoch that just ended still has its validation)
    assert plan.total_steps(elapsed=95.0, step_seconds=0.5, steps_done=40, val_image_seconds=0.01) == 40
    assert plan.total_steps(elapsed=94.0, step_seconds=0.5, steps_done=40, val_image_seconds=0.01) == 40
    assert plan.total_steps(elapsed=93.5, step_seconds=0.5, steps_done=40, val_image_seconds=0.01) == 41


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90s", "10m", "1h30m", "2h", "600", "1.5m")] == [90, 600, 5400, 7200, 600, 90]
    for bad in ("10 minutes", "m", "-5m", "0s"):
        with pytest.raises(Exception, match=r"duration|positive"):
            parse_duration(bad)
