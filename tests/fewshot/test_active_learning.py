"""Learning curve + power-law extrapolation, and the "label these next" rules (margin, k-center greedy)."""
from __future__ import annotations

import numpy as np
import pytest

from engine.fewshot.active import k_center_greedy, margin, select, suggest
from engine.fewshot.learning_curve import CurvePoint, extrapolate, fit_power_law, learning_curve, power_law


def _points(ns, a, b, c, noise=0.0, repeats=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in ns:
        aucs = power_law(np.array([n]), a, b, c)[0] + rng.normal(0, noise, repeats)
        se = max(float(aucs.std(ddof=1) / np.sqrt(repeats)), 1e-3)
        out.append(CurvePoint(int(n), float(aucs.mean()), se, aucs.mean() - 2 * se, aucs.mean() + 2 * se,
                              tuple(aucs)))
    return out


def test_power_law_fit_recovers_parameters():
    ns = np.array([10, 20, 40, 80, 160], dtype=float)
    a, b, c = fit_power_law(ns, power_law(ns, 0.9, 1.2, 0.6))
    assert (a, b, c) == pytest.approx((0.9, 1.2, 0.6), abs=1e-3)
    ex = extrapolate(_points([12, 24, 36, 48], 0.9, 1.2, 0.6, noise=0.005), extra=20)
    assert ex.trusted, ex.reason
    true = power_law(np.array([68]), 0.9, 1.2, 0.6)[0]
    assert ex.low <= true <= ex.high and ex.auc_target > ex.auc_now
    assert abs(ex.auc_target - true) < 0.02
    assert "would probably raise the AUC from" in ex.sentence(20)


def test_extrapolation_refuses_flat_short_or_far_curves():
    flat = _points([12, 24, 36, 48], 0.7, 0.0, 0.5, noise=0.03)
    ex = extrapolate(flat, 20)
    assert not ex.trusted and "flat" in ex.reason and ex.sentence(20).startswith("No extrapolation")
    short = _points([24, 48], 0.9, 1.2, 0.6)
    assert not extrapolate(short, 20).trusted and "at least 3" in extrapolate(short, 20).reason
    narrow = _points([40, 50, 60], 0.9, 1.2, 0.6)
    assert "factor of 2" in extrapolate(narrow, 20).reason
    assert "too far" in extrapolate(_points([12, 24, 48], 0.9, 1.2, 0.6), 100).reason


def test_learning_curve_on_features():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(30)]
    X = rng.normal(0, 1, (60, 8))
    X[:, 0] += 1.2 * y  # a weak signal: more images help
    lc = learning_curve(X, y, repeats=3, extra=20, seed=1)
    assert [p.n for p in lc.points] == [15, 30, 45, 60]
    assert all(0 <= p.auc <= 1 for p in lc.points) and lc.points[-1].auc > 0.7
    d = lc.to_dict()
    assert d["extra"] == 20 and len(d["points"]) == 4 and d["sentence"]
    with pytest.raises(ValueError, match="at least 6"):
        learning_curve(X[:8], np.r_[np.ones(4), np.zeros(4)])


def test_k_center_greedy_picks_spread_out_points():
    # four tight clusters at the corners of a square; the labeled point sits in the lower-left one
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    pool = np.concatenate([c + rng.normal(0, 0.1, (10, 2)) for c in centres])
    picks = k_center_greedy(pool, np.array([[0.0, 0.0]]), 3)
    assert {int(i) // 10 for i in picks} == {1, 2, 3}  # one from each of the other clusters
    assert int(picks[0]) // 10 == 3  # first the farthest: the opposite corner
    assert len(k_center_greedy(pool, None, 4)) == 4 and len({int(i) // 10 for i in k_center_greedy(pool, None, 4)}) == 4


def test_margin_picks_points_near_the_boundary():
    p = np.array([0.02, 0.48, 0.97, 0.55, 0.3, 0.51])
    assert margin(p) == pytest.approx([0.96, 0.04, 0.94, 0.10, 0.40, 0.02])
    # 2-D: the class boundary is x = 0; margin sampling takes the pool points closest to it
    rng = np.random.default_rng(1)
    X_lab = np.r_[rng.normal([-3, 0], 0.5, (10, 2)), rng.normal([3, 0], 0.5, (10, 2))]
    y_lab = np.r_[np.zeros(10), np.ones(10)]
    X_pool = np.array([[-4.0, 0.0], [-0.1, 1.0], [4.0, 0.5], [0.2, -1.0], [-2.5, 0.0], [2.5, 0.0]])
    picks = select("margin", X_lab, y_lab, X_pool, 2)
    assert set(picks.tolist()) == {1, 3}
    for rule in ("margin_coreset", "coreset"):  # both start with the two points between the classes
        s = suggest(X_lab, y_lab, X_pool, k=3, rule=rule)
        assert len(s) == 3 and {x.index for x in s} >= {1, 3} and all(0 <= x.probability <= 1 for x in s)
    with pytest.raises(ValueError):
        select("nope", X_lab, y_lab, X_pool, 2)
