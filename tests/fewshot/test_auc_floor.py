"""The small-sample floor of AUC intervals: Newcombe's (2006) method-5 interval, the one floor rule
(metrics.floor_interval), and that sweeps and the Classifier's estimate never show [1, 1] on a tiny test set."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from engine.fewshot.classifier.validation import validate_scores, wilson_interval
from engine.fewshot.metrics import (WIDENED_MARK, auc, auc_small_sample_interval, bootstrap_auc, difference_floor,
                                    floor_interval, newcombe_variance, paired_differences)
from engine.fewshot.trials import appendix_table, evaluate_trial, floor_summary, paired_appendix_table, summarize

Z = float(norm.ppf(0.975))


def _quartic_limits(a: float, m: float, n: float) -> tuple[float, float]:
    """Newcombe's limits as the roots of the quartic (a - t)^2 (2 - t)(1 + t) m n = z^2 t (1 - t) [(2 - t)(1 + t)
    + N* ((1 - t)(1 + t) + t (2 - t))], N* = (m + n)/2 - 1, found with numpy's polynomial roots (not Brent)."""
    P = np.polynomial.Polynomial
    t = P([0.0, 1.0])
    n_star = (m + n) / 2 - 1
    lhs = (a - t) ** 2 * (2 - t) * (1 + t) * (m * n)
    rhs = Z ** 2 * t * (1 - t) * ((2 - t) * (1 + t) + n_star * ((1 - t) * (1 + t) + t * (2 - t)))
    r = (lhs - rhs).roots()
    r = np.real(r[np.abs(np.imag(r)) < 1e-9])
    r = r[(r >= -1e-9) & (r <= 1 + 1e-9)]
    lo = r[r <= a + 1e-9]
    hi = r[r >= a - 1e-9]
    # at a = 1 (a = 0) the polynomial also vanishes at t = a itself: the other limit is the one away from it
    return (float(lo.min()) if a == 1 else float(lo.max()) if a > 0 else 0.0,
            float(hi.max()) if a == 0 else float(hi.min()) if a < 1 else 1.0)


@pytest.mark.parametrize("a,m,n", [(1.0, 3, 4), (0.0, 4, 3), (0.8, 10, 10), (0.5, 3, 4), (0.93, 7, 20),
                                   (0.65, 40, 12), (1.0, 1, 1), (0.25, 2, 9)])
def test_newcombe_limits_are_the_roots_of_its_quartic(a, m, n):
    lo, hi = auc_small_sample_interval(a, m, n)
    qlo, qhi = _quartic_limits(a, m, n)
    assert (lo, hi) == pytest.approx((qlo, qhi), abs=1e-7)
    assert 0.0 <= lo <= a <= hi <= 1.0
    # each finite limit solves (a - t)^2 = z^2 V(t): the score-type definition
    for t in (lo, hi):
        if t not in (0.0, 1.0) and t != a:
            assert (a - t) ** 2 == pytest.approx(Z ** 2 * float(newcombe_variance(t, m, n)), rel=1e-6)


def test_with_one_image_per_class_it_is_wilsons_interval_for_one_trial():
    # m = n = 1: N* = 0 and V = t(1 - t), the Wilson score interval of a proportion with n = 1 (Wilson 1927)
    for a, k in ((0.0, 0), (1.0, 1)):
        assert auc_small_sample_interval(a, 1, 1) == pytest.approx(wilson_interval(k, 1), abs=1e-9)
    assert auc_small_sample_interval(1.0, 1, 1)[0] == pytest.approx(1 / (1 + Z ** 2), abs=1e-9)  # closed form


def test_symmetric_in_auc_and_in_the_classes():
    for a, m, n in ((0.9, 3, 4), (0.7, 12, 30), (1.0, 5, 2)):
        lo, hi = auc_small_sample_interval(a, m, n)
        lo2, hi2 = auc_small_sample_interval(1 - a, m, n)
        assert (lo, hi) == pytest.approx((1 - hi2, 1 - lo2), abs=1e-9)
        assert auc_small_sample_interval(a, n, m) == pytest.approx((lo, hi), abs=1e-12)


def test_never_degenerate_at_the_bounds_for_small_counts():
    for m in range(1, 11):
        for n in range(1, 11):
            lo, hi = auc_small_sample_interval(1.0, m, n)
            assert hi == 1.0 and lo < 0.85, (m, n, lo)
            lo0, hi0 = auc_small_sample_interval(0.0, m, n)
            assert lo0 == 0.0 and hi0 > 0.15
    lo, _ = auc_small_sample_interval(1.0, 3, 4)
    assert 0.3 < lo < 0.7  # 7 images: a perfect AUC is compatible with a mediocre classifier


