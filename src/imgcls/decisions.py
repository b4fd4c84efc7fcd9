"""Decision rules: from one image's class probabilities to the label written out.

- ``threshold``: below it the best class is not accepted and the label is ``unknown``
  (abstain rather than guess); ``class_thresholds`` set it per class.
- ``rollup``: when label names carry a taxonomy (``mammalia;carnivora;canidae;vulpes``), an
  uncertain species is rolled up to the deepest ancestor whose summed probability passes the
  threshold (``mammalia;carnivora;canidae``), as SpeciesNet does, instead of ``unknown``.
- ``blank_threshold``: a blank / empty class is only chosen when its probability reaches this
  value, otherwise the best non-blank class is: raise it to keep more animals (higher animal
  recall, fewer blanks removed). ``imgcls evaluate`` shows the trade-off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from imgcls.errors import UserError

BLANK_NAMES = ("blank", "empty", "none", "nothing", "background")
TAXONOMY_SEP = ";"


def blank_index(names: list[str]) -> int | None:
    """Index of the class that means 'no animal', by name, or None."""
    for i, n in enumerate(names):
        if n.strip().lower() in BLANK_NAMES:
            return i
    return None


def parse_class_thresholds(text: str | None, names: list[str]) -> dict[int, float]:
    """'fox=0.8,deer=0.6' -> {index: threshold}."""
    out: dict[int, float] = {}
    if not text:
        return out
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.rpartition("=")
        if not sep or name.strip() not in names:
            raise UserError(f"--class-thresholds: {part.strip()!r} is not CLASS=VALUE with a known class")
        try:
            t = float(value)
        except ValueError:
            raise UserError(f"--class-thresholds: {value!r} is not a number") from None
        if not 0 <= t <= 1:
            raise UserError(f"--class-thresholds: {t} is not between 0 and 1")
        out[names.index(name.strip())] = t
    return out


@dataclass
class DecisionRule:
    names: list[str]
    threshold: float | None = None
    class_thresholds: dict[int, float] = field(default_factory=dict)
    rollup: bool = False
    blank_threshold: float | None = None

    def __post_init__(self) -> None:
        self.blank = blank_index(self.names)
        if self.blank_threshold is not None and self.blank is None:
            raise UserError(f"--blank-threshold: the model has no blank class (one of: {', '.join(BLANK_NAMES)})")

    def _cut(self, k: int) -> float | None:
        return self.class_thresholds.get(k, self.threshold)

    def decide(self, p: np.ndarray) -> tuple[str, float]:
        """(label, its probability) for one probability vector (multi-class)."""
        order = np.argsort(-p, kind="stable")
        best = int(order[0])
        unsure_blank = self.blank_threshold is not None and best == self.blank and p[best] < self.blank_threshold
        if unsure_blank and len(order) > 1:
            best = int(order[1])  # not sure enough it is empty: keep the animal
        cut = self._cut(best)
        if cut is None or p[best] >= cut:
            return self.names[best], float(p[best])
        if self.rollup:
            rolled = self._rollup(p, best, cut)
            if rolled is not None:
                return rolled
        return "unknown", float(p[best])

    def _rollup(self, p: np.ndarray, best: int, cut: float) -> tuple[str, float] | None:
        parts = self.names[best].split(TAXONOMY_SEP)
        for depth in range(len(parts) - 1, 0, -1):
            prefix = TAXONOMY_SEP.join(parts[:depth])
            members = [i for i, n in enumerate(self.names) if n == prefix or n.startswith(prefix + TAXONOMY_SEP)]
            total = float(p[members].sum())
            if total >= cut:
                return prefix, total
        return None


def blank_tradeoff(probs: np.ndarray, targets: np.ndarray, blank: int, steps: int = 21) -> list[dict[str, float]]:
    """For blank thresholds from 0 to 1: the share of animal images kept (animal recall) and
    the share of blank images removed, when an image is called blank iff p(blank) >= t."""
    return tradeoff(probs[:, blank], targets == blank, np.linspace(0, 1, steps), blank_at_or_above=True)


def tradeoff(
    score: np.ndarray, is_blank: np.ndarray, thresholds: np.ndarray, *, blank_at_or_above: bool
) -> list[dict[str, float]]:
    """Per threshold t: animal recall (the share of animal images not called blank) and blanks
    removed (the share of blank images called blank), where an image is called blank when its
    ``score`` is at or above t (``blank_at_or_above``) or below it (a detector's confidence); with
    the numbers of animal and blank images the shares are of."""
    animals, blanks = (~is_blank).sum(), is_blank.sum()
    out = []
    for t in thresholds:
        called_blank = score >= t if blank_at_or_above else score < t
        out.append(
            {
                "threshold": float(t),
                "animal_recall": float((~called_blank & ~is_blank).sum() / animals) if animals else float("nan"),
                "blanks_removed": float((called_blank & is_blank).sum() / blanks) if blanks else float("nan"),
                "animals": int(animals),  # the images behind the shares: 7 blanks make steps of 1/7
                "blanks": int(blanks),
            }
        )
    return out
