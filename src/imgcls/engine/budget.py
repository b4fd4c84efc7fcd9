"""``--time-budget``: plan the whole schedule so the run ends on time, and keep it on time.

The budget counts from the start of the command (a resumed run adds its earlier sessions). It is
spent on the training steps (a step at a progressive-resizing size costs its share of a
full-size one), a validation pass and the saves at each epoch end, and after the last epoch on
the run's closing work: its final validation passes (two with test-time flips to decide: the
images and their mirrors), the model saved again, the curves and the ONNX export.

:class:`BudgetPlan` is the arithmetic: the largest step count whose cost fits what is left.
:class:`Pacer` keeps the prices it plans with current, from what the run measures on its clock
(the trainer's; tests give it a simulated one):

- a step: the median of the recent steps (the last :data:`WINDOW_SHARE` of the budget, at
  least :data:`WINDOW_MIN` steps), so a machine that slows down (another process started) is
  seen within a few steps and one stalled step does not shrink the plan alone; or their mean
  over :data:`LONG_SHARE` of the budget where that is more (stalls that recur are paid for),
  that window's longest step left out (it neither fills the window nor counts beyond the
  window's second longest): a stall that happens once costs the plan its own time (already
  spent) and nothing more, one that recurs within the window is paid for;
- a validation pass: as last measured (before training, on a batch of it), scaled by how much
  the steps slowed down or sped up since;
- the saves at an epoch end: their measured mean;
- the closing work: what importing its libraries took (:func:`prepay_closing`, done before the
  plan so that cost is spent, not guessed), at least :data:`CLOSING_FLOOR`.

It plans after the first steps of a session (or at the first epoch end), then re-plans every
:data:`REPLAN_SHARE` of the budget and at each epoch end. Each re-plan re-fits the learning-rate
schedule to the new length (:meth:`imgcls.engine.optim.Schedule.refit`): the rate where it
re-plans stays, and the rest of the cosine is spread over the steps left, so the last step is at
the cosine's end however often the plan changed. A change of the epoch count is said with its
reason (:meth:`Pacer.adopt`).
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import importlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from imgcls.config import parse_duration
from imgcls.engine.optim import Schedule
from imgcls.engine.resolution import SizeSchedule

__all__ = [
    "BudgetPlan",
    "Clock",
    "Pacer",
    "Prices",
    "parse_duration",
    "planned_warmup",
    "prepay_closing",
    "provisional_warmup",
]

Clock = Callable[[], float]  # seconds, monotonic (time.monotonic unless a test simulates one)

#: steps of a session measured before its first plan
MEASURED_FIRST = 4
#: a forward pass costs about a third of a training step (no backward, no optimiser)
FORWARD_SHARE = 1.0 / 3.0
SAFETY_SHARE = 0.01  # of the budget, left unplanned: the noise of what is priced
REPLAN_SHARE = 0.01  # of the budget, between re-plans
WINDOW_SHARE, WINDOW_MIN = 0.04, 3  # the step price: the median of the steps of this share of the budget
LONG_SHARE = 0.1  # ... or, when larger, their mean over this share (the longest step as the second longest)
SAY_SHARE = 0.05  # a change of the planned epochs by this share of them (one at least) is said
BAND_SHARE = 0.02  # of the steps a plan has left: a re-plan within it keeps the plan
MIN_TAIL, TAIL_SHARE = 5, 0.02  # the fewest steps a re-plan leaves the curve (at most this share of the budget)
#: seconds the closing work (curves, ONNX export) costs at least, whatever its imports took: its
#: first export traces the model and starts ONNX Runtime (0.7-1.5 s for the small-image nets on 2 cores)
CLOSING_FLOOR = 1.0


@dataclass(frozen=True)
class Prices:
    """What the plan's parts cost, in seconds."""

    step: float  # a training step at full size
    boundary: float  # at each epoch end: a validation pass and the saves
    final: float  # after the last epoch: the final passes, the model saved, the closing work


