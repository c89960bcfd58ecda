"""Evaluation metrics for one-vs-rest few-shot trials: AUC, Youden threshold, bootstrap intervals.

All functions are pure and take numpy arrays: `y` holds 0/1 labels (1 = finding present), `s` holds
scores where larger means "more likely present" (probabilities or logits; AUC only needs the order).

* `auc`: the Mann-Whitney statistic with average ranks, so tied scores count one half; equals
  `sklearn.metrics.roc_auc_score`.
* `youden_threshold`: the cut on *training* scores that maximizes sensitivity + specificity - 1.
* `threshold_metrics`: accuracy, sensitivity, specificity, precision, F1 at a cut (score >= t is positive).
* `bootstrap_auc`: percentile 95% interval over `n_boot` resamples of the **test set** (with
  replacement, seeded), as the MoCo-CXR transfer study reported its intervals (500 resamples).
* `summary`: mean, std and a bootstrap 95% interval of a list of per-trial values.
* `resampled_se`, `mean_interval`, `paired_differences`: the standard error and t-interval of a mean over
  trials that were each scored on their own bootstrap sample of the test pool (episodes + test-set
  sampling; the `uncertainty` label RESAMPLED), or, for results written before (no `auc_pool`), over
  training episodes only (FIXED).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

# Resamples of the test set for per-trial intervals (Sowrirajan et al. 2021, MoCo-CXR, used 500).
N_BOOTSTRAP = 500


def _check(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    return y, s


def _weighted_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC of each row of integer weights `w` (B, N) over the same (y, s): ties count one half.

    AUC = sum over score levels u of P_u * (N_below_u + N_u / 2) / (P * N), where P_u / N_u are the
    (weighted) positives / negatives at level u. Rows without both classes give NaN.
    """
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    w = w[:, order].astype(np.float64)  # (B, N)
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # first index of each level
    pos = np.add.reduceat(w * y_sorted, starts, axis=1)  # (B, U)
    neg = np.add.reduceat(w * (1 - y_sorted), starts, axis=1)  # (B, U)
    neg_below = np.cumsum(neg, axis=1) - neg  # (B, U) negatives strictly below each level
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (rank-based, ties = 1/2). NaN when only one class is present."""
    y, s = _check(y, s)
    return float(_weighted_auc(y, s, np.ones((1, y.size)))[0])


def bootstrap_indices(n: int, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """(n_boot, n) row indices drawn with replacement; the exact draws `bootstrap_auc` uses."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_auc_samples(y: np.ndarray, s: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """AUC of each of `n_boot` test-set resamples, (n_boot,); NaN for resamples missing a class."""
    y, s = _check(y, s)
    idx = bootstrap_indices(y.size, n_boot, seed)  # (B, N)
    flat = (idx + np.arange(n_boot)[:, None] * y.size).ravel()
    counts = np.bincount(flat, minlength=n_boot * y.size).reshape(n_boot, y.size)  # (B, N) multiplicities
    return _weighted_auc(y, s, counts)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of finite samples; (nan, nan) when there are none."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(x, [a, 1.0 - a])
    return float(lo), float(hi)


def bootstrap_auc(
    y: np.ndarray, s: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile `level` interval of the AUC over `n_boot` resamples of the test set.

    Resamples that happen to miss a class (possible only with tiny test sets) are dropped.
    """
    return percentile_interval(bootstrap_auc_samples(y, s, n_boot, seed), level)


