"""``--time-budget``: plan the whole schedule so the run ends on time.

The budget counts from the start of the command (and, for a resumed run, includes its earlier
sessions). After a few measured training steps the planner fixes the total number of steps so
that training, every validation pass and the final save fit; it re-plans early in every epoch,
half-way through it and every 50 steps from the measured step time. The learning-rate schedule
is a function of (step, total), so it is planned to reach its end, not cut off, and the warm-up
is the configured share of the planned steps (not of a provisional guess).
"""

from __future__ import annotations

from dataclasses import dataclass

from imgcls.config import parse_duration

__all__ = ["BudgetPlan", "parse_duration", "planned_warmup", "replan", "replan_due"]


@dataclass
class BudgetPlan:
    budget: float  # seconds, whole command
    steps_per_epoch: int
    val_images: int
    batch_size: int
    final_passes: float = 0.0  # validation passes after training (calibration, TTA: 2)

    def total_steps(self, elapsed: float, step_seconds: float, steps_done: int, val_image_seconds: float) -> int:
        """The largest total step count whose remaining steps, plus one validation pass at the
        end of every epoch they reach (a partial last epoch included), fit in the budget."""
        reserve = max(3.0, 0.02 * self.budget)  # final save, thresholds, curves
        remaining = self.budget - elapsed - reserve
        spe = max(1, self.steps_per_epoch)
        val_pass = self.val_images * val_image_seconds
        validated = steps_done // spe  # epochs already ended (and validated)

        def cost(extra: int) -> float:
            passes = -(-(steps_done + extra) // spe) - validated + self.final_passes
            return extra * step_seconds + passes * val_pass

        lo, hi = 0, 1
        while cost(hi) <= remaining and hi < 10**9:
            hi *= 2
        while lo < hi:  # largest extra with cost(extra) <= remaining
            mid = (lo + hi + 1) // 2
            if cost(mid) <= remaining:
                lo = mid
            else:
                hi = mid - 1
        return steps_done + max(1, lo)


#: a forward pass costs about a third of a training step (no backward, no optimiser)
FORWARD_SHARE = 1.0 / 3.0


def replan_due(step_in_epoch: int, steps_per_epoch: int) -> bool:
    """Whether the loop re-plans after this many steps of an epoch."""
    return step_in_epoch in (5, steps_per_epoch // 2) or step_in_epoch % 50 == 0


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
    batch_size: int,
    warmup_share: float,
    warmup: int,
) -> tuple[int, int]:
    """(total steps, warm-up steps) for the rest of a budgeted run."""
    val_image_s = step_seconds / batch_size * FORWARD_SHARE
    total = plan.total_steps(elapsed, step_seconds, steps_done, val_image_s)
    return total, planned_warmup(warmup_share, total, warmup, steps_done)