def test_nan_and_bad_inputs():
    assert all(math.isnan(v) for v in auc_small_sample_interval(float("nan"), 3, 4))
    assert all(math.isnan(v) for v in auc_small_sample_interval(0.9, 0, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        auc_small_sample_interval(1.2, 3, 4)


def test_coverage_by_simulation_on_tiny_binormal_test_sets():
    """Binormal scores with true AUC 0.9 (Phi(delta / sqrt 2)): about 95% of intervals cover it, where the
    bootstrap of the same data, which collapses at 1, covers far less."""
    rng = np.random.default_rng(0)
    true = 0.9
    delta = math.sqrt(2) * norm.ppf(true)
    for m, n in ((3, 4), (5, 5)):
        hits = boot_hits = 0
        reps = 500
        for _ in range(reps):
            y = np.r_[np.ones(m), np.zeros(n)]
            s = np.r_[rng.normal(delta, 1, m), rng.normal(0, 1, n)]
            lo, hi = auc_small_sample_interval(auc(y, s), m, n)
            hits += lo <= true <= hi
            blo, bhi = bootstrap_auc(y, s, n_boot=200, seed=1)
            boot_hits += blo <= true <= bhi
        assert 0.92 <= hits / reps <= 0.99, (m, n, hits / reps)
        assert boot_hits / reps < hits / reps - 0.05


def test_large_samples_approach_hanley_mcneil_and_the_bootstrap():
    a, m, n = 0.8, 3000, 3000
    lo, hi = auc_small_sample_interval(a, m, n)
    half = Z * math.sqrt(float(newcombe_variance(a, m, n)))
    assert lo == pytest.approx(a - half, abs=1e-3) and hi == pytest.approx(a + half, abs=1e-3)
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(800), np.zeros(800)]
    s = np.r_[rng.normal(1.2, 1, 800), rng.normal(0, 1, 800)]
    blo, bhi = bootstrap_auc(y, s, n_boot=500, seed=0)
    nlo, nhi = auc_small_sample_interval(auc(y, s), 800, 800)
    assert nlo == pytest.approx(blo, abs=0.01) and nhi == pytest.approx(bhi, abs=0.01)
    assert floor_interval(auc(y, s), blo, bhi, 800, 800).high - bhi < 0.01  # the floor barely moves it


def test_floor_is_the_hull_and_says_when_it_widened():
    f = floor_interval(1.0, 1.0, 1.0, 3, 4)
    lo, hi = auc_small_sample_interval(1.0, 3, 4)
    assert (f.low, f.high) == pytest.approx((lo, hi)) and f.widened
    assert "3 positive and 4 negative test images" in f.note and "no AUC can be known more precisely" in f.note
    wide = floor_interval(0.8, 0.2, 0.99, 10, 10)  # already wider than the floor: unchanged, no note
    assert (wide.low, wide.high, wide.widened, wide.note) == (0.2, 0.99, False, "")
    assert floor_interval(0.9, float("nan"), float("nan"), 3, 4).note == ""  # one trial: no interval to floor
    again = floor_interval(1.0, f.low, f.high, 3, 4)
    assert (again.low, again.high) == (f.low, f.high) and not again.widened  # idempotent
    assert "an even split" in floor_interval(1.0, 1.0, 1.0, 3.5, 3.5, assumed_balanced=True).note


def test_difference_floor_is_movers_interval_when_both_aucs_are_perfect():
    for m, n in ((3, 4), (10, 10), (25, 60)):
        lo1, hi1 = auc_small_sample_interval(1.0, m, n)  # both inits: AUC 1, d = 0
        for r in (0.0, 0.5, 0.9):  # MOVER (Zou & Donner 2008) with any correlation r of the two AUCs
            d_lo = 0.0 - math.sqrt((1 - lo1) ** 2 + (hi1 - 1) ** 2 - 2 * r * (1 - lo1) * (hi1 - 1))
            assert d_lo == pytest.approx(-difference_floor(m, n), abs=1e-12)
        f = floor_interval(0.0, 0.0, 0.0, m, n, difference=True)
        assert f.low == pytest.approx(-(1 - lo1)) and f.high == pytest.approx(1 - lo1) and f.widened
    assert difference_floor(100, 100) < 0.03  # large test sets: the floor leaves paired intervals alone
    edge = floor_interval(0.9, 0.9, 0.9, 3, 4, difference=True)
    assert edge.high == 1.0 and edge.low < 0.9  # clipped to [-1, 1]


def _perfect_trials(n_trials: int = 4) -> pd.DataFrame:
    """Trials of two inits on a 7-image test pool (3 positive, 4 negative) that both separate perfectly."""
    rng = np.random.default_rng(0)
    y_te = np.array([1, 1, 1, 0, 0, 0, 0])
    y_tr = np.array([1, 1, 0, 0])
    rows = []
    for t in range(n_trials):
        sample = np.sort(rng.choice(7, 7, replace=True))
        while len(set(y_te[sample])) < 2:
            sample = np.sort(rng.choice(7, 7, replace=True))
        for init in ("random", "ssl"):
            s_te = np.where(y_te == 1, 2.0, -2.0) + rng.normal(0, 0.1, 7)
            s_tr = np.array([1.0, 0.8, -1.0, -0.9])
            res = evaluate_trial(s_tr, y_tr, s_te, y_te, 50, t, sample)
            rows.append({"finding": "f", "init": init, "mode": "probe", "shots": 2, "trial": t, "seed": t, **res})
    return pd.DataFrame(rows)


def test_a_sweep_on_a_tiny_test_set_reports_an_interval_of_nonzero_width():
    trials = _perfect_trials()
    assert (trials["auc"] == 1.0).all() and (trials["auc_ci_low"] < 0.8).all()  # per-trial interval floored too
    assert (trials["n_test_pos"] + (trials["n_test"] - trials["n_test_pos"]) == 7).all()
    summ = summarize(trials, n_bootstrap=50)
    assert (summ["auc_mean"] == 1.0).all()
    assert (summ["auc_ci_high"] - summ["auc_ci_low"] > 0.2).all(), summ[["auc_ci_low", "auc_ci_high"]]
    assert summ["auc_ci_note"].str.contains("no AUC can be known more precisely").all()
    cell = appendix_table(summ, interval=True)["2-shot"].iloc[0]
    assert cell.startswith("1.000 [0.") and cell.endswith(WIDENED_MARK)
    p = paired_differences(trials, "random")[0]
    assert p["diff"] == 0.0 and p["ci_low"] < -0.2 and p["ci_high"] > 0.2 and p["ci_note"]
    assert WIDENED_MARK in paired_appendix_table([p])["2-shot"].iloc[0]


def test_old_summaries_and_trials_are_floored_when_shown():
    trials = _perfect_trials().drop(columns=["n_test_pos"])  # written before the floor: class split unknown
    old = summarize(trials, n_bootstrap=50).drop(columns=["auc_ci_note"])
    old[["auc_ci_low", "auc_ci_high"]] = 1.0  # as an unfloored summary.csv had it
    shown = floor_summary(old, trials)
    assert (shown["auc_ci_low"] < 0.8).all() and shown["auc_ci_note"].str.contains("even split").all()
    lo_even, _ = auc_small_sample_interval(1.0, shown["n_test_pos"].iloc[0], shown["n_test_neg"].iloc[0])
    assert shown["auc_ci_low"].iloc[0] >= lo_even - 1e-9  # even split: never wider than the true floor


def test_classifier_estimate_with_perfect_oof_separation_on_8_images_is_not_1_1():
    from engine.fewshot.classifier.build import _summarize

    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    oof = np.tile(np.where(y == 1, 3.0, -3.0) + np.linspace(0, 0.1, 8), (2, 1))  # (R, N), perfect in each repeat
    est = _summarize(oof, y, 4, "nodule", "platt", 200, 0, [])[0]
    assert est.auc == 1.0 and est.ci_high == 1.0 and est.ci_low < 0.8
    assert est.ci_note and "4 positive and 4 negative" in est.ci_note and est.ci_note in est.sentence


def test_external_validation_on_a_tiny_test_set_is_floored():
    y = np.array([1, 1, 0, 0, 0])
    rep = validate_scores(y, np.array([0.9, 0.8, 0.2, 0.1, 0.3]), 0.5, "nodule")
    assert rep.auc == 1.0 and rep.auc_low < 0.8 and rep.auc_ci_note in rep.sentence()
    assert type(rep).from_dict(rep.to_dict()).auc_ci_note == rep.auc_ci_note


def test_study_report_marks_widened_d_intervals_and_says_why_once():
    from engine.study.report import paired_table

    t = paired_table(_perfect_trials())
    assert t["95% interval"].iloc[0].endswith(WIDENED_MARK)
    notes = t.attrs["notes"]
    assert len(notes) == 1 and "no difference of two AUCs can be known more precisely" in notes[0]


def test_table_notes_that_differ_only_in_the_quoted_interval_are_said_once():
    from engine.fewshot.metrics import floor_note, interval_notes

    a, b = floor_note(3, 4, 0.149, 0.815), floor_note(3, 4, 0.109, 0.766)
    other = floor_note(5, 5, 0.2, 0.9)
    assert interval_notes([a]) == [a]  # one widened cell: its interval is quoted
    notes = interval_notes([a, b, None, "", a, other])
    assert len(notes) == 2 and all("shown in the marked cells" in n for n in notes)
    assert "3 positive and 4 negative" in notes[0] and "5 positive and 5 negative" in notes[1]
