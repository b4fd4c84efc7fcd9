"""The probability core against torch's reference losses and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imgcls import probability as P


def test_softmax_matches_torch_and_sums_to_one() -> None:
    z = np.random.default_rng(0).normal(size=(5, 7)) * 10
    p = P.softmax(z)
    np.testing.assert_allclose(p, torch.softmax(torch.tensor(z), -1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    assert isinstance(P.softmax(torch.tensor(z)), torch.Tensor)


def test_softmax_is_stable_for_extreme_logits() -> None:
    z = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]])
    p = P.softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(p[1], [1 / 3] * 3)
    np.testing.assert_allclose(P.log_softmax(z)[0], [0.0, -1e4, -2e4])
    s = P.sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(s, [0.0, 0.5, 1.0])


def test_categorical_likelihood_by_hand() -> None:
    q = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    y = np.array([0, 2, 1])
    assert P.likelihood(y, q) == pytest.approx(0.7 * 0.8 * 0.4)
    assert P.log_likelihood(y, q) == pytest.approx(math.log(0.7) + math.log(0.8) + math.log(0.4))
    onehot = np.eye(3)[y]
    assert P.likelihood(onehot, q) == pytest.approx(0.7 * 0.8 * 0.4)  # one-hot = integer labels
    assert P.nll(y, q) == pytest.approx(-(math.log(0.7) + math.log(0.8) + math.log(0.4)) / 3)
    assert P.nll(y, q, reduction="sum") == pytest.approx(-P.log_likelihood(y, q))
    np.testing.assert_allclose(P.cross_entropy(onehot, q), P.nll(y, q, reduction="none"))


def test_bernoulli_likelihood_by_hand() -> None:
    y = np.array([[1, 0, 1], [0, 1, 1]])
    q = np.array([[0.9, 0.2, 0.6], [0.3, 0.5, 0.99]])
    expected = 0.9 * 0.8 * 0.6 * 0.7 * 0.5 * 0.99
    assert P.likelihood(y, q) == pytest.approx(expected)
    # binary vector of one image: 1-D arrays of the same shape are Bernoulli
    assert P.likelihood(np.array([1, 0]), np.array([0.9, 0.2])) == pytest.approx(0.9 * 0.8)
    # same values as torch's binary cross-entropy summed per example
    bce = F.binary_cross_entropy(torch.tensor(q), torch.tensor(y, dtype=torch.float64), reduction="none")
    np.testing.assert_allclose(P.nll(y, q, reduction="none"), bce.sum(-1).numpy(), rtol=1e-12)


def test_nll_equals_torch_cross_entropy_on_logits() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16, 5, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (16,), generator=g)
    ref = F.cross_entropy(z, y)
    assert float(P.nll(y, P.softmax(z))) == pytest.approx(float(ref), rel=1e-10)
    assert float(P.nll_from_logits(y, z)) == pytest.approx(float(ref), rel=1e-10)
    assert float(P.nll_from_logits(y.numpy(), z.numpy())) == pytest.approx(float(ref), rel=1e-10)
    ym = (torch.rand(16, 5, generator=g) > 0.5).double()
    ref_bce = F.binary_cross_entropy_with_logits(z, ym, reduction="none").sum(-1).mean()
    assert float(P.nll_from_logits(ym, z, multilabel=True)) == pytest.approx(float(ref_bce))


def test_nll_from_logits_is_exact_where_probabilities_round_to_zero() -> None:
    z = np.array([[0.0, 800.0]])
    assert P.nll_from_logits(np.array([0]), z) == pytest.approx(800.0)
    assert np.isfinite(P.nll(np.array([0]), P.softmax(z)))  # clipped, finite, but not exact


def test_product_underflows_log_does_not() -> None:
    q = np.full((3000, 2), 0.5)
    y = np.zeros(3000, dtype=int)
    assert float(np.prod(q[:, 0])) == 0.0
    assert P.likelihood(y, q) == 0.0
    assert P.log_likelihood(y, q) == pytest.approx(3000 * math.log(0.5))


def test_cross_entropy_is_minimised_by_the_true_distribution() -> None:
    p = np.array([0.2, 0.5, 0.3])
    for q in ([0.3, 0.4, 0.3], [0.1, 0.8, 0.1], [1 / 3] * 3):
        assert P.cross_entropy(p, np.array(q)) > P.cross_entropy(p, p)
    assert P.entropy_bits(np.array([0.5, 0.5])) == pytest.approx(1.0)


def test_numpy_and_torch_agree() -> None:
    q = np.array([[0.6, 0.4], [0.25, 0.75]])
    y = np.array([1, 1])
    for fn in (P.likelihood, P.log_likelihood, P.nll):
        a = fn(y, q)
        b = fn(torch.tensor(y), torch.tensor(q))
        assert isinstance(b, torch.Tensor)
        assert float(a) == pytest.approx(float(b))


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        P.likelihood(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="reduction"):
        P.nll(np.array([0]), np.array([[1.0]]), reduction="max")  # type: ignore[arg-type]


def test_worked_examples_in_the_docs_are_true() -> None:
    import doctest

    import imgcls
    from imgcls.models import factory

    for module in (P, imgcls, factory):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# ------------------------------------------------------------------------------- calibration
def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    from imgcls.tasks import fit_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(6000, 5))
    p = P.softmax(z / 2.5)
    y = np.array([rng.choice(5, p=row) for row in p])
    assert fit_temperature("multiclass", z, y) == pytest.approx(2.5, rel=0.08)
    # the fitted temperature lowers the NLL below T = 1's; the arg-max does not move
    t = fit_temperature("multiclass", z, y)
    assert P.nll(y, P.softmax(z / t)) < P.nll(y, P.softmax(z))
    np.testing.assert_array_equal(P.softmax(z / t).argmax(1), z.argmax(1))


def test_fit_temperature_binary_and_already_calibrated() -> None:
    from imgcls.tasks import fit_temperature

    rng = np.random.default_rng(1)
    z = rng.normal(0, 4, size=6000)
    y = (rng.random(6000) < 1 / (1 + np.exp(-z / 0.5))).astype(np.int64)  # too timid by 2x
    assert fit_temperature("binary", z[:, None], y, positive=1) == pytest.approx(0.5, rel=0.08)
    # the positive class at index 0: the labels flip meaning, the temperature does not
    assert fit_temperature("binary", z, 1 - y, positive=0) == pytest.approx(0.5, rel=0.08)
    y1 = np.array([rng.choice(3, p=row) for row in P.softmax(z.reshape(2000, 3))])
    assert fit_temperature("multiclass", z.reshape(2000, 3), y1) == pytest.approx(1.0, abs=0.1)
    with pytest.raises(ValueError):
        fit_temperature("multilabel", z[:, None], y)


def test_no_temperature_is_fitted_to_labels_the_logits_separate() -> None:
    """All right: the NLL falls as T goes to 0, and the search's end (T = 0.05) made a run on 20
    validation images report NLL 0.0000 and probabilities of 1.0 for anything."""
    from imgcls.tasks import fit_temperature

    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 20)
    z = rng.normal(size=(20, 4))
    z[np.arange(20), y] += 3.0 + np.abs(z).max()  # every label the arg-max
    assert fit_temperature("multiclass", z, y) is None
    z[0, (y[0] + 1) % 4] = z[0, y[0]] + 0.5  # one mistake: a finite fit again
    t = fit_temperature("multiclass", z, y)
    assert t is not None and 0.05 < t < 20
    zb = np.where(y % 2 == 1, 2.0, -2.0) + rng.normal(0, 0.5, 20)
    assert fit_temperature("binary", zb, y % 2, positive=1) is None
    assert fit_temperature("binary", -zb, y % 2, positive=0) is None  # the positive class at index 0
    zb[0] = -zb[0]
    assert fit_temperature("binary", zb, y % 2, positive=1) is not None


def test_binary_threshold_tuning_by_hand() -> None:
    from imgcls.tasks import tune_binary_threshold

    p = np.array([0.9, 0.4, 0.35, 0.3, 0.2, 0.1, 0.05, 0.6])
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    # F1: at 0.35 all three positives are found with no false one (F1 = 1)
    assert tune_binary_threshold(p, y, "f1") == pytest.approx(0.35)
    # balanced accuracy is also perfect there
    assert tune_binary_threshold(p, y, "balanced") == pytest.approx(0.35)
    assert tune_binary_threshold(p, np.zeros(8, bool), "f1") == 0.5  # no positive: keep 0.5
    with pytest.raises(ValueError):
        tune_binary_threshold(p, y, "accuracy")


@pytest.mark.parametrize("as_tensor", [False, True])
def test_float32_probabilities_of_exactly_zero_and_one_give_a_finite_nll(as_tensor: bool) -> None:
    p = np.array([[1.0, 0.0, 0.5]], dtype=np.float32)  # a saturated sigmoid in float32
    y = np.array([[0, 1, 1]])
    q, t = (torch.from_numpy(p), torch.from_numpy(y)) if as_tensor else (p, y)
    value = float(P.nll(t, q, kind="bernoulli"))
    # -log(1e-12) twice (the clipped 0 and 1), plus -log(0.5)
    assert value == pytest.approx(2 * -np.log(1e-12) - np.log(0.5), rel=1e-5)
    assert np.isfinite(float(P.log_likelihood(t, q, kind="bernoulli")))
    cat = np.array([[0.0, 1.0]], dtype=np.float32)
    qc = torch.from_numpy(cat) if as_tensor else cat
    assert float(P.nll(np.array([0]), qc, kind="categorical")) == pytest.approx(-np.log(1e-12))


def test_the_task_probabilities_and_decisions_are_one_implementation() -> None:
    """Training's Task, prediction's Classifier and NumPy/torch inputs give the same numbers."""
    from imgcls.artifacts import ModelInfo
    from imgcls.predict import Classifier
    from imgcls.tasks import Task

    rng = np.random.default_rng(0)
    for task, k, positive in (("multiclass", 4, 1), ("binary", 1, 0), ("binary", 1, 1), ("multilabel", 3, 1)):
        logits = rng.normal(size=(6, k)) * 3
        names = ["a", "b"] if task == "binary" else ["a", "b", "c", "d"][:k]
        thresholds = [0.3] if task == "binary" else ([0.2, 0.5, 0.7] if task == "multilabel" else [])
        t = Task(task, names, positive=positive, temperature=1.5, thresholds=list(thresholds))
        info = ModelInfo(arch="lenet", num_outputs=k, label_names=names, task=task, temperature=1.5,
                         positive_class=names[positive] if task == "binary" else None, thresholds=list(thresholds))  # fmt: skip
        clf = Classifier(info=info, _backend=None, label_names=names)
        from_numpy = P.class_probabilities(logits, task, temperature=1.5, positive=positive)
        from_torch = t.probabilities(torch.from_numpy(logits)).numpy()
        np.testing.assert_allclose(from_numpy, from_torch, rtol=1e-12)
        np.testing.assert_allclose(clf._probs(logits), from_numpy, rtol=1e-12)
        decided = t.predict(from_numpy)
        for i in range(6):  # the classifier's row labels are the same decisions
            label = clf.row("x", from_numpy[i])["label"]
            if task == "multilabel":
                assert set(filter(None, label.split(";"))) == {names[j] for j in np.flatnonzero(decided[i])}
            else:
                assert label == names[int(decided[i])]
    import subprocess
    import sys

    code = "import sys, imgcls.probability; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
