"""``--time-budget``: plan the whole schedule so the run ends on time.

The budget counts from the start of the command (and, for a resumed run, includes its earlier
sessions). After a few measured training steps the planner fixes the total number of steps so
that training, every validation pass and the final save fit; it re-plans early in every epoch,
half-way through it, at its end and every 50 steps from the measured step time. The
learning-rate schedule is a function of (step, total), so it is planned to reach its end, not
cut off, and the warm-up is the configured share of the planned steps (not of a provisional
guess). Steps at a smaller size (progressive resizing) count as their share of a full-size one.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgcls.config import parse_duration
from imgcls.engine.resolution import SizeSchedule

__all__ = ["BudgetPlan", "parse_duration", "planned_warmup", "provisional_warmup", "replan", "replan_due"]


@dataclass
class BudgetPlan:
    budget: float  # seconds, whole command
    steps_per_epoch: int
    val_images: int
    batch_size: int
    final_passes: float = 0.0  # validation passes after training (calibration, TTA: 2)
    sizes: SizeSchedule | None = None  # progressive resizing: cheaper steps first

    def total_steps(self, elapsed: float, step_seconds: float, steps_done: int, val_image_seconds: float) -> int:
        """The largest total step count whose remaining steps, plus one validation pass at the
        end of every epoch they reach (a partial last epoch included), fit in the budget.
        ``step_seconds`` is a full-size step's time; with progressive resizing the remaining
        steps cost the schedule's mean share of it (a longer plan has more small steps)."""
        reserve = max(3.0, 0.02 * self.budget)  # final save, thresholds, curves
        remaining = self.budget - elapsed - reserve
        spe = max(1, self.steps_per_epoch)
        val_pass = self.val_images * val_image_seconds
        # epochs already validated: the loop re-plans after a step, so an epoch whose last step
        # this is still has its validation pass to come
        validated = max(0, steps_done - 1) // spe

        def cost(extra: int) -> float:
            passes = -(-(steps_done + extra) // spe) - validated + self.final_passes
            share = self.sizes.mean_cost(steps_done, steps_done + extra) if self.sizes is not None else 1.0
            return extra * step_seconds * share + passes * val_pass

        lo, hi = 0, 1
        while cost(hi) <= remaining and hi < 10**9:
            hi *= 2
        while lo < hi:  # largest extra with cost(extra) <= remaining
            mid = (lo + hi + 1) // 2
            if cost(mid) <= remaining:
                lo = mid
            else:
                hi = mid - 1
        return steps_done + lo  # nothing more fits: stop now (one more step each re-plan never ends)

    def total_for(self, elapsed: float, step_seconds: float, steps_done: int) -> int:
        """:meth:`total_steps`, a validation image priced from the training step: a forward pass
        (:data:`FORWARD_SHARE` of a step) over one image of the batch."""
        return self.total_steps(elapsed, step_seconds, steps_done, step_seconds / self.batch_size * FORWARD_SHARE)


#: a forward pass costs about a third of a training step (no backward, no optimiser)
FORWARD_SHARE = 1.0 / 3.0


def replan_due(step_in_epoch: int, steps_per_epoch: int) -> bool:
    """Whether the loop re-plans after this many steps of an epoch: early, half-way, at its
    end (an epoch of one step has only that) and every 50 steps."""
    return step_in_epoch in (5, steps_per_epoch // 2, steps_per_epoch) or step_in_epoch % 50 == 0


#: steps measured before the first plan
MEASURED_FIRST = 4


def provisional_warmup(share: float, steps_per_epoch: int) -> int:
    """The warm-up until the first plan: ``share`` of 20 epochs' steps, and not over before the
    plan is made (an epoch of one step would otherwise end a 5% warm-up after its first step)."""
    steps = int(share * 20 * steps_per_epoch)
    return max(steps, MEASURED_FIRST + 1) if share > 0 else 0


def planned_warmup(share: float, total: int, warmup: int, steps_done: int) -> int:
    """The warm-up length once the plan says ``total`` steps: ``share`` of them. While the
    warm-up is still running it follows the plan (never ending before the current step);
    once it is over it stays as it was, so the rate never falls back into a warm-up."""
    if steps_done >= warmup:
        return warmup
    return max(int(share * total), steps_done)


def replan(
    plan: BudgetPlan,
    *,
    elapsed: float,
    step_seconds: float,
    steps_done: int,
    warmup_share: float,
    warmup: int,
) -> tuple[int, int]:
    """(total steps, warm-up steps) for the rest of a budgeted run."""
    total = plan.total_for(elapsed, step_seconds, steps_done)
    return total, planned_warmup(warmup_share, total, warmup, steps_done)
