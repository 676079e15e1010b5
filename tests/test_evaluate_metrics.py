"""Metrics and calibration against hand-computed cases and synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from bloodcell.core.classes import CLASSES
from bloodcell.core.errors import DataError, ModelError
from bloodcell.evaluation.calibration import (
    accuracy_coverage,
    apply_temperature,
    apply_threshold,
    coverage_at_accuracy,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_views,
    reliability_bins,
    softmax,
    view_probs,
)
from bloodcell.evaluation.metrics import align_classes, bootstrap_ci, compute_metrics, format_table


def _peaked(pred, n_classes, top=0.8):
    """Probabilities with ``top`` on the predicted class and the rest spread evenly."""
    p = np.full((len(pred), n_classes), (1 - top) / (n_classes - 1))
    p[np.arange(len(pred)), pred] = top
    return p


def test_metrics_hand_computed_three_classes():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    m = compute_metrics(y, _peaked(pred, 3), ("a", "b", "c"), n_boot=0)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    a = m["per_class"]["a"]
    assert {k: a[k] for k in ("precision", "recall", "f1", "support")} == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_avg"]["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["weighted_avg"]["precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["confusion_matrix"]["counts"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["confusion_matrix"]["row_normalized"][0] == pytest.approx([0.5, 0.5, 0.0])
    assert m["log_loss"] == pytest.approx(-(4 * math.log(0.8) + 2 * math.log(0.1)) / 6)
    assert m["ece"] == pytest.approx(0.8 - 4 / 6)
    assert m["absent_classes"] == [] and m["absent_predictions"]["count"] == 0
    assert "restricted" not in m and "ci95" not in m


def test_metrics_agree_with_sklearn_on_random_data():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 8, 400)
    p = rng.dirichlet(np.ones(8), 400)
    p[np.arange(400), y] += rng.uniform(0, 0.6, 400)
    p /= p.sum(axis=1, keepdims=True)
    m = compute_metrics(y, p, CLASSES, n_boot=0)
    pred = p.argmax(axis=1)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_avg"]["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_avg"]["f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["roc_auc_ovr_macro"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_bootstrap_matches_sklearn_on_the_same_resamples():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 120)
    pred = np.where(rng.random(120) < 0.7, y, rng.integers(0, 4, 120))
    ci = bootstrap_ci(y, pred, np.arange(4), 4, n_boot=50, seed=7)
    idx = np.random.default_rng(7).integers(0, 120, size=(50, 120))
    f1s = [f1_score(y[i], pred[i], labels=np.arange(4), average="macro", zero_division=0) for i in idx]
    accs = [(y[i] == pred[i]).mean() for i in idx]
    assert ci["macro_f1"] == pytest.approx(list(np.percentile(f1s, [2.5, 97.5])))
    assert ci["accuracy"] == pytest.approx(list(np.percentile(accs, [2.5, 97.5])))
    assert ci["accuracy"][0] < (y == pred).mean() < ci["accuracy"][1]


def test_partial_label_set_counts_absent_predictions_as_errors():
    names = ("a", "b", "c", "d")
    y = np.array([0, 0, 1, 1])
    p = _peaked(np.array([0, 3, 1, 1]), 4)
    p[1] = [0.05, 0.15, 0.0, 0.8]  # second choice among the present classes is "b": still wrong when restricted
    m = compute_metrics(y, p, names, evaluated=("a", "b"), n_boot=0)
    assert m["evaluated_classes"] == ["a", "b"] and m["absent_classes"] == ["c", "d"]
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["per_class"]["a"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["a"]["precision"] == pytest.approx(1.0)
    assert m["macro_avg"]["f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["absent_predictions"] == {"count": 1, "rate": 0.25, "by_class": {"c": 0, "d": 1}}
    assert m["confusion_matrix"]["rows"] == ["a", "b"]
    assert m["confusion_matrix"]["counts"] == [[1, 0, 0, 1], [0, 2, 0, 0]]
    assert m["restricted"]["accuracy"] == pytest.approx(0.75)
    text = format_table(m)
    assert "1 of 4 (25.00%)" in text and "d 1" in text


def test_partial_label_set_restricted_accuracy_recovers_right_second_choice():
    y = np.array([0, 1])
    p = np.array([[0.3, 0.1, 0.6], [0.1, 0.8, 0.1]])
    m = compute_metrics(y, p, ("a", "b", "c"), evaluated=("a", "b"), n_boot=0)
    assert m["accuracy"] == 0.5 and m["restricted"]["accuracy"] == 1.0


def test_align_classes():
    al = align_classes(["lymphocyte", "Neutrophils", "monocyte", "eosinophil", "basophil"], CLASSES)
    assert al.evaluated == ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
    assert al.absent == ("erythroblast", "ig", "platelet") and al.unknown == ()
    assert "Partial label set" in al.message()
    al = align_classes(CLASSES, ("lymphocyte", "neutrophil"))
    assert set(al.unknown) == set(CLASSES) - {"lymphocyte", "neutrophil"}
    assert "left out" in al.message()
    assert align_classes(CLASSES, CLASSES).message() is None
    with pytest.raises(ModelError, match="share no class.*platelet"):
        align_classes(["lymphocyte", "monocyte"], ["platelet", "erythroblast"])


def test_empty_and_malformed_inputs():
    with pytest.raises(DataError, match="empty"):
        compute_metrics(np.zeros(0, int), np.zeros((0, 8)), CLASSES)
    with pytest.raises(DataError, match="shapes"):
        compute_metrics(np.zeros(3, int), np.zeros((4, 8)), CLASSES)
    with pytest.raises(DataError, match="not among the evaluated"):
        compute_metrics(np.array([0, 2]), _peaked(np.array([0, 2]), 3), "abc", evaluated=("a",))


def test_ece_perfectly_calibrated_is_near_zero():
    rng = np.random.default_rng(3)
    n, k = 100_000, 8
    conf = rng.uniform(1 / k + 0.05, 1.0, n)
    top = rng.integers(0, k, n)
    p = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)
    p[np.arange(n), top] = conf
    correct = rng.random(n) < conf
    y = np.where(correct, top, (top + rng.integers(1, k, n)) % k)
    assert expected_calibration_error(p, y) < 0.01


def test_ece_known_overconfidence():
    y = np.array([0] * 6 + [1] * 4)
    p = np.tile([0.9, 0.1], (10, 1))  # always 90% sure of class 0, right 60% of the time
    assert expected_calibration_error(p, y) == pytest.approx(0.3)
    bins = reliability_bins(p, y, n_bins=10)
    assert bins["count"][8] == 10 and bins["accuracy"][8] == pytest.approx(0.6)
    assert bins["confidence"][0] is None


def test_temperature_fit_recovers_known_temperature():
    rng = np.random.default_rng(4)
    n, k, t_true = 20_000, 8, 2.5
    logits = rng.normal(0, 4, (n, k))
    probs_true = softmax(logits / t_true)
    y = np.array([rng.choice(k, p=row) for row in probs_true])
    t = fit_temperature(softmax(logits), y)
    assert t == pytest.approx(t_true, rel=0.05)
    assert fit_temperature(logits, y, logits=True) == pytest.approx(t, rel=1e-6)
    before = expected_calibration_error(softmax(logits), y)
    after = expected_calibration_error(apply_temperature(softmax(logits), t), y)
    assert after < 0.02 < before


def test_apply_temperature_matches_logit_scaling():
    z = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    assert apply_temperature(softmax(z), 2.0) == pytest.approx(softmax(z / 2.0), abs=1e-6)
    with pytest.raises(DataError, match="positive"):
        apply_temperature(softmax(z), 0.0)


def test_coverage_hand_case_and_ties():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    y = np.array([0, 0, 1, 0])  # correct, correct, wrong, correct
    assert coverage_at_accuracy(p, y, 1.0) == pytest.approx(
        {"target": 1.0, "threshold": 0.8, "coverage": 0.5, "accuracy": 1.0, "accepted": 2, "n": 4}
    )
    assert coverage_at_accuracy(p, y, 0.75)["coverage"] == 1.0
    assert coverage_at_accuracy(p, y, 0.8)["threshold"] == pytest.approx(0.8)
    tied = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.5]])
    res = coverage_at_accuracy(tied, np.array([0, 1, 0]), 1.0)
    assert res["threshold"] is None and res["coverage"] == 0.0
    with pytest.raises(DataError, match="Target accuracy"):
        coverage_at_accuracy(p, y, 99.5)


def test_abstention_threshold_reaches_target_on_synthetic_data():
    rng = np.random.default_rng(5)
    n = 5000
    conf = rng.beta(5, 1, n)
    p = np.stack([conf, 1 - conf], axis=1)
    y = np.where(rng.random(n) < conf, 0, 1)
    res = coverage_at_accuracy(p, y, 0.98)
    assert res["accuracy"] >= 0.98 and 0.05 < res["coverage"] < 0.95
    applied = apply_threshold(p, y, res["threshold"])
    assert applied["accuracy"] == pytest.approx(res["accuracy"]) and applied["coverage"] == pytest.approx(res["coverage"])
    curve = accuracy_coverage(p, y)
    wider = curve.coverage > res["coverage"] + 1e-12
    assert np.all(curve.accuracy[wider] < 0.98)
    assert curve.coverage[-1] == 1.0 and curve.accuracy[-1] == pytest.approx((p.argmax(1) == y).mean())


def test_tta_temperature_fit_recovers_known_temperature():
    rng = np.random.default_rng(6)
    n, k, v, t_true = 6000, 8, 8, 0.6
    base = rng.normal(0, 2, (n, k))
    views = base[None] + rng.normal(0, 1.0, (v, n, k))
    p_true = view_probs(views, t_true).astype(np.float64)
    p_true /= p_true.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p_true])
    assert fit_temperature_views(views, y) == pytest.approx(t_true, rel=0.08)
    single = softmax(views[0] / 1.3)
    assert view_probs(views[:1], 1.3) == pytest.approx(single, abs=1e-6)
    with pytest.raises(DataError, match=r"\(V, N, C\)"):
        fit_temperature_views(views[0], y)
