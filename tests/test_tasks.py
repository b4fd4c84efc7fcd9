"""Tasks: losses, decisions, threshold tuning and temperature fitting (imgcls.tasks)."""

from __future__ import annotations

import numpy as np
import pytest

from imgcls import probability as P
from imgcls.tasks import TEMPERATURE_RANGE, Task, calibrate, fit_temperature, tune_binary_threshold, tune_thresholds


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


def _near_chance(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The logits of a network that has barely started: a tiny spread, the label's logit a
    little above the others more often than chance."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    z = rng.normal(0, 0.01, (n, 10))
    z[np.arange(n), y] += 0.012
    return z, y


def test_the_temperature_is_bounded_and_a_fit_at_the_bound_is_said() -> None:
    """A near-chance model on 72 validation images got T = 0.050 (logits x20) without a word."""
    z, y = _near_chance(72)
    assert 0.1 < (z.argmax(1) == y).mean() < 0.7 and TEMPERATURE_RANGE == (0.1, 10.0)
    t = fit_temperature("multiclass", z, y)
    assert t == pytest.approx(0.1, rel=1e-3)  # the range's end, not beyond it
    fit = calibrate("multiclass", z, y)
    assert fit is not None and fit.temperature == t and fit.at_bound and not fit.trusted
    doubts = " ".join(fit.doubts)
    assert "lowest temperature allowed, 0.1 (logits x10)" in doubts
    assert "only 72 validation images" in doubts
    record = fit.record()
    assert record["at_bound"] is True and record["trusted"] is False and record["images"] == 72
    assert record["interval95"] is None  # the optimum lies outside the range: no interval around it
    assert record["errors"] == int((z.argmax(1) != y).sum()) and record["range"] == [0.1, 10.0]
    # a network whose confidences say nothing (random labels): the other end of the range
    rng = np.random.default_rng(1)
    wild = rng.normal(0, 30, (400, 5))
    fit = calibrate("multiclass", wild, rng.integers(0, 5, 400))
    assert fit is not None and fit.temperature == pytest.approx(10.0, rel=1e-3) and fit.at_bound
    assert "highest temperature allowed, 10 (logits /10)" in " ".join(fit.doubts)


def test_a_fit_says_how_sure_it_is() -> None:
    """The 95% interval of T (a sandwich estimate of log T's error): narrow and around the
    temperature that made the labels on many images; wide, and said, where it rests on a few."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(3000, 5))
    y = np.array([rng.choice(5, p=row) for row in P.softmax(z / 2.5)])
    fit = calibrate("multiclass", z, y)
    assert fit is not None and fit.trusted and fit.doubts == [] and not fit.at_bound
    lo, hi = fit.interval
    assert lo < 2.5 < hi and hi / lo < 1.3
    # the same kind of logits, 120 images: the interval widens with 1 / sqrt(n)
    small = calibrate("multiclass", z[:120], y[:120])
    assert small is not None and small.interval[1] / small.interval[0] > (hi / lo) ** 3
    # nearly all right: the fit rests on its three mistakes and is said to
    y3 = z.argmax(1)[:400].copy()
    y3[:3] = (y3[:3] + 1) % 5
    few = calibrate("multiclass", z[:400] * 3, y3)
    assert few is not None and few.trusted and few.errors == 3  # a sound fit whose size is uncertain
    assert "95% interval" in " ".join(few.notes) and "3 of 400 validation images wrong" in " ".join(few.notes)
    assert few.record()["notes"] == few.notes and fit.notes == []
    # binary: one logit, the same arithmetic
    zb = rng.normal(0, 4, size=4000)
    yb = (rng.random(4000) < 1 / (1 + np.exp(-zb / 0.5))).astype(np.int64)
    fb = calibrate("binary", zb[:, None], yb, positive=1)
    assert fb is not None and fb.trusted and fb.interval[0] < 0.5 < fb.interval[1]


def test_the_model_config_records_the_calibration() -> None:
    z, y = _near_chance(72)
    task = Task("multiclass", [str(k) for k in range(10)])
    fit = calibrate("multiclass", z, y)
    assert fit is not None
    task.temperature, task.calibration = fit.temperature, fit.record()
    saved = task.to_dict()
    assert saved["temperature"] == pytest.approx(0.1) and saved["calibration"]["trusted"] is False
    assert saved["calibration"]["doubts"] == fit.doubts
