"""Progressive resizing: the first steps train on smaller images, the last ones at full size.

A convolutional network's step costs about as much as its input has pixels, so steps at 4/7 of
the side (16 px for 28-px images, 128 px for 224) cost about a third. The schedule, a function of
(step, total steps) like the learning rate's (so a resumed run and a re-planned time budget
follow the same curve), holds the low size for the first quarter of the steps, grows linearly to
the full size by three quarters, and trains the last quarter — the low learning rates of the
cosine, where the final accuracy is made — at the size the model is evaluated and used at.
Sizes move in steps of 4 px (32 px above 64), so a few shapes, each compiled once by oneDNN or
cuDNN, are used. After fast.ai's progressive resizing (Howard, DAWNBench 2018) and FFCV's
ImageNet recipe, whose schedule also ends at the evaluation size. The augmentation's resampling
(:class:`imgcls.data.transforms.BatchAugment`) draws each batch at the size the schedule gives,
so no extra resize is spent; validation and prediction always use the full size.

The schedule's cost (for a time budget: :mod:`imgcls.engine.budget`) is a step's time as a share
of a full-size step, ``fixed + (1 - fixed) * (size / full)**2``, with ``fixed`` the share that
does not scale with the pixels (optimiser, Python), measured by :mod:`imgcls.engine.candidates`.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the low size as a share of the full one (16 of 28 px, 128 of 224 px: fast.ai's 128 -> 224)
LOW_SHARE = 4 / 7
HOLD_LOW, REACH_FULL = 0.25, 0.75  # shares of the steps: the low size until, the full size from


def low_size(full: int) -> int:
    """The size progressive resizing starts from: 4/7 of ``full`` on the schedule's grid, at
    least 8 px."""
    q = quantum(full)
    return max(8, min(full, q * round(LOW_SHARE * full / q)))


def quantum(full: int) -> int:
    return 4 if full <= 64 else 32


@dataclass(frozen=True)
class SizeSchedule:
    """The training input size of each step; ``low == full`` is no progressive resizing."""

    low: int
    full: int
    fixed: float = 0.0  # the share of a full-size step's time that does not scale with the pixels

    @property
    def enabled(self) -> bool:
        return self.low < self.full

    def size(self, step: int, total: int) -> int:
        if not self.enabled:
            return self.full
        f = step / max(1, total)
        if f >= REACH_FULL:
            return self.full
        grow = max(0.0, (f - HOLD_LOW) / (REACH_FULL - HOLD_LOW))
        q = quantum(self.full)
        return min(self.full, max(self.low, q * round((self.low + grow * (self.full - self.low)) / q)))

    @classmethod
    def timed(cls, low: int, full: int, low_seconds: float, full_seconds: float) -> SizeSchedule:
        """The schedule from ``low`` whose :meth:`cost` at ``low`` is the measured ratio of a step
        there to one at full size (its fixed share kept between 0 and 0.9)."""
        share = (low / full) ** 2
        return cls(low, full, min(0.9, max(0.0, (low_seconds / full_seconds - share) / (1 - share))))

    def cost(self, size: int) -> float:
        """A step's time at ``size`` as a share of one at full size."""
        return self.fixed + (1 - self.fixed) * (size / self.full) ** 2

    def mean_cost(self, start: int, total: int) -> float:
        """The mean cost of steps ``start`` .. ``total - 1`` (sampled: the schedule is piecewise
        constant, and its pieces are far longer than 1/256 of the steps)."""
        if not self.enabled or start >= total:
            return 1.0
        n = min(256, total - start)
        picks = [start + (total - start) * (i + 0.5) / n for i in range(n)]
        return sum(self.cost(self.size(int(s), total)) for s in picks) / n

    def describe(self) -> str:
        return f"progressive resizing {self.low}->{self.full} px" if self.enabled else f"{self.full} px"


def parse_progressive(value: str | int | None, full: int) -> SizeSchedule | None:
    """``--progressive-resize``: 'on' (from 4/7 of the size), 'off', a starting size in pixels,
    or 'auto' (None here: a time budget decides, see :mod:`imgcls.engine.candidates`)."""
    text = str(value if value is not None else "auto").strip().lower()
    if text == "auto":
        return None
    if text in ("off", "none", "false", "0"):
        return SizeSchedule(full, full)
    if text in ("on", "true"):
        return SizeSchedule(low_size(full), full)
    return SizeSchedule(min(int(text), full), full)
