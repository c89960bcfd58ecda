"""Metrics against independent computations (scikit-learn, hand-rolled loops)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from engine.fewshot import metrics as M


def _data(n: int = 200, seed: int = 0, ties: bool = True):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n) + 0.8 * y
    return y, (np.round(s, 1) if ties else s)


@pytest.mark.parametrize("ties", [True, False])
def test_auc_matches_sklearn_with_and_without_ties(ties):
    for seed in range(5):
        y, s = _data(150, seed, ties)
        assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_edge_cases():
    assert M.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert M.auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert math.isnan(M.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError):
        M.auc([0, 1], [0.1, float("nan")])


def test_bootstrap_interval_matches_hand_rolled_loop():
    y, s = _data(120, 3)
    lo, hi = M.bootstrap_auc(y, s, n_boot=300, seed=7)
    idx = np.random.default_rng(7).integers(0, len(y), size=(300, len(y)))  # the documented draws
    aucs = [roc_auc_score(y[i], s[i]) for i in idx if 0 < y[i].sum() < len(y)]
    ref_lo, ref_hi = np.quantile(aucs, [0.025, 0.975])
    assert lo == pytest.approx(ref_lo, abs=1e-12)
    assert hi == pytest.approx(ref_hi, abs=1e-12)
    assert lo < M.auc(y, s) < hi
    assert M.bootstrap_auc(y, s, n_boot=300, seed=7) == (lo, hi)  # seeded
    assert M.bootstrap_auc(y, s, n_boot=300, seed=8) != (lo, hi)


def test_bootstrap_drops_resamples_missing_a_class():
    y = np.array([1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
    samples = M.bootstrap_auc_samples(y, s, n_boot=200, seed=0)
    has_pos = (M.bootstrap_indices(6, 200, 0) == 0).any(axis=1)
    assert np.isnan(samples[~has_pos]).all() and np.isfinite(samples[has_pos]).all()


def test_youden_threshold_and_threshold_metrics():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    t = M.youden_threshold(y, s)
    assert t == pytest.approx(0.5)  # middle of the gap between the classes
    y2, s2 = _data(300, 1)
    t2 = M.youden_threshold(y2, s2)
    pred = s2 >= t2
    j = pred[y2 == 1].mean() + (~pred[y2 == 0]).mean()
    for c in np.unique(s2):  # no cut does better
        p = s2 >= c
        assert p[y2 == 1].mean() + (~p[y2 == 0]).mean() <= j + 1e-12
    m = M.threshold_metrics(y2, s2, t2)
    tn, fp, fn, tp = confusion_matrix(y2, pred.astype(int)).ravel()
    assert m["accuracy"] == pytest.approx((tp + tn) / len(y2))
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert math.isnan(M.threshold_metrics(y, s, 2.0)["precision"])  # nothing called positive


def test_summary_over_trials():
    vals = [0.6, 0.7, 0.8, 0.75, 0.65]
    s = M.summary(vals, n_boot=400, seed=0)
    assert s["mean"] == pytest.approx(np.mean(vals))
    assert s["std"] == pytest.approx(np.std(vals, ddof=1))
    means = np.asarray(vals)[np.random.default_rng(0).integers(0, 5, (400, 5))].mean(1)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert M.summary([0.7])["std"] == 0.0
    assert M.summary([])["n"] == 0
