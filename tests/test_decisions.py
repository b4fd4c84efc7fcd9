"""Decision rules beyond the arg-max: unknown, per-class thresholds, roll-up, blanks (imgcls.decisions)."""

from __future__ import annotations

import numpy as np
import pytest

from imgcls.decisions import DecisionRule, blank_tradeoff
from imgcls.errors import UserError


def test_decisions_rollup_blank_threshold_and_class_thresholds() -> None:
    names = [
        "blank",
        "mammalia;carnivora;canidae;vulpes",
        "mammalia;carnivora;canidae;canis",
        "mammalia;rodentia",
    ]
    p = np.array([0.05, 0.4, 0.35, 0.2])
    assert DecisionRule(names, threshold=0.5).decide(p) == ("unknown", 0.4)
    label, score = DecisionRule(names, threshold=0.5, rollup=True).decide(p)
    assert label == "mammalia;carnivora;canidae" and score == pytest.approx(0.75)
    q = np.array([0.55, 0.3, 0.1, 0.05])
    assert DecisionRule(names).decide(q)[0] == "blank"
    assert DecisionRule(names, blank_threshold=0.8).decide(q)[0] == names[1]  # keep the animal
    assert DecisionRule(names, class_thresholds={1: 0.9}).decide(np.array([0.0, 0.6, 0.3, 0.1]))[0] == "unknown"
    with pytest.raises(UserError, match="no blank class"):
        DecisionRule(["cat", "dog"], blank_threshold=0.9)
    curve = blank_tradeoff(
        np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]]),
        np.array([0, 0, 1, 1]),
        blank=0,
        steps=11,
    )
    at = {round(c["threshold"], 1): c for c in curve}
    assert at[0.8]["blanks_removed"] == 0.5 and at[0.8]["animal_recall"] == 1.0
    assert at[0.5]["blanks_removed"] == 1.0 and at[0.5]["animal_recall"] == 0.5
