"""Tasks: losses, decisions, threshold tuning and temperature fitting (imgcls.tasks)."""

from __future__ import annotations

import numpy as np
import pytest

from imgcls.tasks import Task, fit_temperature, tune_binary_threshold, tune_thresholds


def test_multilabel_thresholds_maximise_each_labels_f1() -> None:
    probs = np.array([[0.3, 0.1], [0.8, 0.2], [0.9, 0.55], [0.1, 0.05], [0.6, 0.6]])
    targets = np.array([[1, 0], [1, 0], [1, 0], [0, 0], [0, 0]])
    # label 0, F1 by threshold: 0.1 -> 6/8, 0.3 -> 6/7, 0.5 and 0.6 -> 4/6, 0.8 -> 4/5, 0.9 -> 2/4
    # label 1 has no positive: 0.5
    assert tune_thresholds(probs, targets) == [0.3, 0.5]
    targets[4, 1] = 1  # label 1's only positive scores 0.6, above every negative
    assert tune_thresholds(probs, targets) == [0.3, 0.6]


def test_binary_threshold_for_f1_and_balanced_accuracy() -> None:
    p = np.array([0.1, 0.2, 0.35, 0.4, 0.45, 0.9])
    y = np.array([0, 0, 1, 0, 1, 1], bool)
    assert tune_binary_threshold(p, y, "f1") == pytest.approx(0.35)  # F1 6/7 from 0.35
    # balanced accuracy 5/6 both from 0.35 (recall 1, specificity 2/3) and from 0.45 (2/3 and 1):
    # ties go to the threshold nearest 0.5
    assert tune_binary_threshold(p, y, "balanced") == pytest.approx(0.45)
    assert tune_binary_threshold(p, np.ones(6, bool), "f1") == 0.5  # one class only


def test_temperature_lowers_the_nll_and_keeps_the_argmax() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    logits = rng.normal(size=(400, 4))
    logits[np.arange(400), y] += 1.0
    logits *= 4  # over-confident: the fitted temperature is above 1
    t = fit_temperature("multiclass", logits, y)
    assert 2 < t < 8

    def nll(z: np.ndarray) -> float:
        z = z - z.max(1, keepdims=True)
        return float((np.log(np.exp(z).sum(1)) - z[np.arange(400), y]).mean())

    assert nll(logits / t) < nll(logits) - 0.1
    assert (np.argmax(logits / t, 1) == np.argmax(logits, 1)).all()


def test_decisions_of_each_task() -> None:
    probs = np.array([[0.2, 0.8], [0.7, 0.3]])
    assert Task("multiclass", ["a", "b"]).predict(probs).tolist() == [1, 0]
    binary = Task("binary", ["cat", "dog"], positive=1, thresholds=[0.9])
    assert binary.predict(probs).tolist() == [0, 0]  # p(dog) 0.8 < 0.9
    multi = Task("multilabel", ["x", "y"], thresholds=[0.5, 0.25])
    assert multi.predict(probs).tolist() == [[0, 1], [1, 1]]