def youden_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """Cut maximizing Youden's J = sensitivity + specificity - 1 on (training) scores.

    Candidates are the midpoints between consecutive distinct scores (plus one below the minimum and
    one above the maximum); a score >= the cut is called positive. When several cuts tie (always the
    case for perfectly separated training scores), the middle of the tied candidates is taken, so the
    cut sits in the middle of the gap between the classes rather than against one of them.
    """
    y, s = _check(y, s)
    if y.min() == y.max():
        raise ValueError("Youden's threshold needs both positive and negative examples")
    u = np.unique(s)
    cuts = np.r_[u[0] - 1.0, (u[1:] + u[:-1]) / 2.0, u[-1] + 1.0]  # (C,)
    pred = s[None, :] >= cuts[:, None]  # (C, N)
    sens = (pred & (y == 1)).sum(1) / (y == 1).sum()
    spec = (~pred & (y == 0)).sum(1) / (y == 0).sum()
    j = sens + spec
    best = np.flatnonzero(j >= j.max() - 1e-12)
    return float(cuts[best[len(best) // 2]])


def threshold_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, precision and F1 with `s >= threshold` called positive.

    Undefined ratios (e.g. precision when nothing is called positive) are NaN, not 0.
    """
    y, s = _check(y, s)
    pred = s >= threshold
    tp = float((pred & (y == 1)).sum())
    fp = float((pred & (y == 0)).sum())
    tn = float((~pred & (y == 0)).sum())
    fn = float((~pred & (y == 1)).sum())

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else math.nan

    return {
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def summary(values, n_boot: int = N_BOOTSTRAP, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean, sample std (ddof=1; 0 for a single value) and a percentile bootstrap interval of the mean.

    The interval resamples the values themselves (e.g. the per-trial AUCs), so it describes how well
    the mean over trials is pinned down -- not the test-set uncertainty of any one trial.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    means = x[bootstrap_indices(x.size, n_boot, seed)].mean(axis=1)  # (B,)
    lo, hi = percentile_interval(means, level)
    return {
        "n": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "ci_low": lo,
        "ci_high": hi,
    }


# How a sweep's uncertainty was computed (the `uncertainty` field of summary.csv, config.json and paired rows).
RESAMPLED = "test patients resampled per trial + training episodes"
FIXED = "test split fixed: episode variance only"  # every result written before the per-trial test sample


def uncertainty_of(trials) -> str:
    """RESAMPLED when the trials carry `auc_pool` (the AUC on the whole test pool) for every row, else FIXED."""
    return RESAMPLED if "auc_pool" in trials and len(trials) and trials["auc_pool"].notna().all() else FIXED


def uncertainty_text(method: str) -> str:
    """One sentence saying what a sweep's intervals cover: the same words on every page, report and card."""
    if method == RESAMPLED:
        return (f"Uncertainty: {RESAMPLED}. Each trial draws its own training episode and its own patient-level "
                "bootstrap sample of the test set (the same for every init of the trial); SE = sqrt(var(d)/trials + "
                "the test-set variance the trials share, from 100 patient resamples scored by every trial), the 95% "
                "interval d ± t(trials-1)·SE; wins = trials with d > 0.")
    return (f"Uncertainty: {FIXED} (written before test sets were resampled): the SE covers the draw of the "
            "training images on one fixed test set, not how the result would change with another test set.")


def resampled_se(x, pool, boot=None) -> float:
    """Standard error of mean(x) when trial t's x_t is measured on its own bootstrap sample of one test pool.

    x (J,): per-trial values (an AUC or a paired AUC difference) on each trial's test sample;
    pool (J,): the same on the whole test pool. Model: x_t = mu + P + e_t + b_t, with P the test pool's
    deviation from the population (shared by every trial), e_t the training episode's deviation and b_t
    the bootstrap deviation of the trial's sample, var(b) ~ var(P) (the bootstrap principle). Then
    var(mean x) = var(P) + var(x)/J (law of total variance), estimated as

        SE^2 = s^2(x) / J + mean((x - pool)^2)

    The naive s(x)/sqrt(J) leaves out var(P): trials that share test images are correlated, the point
    of the corrected resampled t-test (Nadeau & Bengio 2003; Bouckaert & Frank 2004). NaN for J < 2.

    That bound treats P as fully shared by the trials; with few-shot models that differ from trial to
    trial part of it is not (P_t = S + I_t), and it over-covers. With `boot` (J, B): the same values on B
    test resamples *shared by every trial* (episodes.shared_test_counts; a two-way bootstrap, Davison &
    Hinkley 1997 sec. 3.8), var(S) is estimated directly: v_mean = var_b(mean_t boot), v_each =
    mean_t var_b(boot_t), var(I) = (v_each - v_mean) J/(J-1), and

        SE^2 = s^2(x) / J + max(0, v_mean - var(I) / J)
    """
    x, pool = np.asarray(x, dtype=np.float64), np.asarray(pool, dtype=np.float64)
    if x.size < 2:
        return math.nan
    if boot is None:
        return float(np.sqrt(x.var(ddof=1) / x.size + np.mean((x - pool) ** 2)))
    boot = np.asarray(boot, dtype=np.float64)
    boot = boot[:, np.isfinite(boot).all(axis=0)]  # resamples missing a class in some trial are dropped
    if boot.shape[1] < 2:
        return float(np.sqrt(x.var(ddof=1) / x.size + np.mean((x - pool) ** 2)))
    j = x.size
    v_mean = boot.mean(axis=0).var(ddof=1)
    v_ind = max(0.0, (boot.var(axis=1, ddof=1).mean() - v_mean) * j / (j - 1))
    return float(np.sqrt(x.var(ddof=1) / j + max(0.0, v_mean - v_ind / j)))


def t_interval(mean: float, se: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """mean -+ t_{n-1, (1+level)/2} * se (Student t, n-1 degrees of freedom); (nan, nan) when se is NaN."""
    from scipy.stats import t as student_t

    if not (se == se) or n < 2:
        return math.nan, math.nan
    q = float(student_t.ppf(0.5 + level / 2.0, n - 1))
    return mean - q * se, mean + q * se


def mean_interval(x, pool=None, boot=None, level: float = 0.95,
                  bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, float]:
    """Mean, SE and `level` t-interval of per-trial values x (J,): `resampled_se` when `pool` (the same
    trials on the whole test pool; `boot` (J, B) on the shared resamples) is given, else the episode-only
    s(x)/sqrt(J). The interval is clipped to `bounds`, the values' possible range (AUC: [0, 1]; a
    difference of AUCs: [-1, 1]): with few trials the t quantile can otherwise reach past it."""
    x = np.asarray(x, dtype=np.float64)
    n = int(x.size)
    if pool is not None:
        se = resampled_se(x, pool, boot)
    else:
        se = float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else math.nan
    m = float(x.mean()) if n else math.nan
    lo, hi = t_interval(m, se, n, level)
    if lo == lo:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return {"mean": m, "se": se, "ci_low": lo, "ci_high": hi}


def paired_differences(trials, baseline: str = "random") -> list[dict]:
    """Per (finding, mode, shots, init != baseline): mean AUC, mean paired difference d to `baseline`, its SE,
    95% interval and wins.

    `trials`: a sweep's trials DataFrame (columns finding, init, mode, shots, trial, auc; `auc_pool` in
    sweeps that score each trial on its own test sample). Trial t of a (finding, mode, shots) trains every
    init on the same images and scores it on the same test sample (engine.fewshot.sweep), so
    d_t = AUC_init,t - AUC_baseline,t is a paired difference. With `auc_pool`, SE = `resampled_se`
    (episodes and test-set sampling); without it (results written before), SE = sd(d)/sqrt(n), episode
    variance only, and the row says so in `uncertainty` (RESAMPLED / FIXED). ci_low/ci_high: d -+ t_{n-1} SE.
    wins = #(d_t > 0). Trials where either AUC is missing are left out. NaN SE for one trial.
    The interval is floored (`floor_interval`, difference=True) with the trials' test counts (`trial_test_counts`):
    `ci_note` says when that widened it, `n_test_pos` / `n_test_neg` are the counts used.
    Raises ValueError when `baseline` is not among the inits.
    """
    rows = []
    t = trials.copy()
    if "mode" not in t:
        t["mode"] = "probe"
    method = uncertainty_of(t)
    values = ["auc", "auc_pool"] if method == RESAMPLED else ["auc"]
    piv = t.pivot_table(index=["finding", "mode", "shots", "trial"], columns="init", values=values)
    if baseline not in piv["auc"].columns:
        inits = ", ".join(map(str, piv["auc"].columns))
        raise ValueError(f"baseline init {baseline!r} is not in the trials (inits: {inits})")
    base_rows = {k: r.drop_duplicates("trial").set_index("trial")  # the reference's rows: the trials' test counts
                 for k, r in t[t["init"] == baseline].groupby(["finding", "mode", "shots"])}
    for (finding, mode, shots), g in piv.groupby(level=["finding", "mode", "shots"]):
        base = g[("auc", baseline)].to_numpy(float)
        for init in [c for c in g["auc"].columns if c != baseline]:
            a = g[("auc", init)].to_numpy(float)
            ok = ~(np.isnan(a) | np.isnan(base))
            d = a[ok] - base[ok]
            if not len(d):
                continue
            pool = boot = None
            if method == RESAMPLED:
                pool = (g[("auc_pool", init)].to_numpy(float) - g[("auc_pool", baseline)].to_numpy(float))[ok]
                boot = _paired_boot(t, (finding, mode, shots), init, baseline, g.index.get_level_values("trial")[ok])
            st = mean_interval(d, pool, boot, bounds=(-1.0, 1.0))
            rows_t = g.index.get_level_values("trial")[ok]
            n_pos, n_neg, balanced = trial_test_counts(base_rows[(finding, mode, shots)].reindex(rows_t))
            fl = floor_interval(st["mean"], st["ci_low"], st["ci_high"], n_pos, n_neg, difference=True,
                                assumed_balanced=balanced)
            rows.append({"finding": finding, "mode": mode, "shots": int(shots), "init": init, "n": int(len(d)),
                         "auc": float(a[ok].mean()), "auc_random": float(base[ok].mean()), "reference": baseline,
                         "diff": st["mean"], "se": st["se"], "ci_low": fl.low, "ci_high": fl.high,
                         "ci_note": fl.note, "n_test_pos": n_pos, "n_test_neg": n_neg,
                         "wins": int((d > 0).sum()), "uncertainty": method})
    return rows


def _paired_boot(t, group: tuple, init: str, baseline: str, trials) -> np.ndarray | None:
    """(J, B) paired differences on the shared test resamples (`auc_boot`), in `trials` order; None without."""
    from engine.fewshot.trials import boot_matrix

    if "auc_boot" not in t:
        return None
    g = t[(t["finding"] == group[0]) & (t["mode"] == group[1]) & (t["shots"] == group[2])]
    mats = []
    for name in (init, baseline):
        r = g[g["init"] == name].drop_duplicates("trial").set_index("trial").reindex(list(trials))
        mats.append(boot_matrix(r["auc_boot"]) if r["auc_boot"].notna().all() else None)
    if any(m is None for m in mats) or mats[0].shape != mats[1].shape:
        return None
    return mats[0] - mats[1]


# ------------------------------------------------------------------ small-sample floor of AUC intervals

# A floor that moves an end by less than this is not called a widening (the tables print 3 decimals).
WIDEN_TOL = 5e-4
WIDENED_MARK = " †"  # after a table cell whose interval the floor widened; its note is said once under the table


def newcombe_variance(theta, n_pos: float, n_neg: float):
    """Hanley & McNeil's (1982) variance of an AUC estimate at true value `theta`, with both (m - 1) and
    (n - 1) replaced by N* = (m + n)/2 - 1 (Newcombe 2006, Part 2, eq. for methods 4 and 5):

        V(theta) = theta (1 - theta) [1 + N* ((1 - theta)/(2 - theta) + theta/(1 + theta))] / (m n)

    m = n_pos, n = n_neg (counts; non-integer means allowed). Symmetric in theta <-> 1 - theta and m <-> n."""
    t = np.asarray(theta, dtype=np.float64)
    n_star = (n_pos + n_neg) / 2.0 - 1.0
    return t * (1 - t) * (1 + n_star * ((1 - t) / (2 - t) + t / (1 + t))) / (n_pos * n_neg)


def _newcombe_lower(a: float, n_pos: float, n_neg: float, z: float) -> float:
    """The lower root of a - theta = z sqrt(V(theta)) on [0, a] (0 when a = 0)."""
    from scipy.optimize import brentq

    if a <= 0.0:
        return 0.0

    def q(t: float) -> float:
        return a - t - z * math.sqrt(max(0.0, float(newcombe_variance(t, n_pos, n_neg))))

    b = a
    while q(b) >= 0.0 and b > 0.0:  # V(a) = 0 at a = 1: step below a to where q < 0 (q ~ -z sqrt(V) there)
        b = a - max(1e-12, 2.0 * (a - b))
    return 0.0 if b <= 0.0 else float(brentq(q, 0.0, b, xtol=1e-12))


def auc_small_sample_interval(a: float, n_pos: float, n_neg: float, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's (2006) recommended interval for an AUC (the Mann-Whitney theta) from its estimate `a` and the
    numbers of positives m = n_pos and negatives n = n_neg: method 5 of R. G. Newcombe, "Confidence intervals
    for an effect size measure based on the Mann-Whitney statistic. Part 2: asymptotic methods and
    evaluation", Statistics in Medicine 25:559-573 (2006). A Wilson-score-type interval: the set of theta with

        (a - theta)^2 <= z^2 V(theta),   V = `newcombe_variance` (Hanley-McNeil with N* = (m + n)/2 - 1),

    z the normal (1 + level)/2 quantile. V is evaluated at theta, not at a, so the interval does not collapse
    at a = 0 or 1 (there a Wald or bootstrap interval has zero width) and stays inside [0, 1]. The limits are
    the roots of a quartic in theta; solved here by Brent's method on [0, a] (the upper limit by the
    symmetry U(a) = 1 - L(1 - a)). For large m, n it approaches the Hanley-McNeil Wald interval a -+ z sqrt(V(a)).

    Returns (low, high); (nan, nan) when a is NaN or a count is below 1. Raises ValueError for a outside [0, 1].
    """
    from scipy.stats import norm

    if not (a == a) or not (n_pos >= 1 and n_neg >= 1):
        return math.nan, math.nan
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"an AUC lies in [0, 1]; got {a}")
    z = float(norm.ppf(0.5 + level / 2.0))
    return _newcombe_lower(a, n_pos, n_neg, z), 1.0 - _newcombe_lower(1.0 - a, n_pos, n_neg, z)


def difference_floor(n_pos: float, n_neg: float, level: float = 0.95) -> float:
    """Smallest half-width allowed for a difference d of two AUCs measured on m = n_pos positives and n = n_neg
    negatives: w(m, n) = 1 - L, L the lower limit of `auc_small_sample_interval` at AUC = 1, i.e. the width of
    the narrowest interval any AUC on these counts can have.

    Why this value: when both AUCs are 1 (d = 0, the case where resampling gives d's interval zero width),
    combining the two AUCs' Newcombe intervals by the MOVER rule (Zou & Donner 2008, Statistics in Medicine
    27:1693; Newcombe's square-and-add method for differences) gives exactly d -+ w, whatever the correlation
    of the two AUCs, since one of the two terms of each limit is zero. Elsewhere it is only a floor: the
    paired interval over trials is normally wider, so the floor guards against a collapse to a point without
    undoing what pairing gains (a width from the counts alone cannot know the pairs' correlation). w shrinks
    like 1/min(m, n): 0.04 at 50 + 50 test images. NaN when a count is below 1."""
    lo, _ = auc_small_sample_interval(1.0, n_pos, n_neg, level)
    return 1.0 - lo if lo == lo else math.nan


def _count_words(x: float) -> str:
    return f"{int(round(x))}" if abs(x - round(x)) < 0.05 else f"about {x:.1f}"


def floor_note(n_pos: float, n_neg: float, low: float, high: float, difference: bool = False,
               assumed_balanced: bool = False) -> str:
    """The sentence saying that an interval was widened to the small-sample floor (`floor_interval`)."""
    counts = (f"{_count_words(n_pos + n_neg)} test images (class split not recorded; an even split, the most "
              "favourable, assumed)" if assumed_balanced else
              f"{_count_words(n_pos)} positive and {_count_words(n_neg)} negative test images")
    if difference:
        return (f"Interval widened: with {counts} no difference of two AUCs can be known more precisely than "
                f"d ± {(high - low) / 2:.3f} (the narrowest AUC interval these counts allow, Newcombe 2006)")
    return (f"Interval widened: with {counts} no AUC can be known more precisely than this (Newcombe's 2006 "
            f"small-sample interval [{low:.3f}, {high:.3f}])")


@dataclass(frozen=True)
class Floored:
    """An interval after `floor_interval`: the interval to show, whether the floor widened it, and why."""

    low: float
    high: float
    widened: bool
    note: str  # floor_note when widened, else ""


def floor_interval(estimate: float, low: float, high: float, n_pos: float, n_neg: float, *,
                   difference: bool = False, level: float = 0.95, assumed_balanced: bool = False) -> Floored:
    """The one rule for every AUC interval shown: the hull of [low, high] and the small-sample interval
    from the test set's class counts (m = n_pos positives, n = n_neg negatives; for a mean over trials the
    per-trial counts, mean over trials).

    AUC (`difference` False): hull with `auc_small_sample_interval(estimate, m, n)` (Newcombe 2006, method 5).
    Paired difference d of two AUCs on the same images (`difference` True): hull with
    [d - w, d + w] clipped to [-1, 1], w = `difference_floor(m, n)` (its docstring says why).
    An interval that is NaN (e.g. one trial: no SE) or counts below 1 are returned unchanged (widened False).
    `widened` is True when an end moved by more than WIDEN_TOL; `note` then says so in words."""
    if not (low == low and high == high) or not (n_pos >= 1 and n_neg >= 1) or not (estimate == estimate):
        return Floored(low, high, False, "")
    if difference:
        w = difference_floor(n_pos, n_neg, level)
        f_lo, f_hi = max(-1.0, estimate - w), min(1.0, estimate + w)
    else:
        f_lo, f_hi = auc_small_sample_interval(min(1.0, max(0.0, estimate)), n_pos, n_neg, level)
    lo, hi = min(low, f_lo), max(high, f_hi)
    widened = lo < low - WIDEN_TOL or hi > high + WIDEN_TOL
    shown = (estimate - w, estimate + w) if difference else (f_lo, f_hi)  # the note names d -+ w unclipped
    note = floor_note(n_pos, n_neg, *shown, difference, assumed_balanced) if widened else ""
    return Floored(float(lo), float(hi), widened, note)


def trial_test_counts(trials) -> tuple[float, float, bool]:
    """(positives, negatives, assumed_balanced): the test-set class counts behind a group of trial rows, mean over
    the trials (each trial's own test sample; `n_test_pos` and `n_test` columns). Rows written before
    `n_test_pos` was recorded give n_test / 2 each and True: for a fixed total the even split gives the narrowest
    small-sample interval (m n is largest), so the floor is then never wider than the true one. (nan, nan, False)
    without `n_test`."""
    if "n_test" not in trials or not len(trials) or not trials["n_test"].notna().all():
        return math.nan, math.nan, False
    n = trials["n_test"].to_numpy(float)
    if "n_test_pos" in trials and trials["n_test_pos"].notna().all():
        pos = trials["n_test_pos"].to_numpy(float)
        return float(pos.mean()), float((n - pos).mean()), False
    return float(n.mean() / 2), float(n.mean() / 2), True


_QUOTED = re.compile(r" \(Newcombe's 2006 small-sample interval \[[^\]]*\]\)")  # floor_note's quoted interval


def interval_notes(notes) -> list[str]:
    """The distinct non-empty floor notes of a table's rows, in first-seen order (each said once under it).
    Notes that differ only in the small-sample interval they quote (cells with other AUCs on the same test
    counts) are said once, pointing at the marked cells instead of one cell's interval."""
    kept = [n for n in notes if isinstance(n, str) and n]
    if len({_QUOTED.sub("", n) for n in kept}) < len(set(kept)):
        kept = [_QUOTED.sub(" (Newcombe's 2006 small-sample interval, shown in the marked cells)", n) for n in kept]
    return list(dict.fromkeys(kept))
