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
            rows.append({"finding": finding, "mode": mode, "shots": int(shots), "init": init, "n": int(len(d)),
                         "auc": float(a[ok].mean()), "auc_random": float(base[ok].mean()), "reference": baseline,
                         "diff": st["mean"], "se": st["se"], "ci_low": st["ci_low"], "ci_high": st["ci_high"],
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