@dataclass
class BudgetPlan:
    budget: float  # seconds, whole command
    steps_per_epoch: int
    val_images: int
    batch_size: int
    final_passes: float = 0.0  # validation passes after training (calibration; TTA to decide: 2)
    sizes: SizeSchedule | None = None  # progressive resizing: cheaper steps first
    closing: float = CLOSING_FLOOR  # seconds of closing work after the final passes
    max_steps: int | None = None  # --epochs given with the budget: at most that many epochs

    def prices(self, step: float, val_pass: float | None = None, saves: float = 0.0) -> Prices:
        """The prices from a full-size step's time; a validation pass priced from it (a forward
        pass per image) until one is measured."""
        if val_pass is None:
            val_pass = self.val_images * step / self.batch_size * FORWARD_SHARE
        return Prices(step, val_pass + saves, self.final_passes * val_pass + saves + self.closing)

    def total_steps(self, elapsed: float, steps_done: int, validated: int, prices: Prices) -> int:
        """The largest total step count whose remaining steps, a boundary (validation and saves)
        at the end of every epoch they reach (a partial last epoch included) that is not yet
        validated (``validated`` epochs are), and the final work fit in what is left of the
        budget. With progressive resizing the remaining steps cost the schedule's mean share of
        a full-size one (a longer plan has more small steps)."""
        remaining = self.budget * (1 - SAFETY_SHARE) - elapsed
        spe = max(1, self.steps_per_epoch)
        cap = 10**9 if self.max_steps is None else max(0, self.max_steps - steps_done)

        def cost(extra: int) -> float:
            boundaries = max(0, -(-(steps_done + extra) // spe) - validated)
            share = self.sizes.mean_cost(steps_done, steps_done + extra) if self.sizes is not None else 1.0
            return extra * prices.step * share + boundaries * prices.boundary + prices.final

        lo, hi = 0, 1
        while hi < cap and cost(hi) <= remaining:
            hi *= 2
        hi = min(hi, cap)
        while lo < hi:  # the largest extra with cost(extra) <= remaining
            mid = (lo + hi + 1) // 2
            if cost(mid) <= remaining:
                lo = mid
            else:
                hi = mid - 1
        return steps_done + lo  # nothing more fits: stop now

    def total_for(self, elapsed: float, step_seconds: float) -> int:
        """:meth:`total_steps` of a run that has not started, priced from its step alone (what
        :mod:`imgcls.engine.candidates` plans each setting with)."""
        return self.total_steps(elapsed, 0, 0, self.prices(step_seconds))


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


def prepay_closing(*, export: bool, clock: Clock = time.monotonic) -> float:
    """Import the libraries of the run's closing work (matplotlib for the curves; onnx and ONNX
    Runtime for the export) now, before the plan, and return the seconds it took: the plan then
    spends that time instead of guessing it, and it prices the rest of the closing work at as
    much (measured on 2 cores: imports 1.9-2.3 s, the curves and first export after them
    1.8-2.8 s), at least :data:`CLOSING_FLOOR`."""
    start = clock()
    names = ["matplotlib.figure", "matplotlib.backends.backend_agg"]
    if export:
        names += ["onnx", "onnxruntime", "torch.onnx"]
    for name in names:
        with contextlib.suppress(ImportError):  # the closing work says so itself (no onnx: no export)
            importlib.import_module(name)
    return max(CLOSING_FLOOR, clock() - start)


@dataclass
class Pacer:
    """A budgeted run's prices, measured as it goes, and its re-plans (see the module's text)."""

    plan: BudgetPlan
    warmup_share: float
    steps: list[float] = field(default_factory=list)  # this session's steps, in full-size seconds
    sums: list[float] = field(default_factory=lambda: [0.0])  # their running sums
    val_pass: float | None = None  # the last validation pass, seconds
    val_at: int = 0  # the steps there were when it was measured
    val_step: float = 0.0  # the median of the steps just after (0: not yet known)
    saves: list[float] = field(default_factory=list)  # each epoch end's seconds besides validation
    next_at: int = -1  # re-plan once this many steps are done (-1: the session's first plan is due)
    epochs: int = 0  # the epoch count last said (0: none yet)
    said: Prices | None = None  # the prices it was said with
    changes: list[str] = field(default_factory=list)  # each change of the epoch count, as said

    def record_step(self, seconds: float) -> None:
        self.steps.append(seconds)

    def priced_validation(self, seconds: float) -> None:
        """A validation pass took (or, timed on a batch of it, will take) ``seconds`` now."""
        self.val_pass, self.val_at, self.val_step = seconds, len(self.steps), 0.0

    def record_epoch_end(self, val_seconds: float, seconds: float) -> None:
        """An epoch end took ``seconds``, ``val_seconds`` of them validating."""
        if val_seconds > 0:
            self.priced_validation(val_seconds)
        self.saves.append(max(0.0, seconds - val_seconds))

    def step_price(self) -> float:
        """The larger of the recent steps' median (those of the last :data:`WINDOW_SHARE` of the
        budget, at least :data:`WINDOW_MIN`: a machine that slows down is seen within a few
        steps, one stalled step is not) and their mean over :data:`LONG_SHARE` of the budget
        (stalls that recur are paid for), where that window's longest step neither fills it (the
        window spans that share of the budget besides it) nor counts for more than its second
        longest. A single stall is an outlier, not a price: its time is spent (the plan counts it
        as elapsed), and counted in full it priced every later step at a share of itself; one as
        long as the window left the window only :data:`WINDOW_MIN` steps, each priced at a third
        of it (a stall of about 3 s among steps of 0.034 s cut a 30-s run from 13 epochs to 3).
        A second stall within the window counts, the two at the shorter one's length. The
        session's first step, with its start-up, counts only while it is the only one."""
        if len(self.sums) != len(self.steps) + 1:  # running sums, so a price costs no pass over the run
            for s in self.steps[len(self.sums) - 1 :]:
                self.sums.append(self.sums[-1] + s)
        if not self.steps:
            return 0.0
        first = 1 if len(self.steps) > 1 else 0
        short = self.since(WINDOW_SHARE * self.plan.budget, first)
        long = self.since(LONG_SHARE * self.plan.budget, first)
        if len(self.steps) - long > 1:  # the longest step neither fills the window nor counts beyond the next
            long = self.since(LONG_SHARE * self.plan.budget + max(self.steps[long:]), first)
            top, second = heapq.nlargest(2, self.steps[long:])
            total = self.sums[-1] - self.sums[long] - (top - second)
        else:
            total = self.sums[-1] - self.sums[long]
        return max(statistics.median(self.steps[short:]), total / max(1, len(self.steps) - long))

    def since(self, seconds: float, first: int) -> int:
        """The index of the first of the last steps that took ``seconds`` together (at least
        :data:`WINDOW_MIN` of them, none before ``first``)."""
        n = len(self.steps)
        i = bisect.bisect_right(self.sums, self.sums[-1] - seconds) - 1
        return max(first, min(i, n - WINDOW_MIN))

    def prices(self) -> Prices:
        """The prices now. A measured validation pass is scaled by how much the steps slowed down
        or sped up since the steps just after it (the steps' price lags behind a change: scaled
        by it, a pass measured on a machine just slowed down would be counted slower twice)."""
        step = self.step_price()
        after = self.steps[self.val_at : self.val_at + WINDOW_MIN]
        if self.val_pass is not None and not self.val_step and len(after) == WINDOW_MIN:
            self.val_step = statistics.median(after)
        val = None if self.val_pass is None else self.val_pass * (step / self.val_step if self.val_step else 1.0)
        return self.plan.prices(step, val, sum(self.saves) / len(self.saves) if self.saves else 0.0)

    def due(self, steps_done: int, *, epoch_end: bool = False) -> bool:
        """Whether to re-plan now: the session's first plan once :data:`MEASURED_FIRST` steps are
        measured (or at the first epoch end), then every :data:`REPLAN_SHARE` of the budget and
        at every epoch end. The same on every process of a torchrun (step counts, not times)."""
        if not self.steps:
            return False
        if self.next_at < 0:
            return epoch_end or len(self.steps) >= MEASURED_FIRST
        return epoch_end or steps_done >= self.next_at

    def propose(self, elapsed: float, steps_done: int, validated: int, current: int) -> tuple[int, int]:
        """(the total step count to train, the step count to re-plan at next), ``current`` being
        the plan in force. Once a plan is in force it moves only by more than :data:`BAND_SHARE`
        of the steps it has left (a noisy price does not re-fit the schedule back and forth), and
        it does not cut the schedule's remaining curve into fewer than :data:`MIN_TAIL` steps (at
        most :data:`TAIL_SHARE` of the budget's worth): a machine that slows down just before the
        end overruns a little instead of ending at a high learning rate."""
        prices = self.prices()
        total = self.plan.total_steps(elapsed, steps_done, validated, prices)
        if self.next_at >= 0:
            if abs(total - current) <= BAND_SHARE * (current - steps_done):
                total = current
            tail = max(1, min(MIN_TAIL, int(TAIL_SHARE * self.plan.budget / max(prices.step, 1e-9))))
            if total < current and total - steps_done < tail:
                total = min(current, steps_done + tail)
        return total, steps_done + max(1, int(REPLAN_SHARE * self.plan.budget / max(prices.step, 1e-9)))

    def adopt(self, total: int, next_at: int, steps_done: int, schedule: Schedule) -> str | None:
        """Train ``total`` steps: the schedule re-fitted to them (a running warm-up follows the
        plan instead); the line that says the run's first plan, else None (changes are said at
        the epoch ends: :meth:`announce`)."""
        self.next_at = next_at
        warming = schedule.kind != "onecycle" and schedule.anchor is None and steps_done < schedule.warmup
        if warming:
            schedule.total = total
            schedule.warmup = planned_warmup(self.warmup_share, total, schedule.warmup, steps_done)
        else:
            schedule.refit(steps_done, total)
        return self.announce(total) if self.epochs == 0 else None

    def announce(self, total: int) -> str | None:
        """The line to say when the epoch count moved from the one last said (at an epoch end,
        so a plan that wavers within an epoch says nothing): by one epoch, or by
        :data:`SAY_SHARE` of many (an epoch of a few steps would otherwise be said at each one)."""
        epochs = -(-total // max(1, self.plan.steps_per_epoch))
        if abs(epochs - self.epochs) < max(1, SAY_SHARE * self.epochs):
            return None
        now, before, said = self.prices(), self.epochs, self.said
        self.epochs, self.said = epochs, now
        if before == 0:
            plural = "s" if epochs != 1 else ""
            return (f"time budget: {epochs} epoch{plural} planned ({total} steps; a step takes {now.step:.3g} s, "
                    f"an epoch end {now.boundary:.3g} s, the run's end {now.final:.3g} s)")  # fmt: skip
        line = f"plan: {before} -> {epochs} epochs: {why(said, now)}"
        self.changes.append(line)
        return line

    def resumed(self, total: int) -> None:
        """A resumed session: the plan it continues is the checkpoint's (said again if it changes)."""
        self.epochs = -(-total // max(1, self.plan.steps_per_epoch))


def why(before: Prices | None, now: Prices) -> str:
    """What moved the plan: the steps' price (the machine slowed down or sped up), else the
    epoch ends' (validation, saves)."""
    if before is None:
        return f"steps take {now.step:.3g} s in this session"
    step = now.step / max(before.step, 1e-12)
    if step > 1.1 or step < 1 / 1.1:
        trend = "slowed down" if step > 1 else "sped up"
        return f"steps now take {now.step:.3g} s, were {before.step:.3g} s (the machine {trend})"
    if before.boundary > 0 and abs(math.log(max(now.boundary, 1e-12) / before.boundary)) > math.log(1.1):
        return f"an epoch end (validation, saves) takes {now.boundary:.3g} s, was priced {before.boundary:.3g} s"
    return f"steps take {now.step:.3g} s, an epoch end {now.boundary:.3g} s"
