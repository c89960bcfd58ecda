"""Will more labels help? A learning curve from the user's own labeled images and a cautious extrapolation.

**The curve.** For each fraction f of the labeled images (default 25/50/75/100%), `repeats` stratified
random subsets of n = f * N images (at least 3 per class) are drawn; each subset's AUC is the pooled
out-of-fold AUC of a k-fold cross-validated linear probe on frozen backbone features (k = min(5, smaller
class)), the same procedure as the Classifier's estimate. The point's value is the mean over subsets and its
95% interval the mean +- 1.96 standard errors across subsets (at 100% the subsets differ only in their folds,
so that interval is the CV noise alone).

**The extrapolation.** An inverse power law AUC(n) = a - b n^(-c) (a <= 1 the plateau, b >= 0, c > 0) is
fitted by weighted least squares (weights 1 / SE^2) -- the learning-curve model of Figueroa, Zeng-Treitler,
Kandula & Ngo 2012 ("Predicting sample size required for classification performance", BMC Med Inform
Decis Mak 12:8), and the power law of Hestness et al. 2017 ("Deep learning scaling is predictable,
empirically", arXiv:1712.00409). Its 95% range at n + extra: the 2.5-97.5 percentiles of refits on 200
bootstrap resamples of the subsets at each point, widened by 1.96 SD of the subset AUCs at the largest
fraction below 100% (how much one CV AUC varies with the images drawn; without it the range covered the truth
in 1 of 4 trusted trials of bench/learning_curve_check.py).
**It is refused** (`trusted` False with the reason) when fewer than
3 distinct sizes were measured, the largest size is under twice the smallest, the curve is flat within its
noise (the rise from the smallest to the largest size is under 2 standard errors), the fit fails, or the
extrapolation reaches beyond twice the labeled images.
"""
from __future__ import annotations

import math
import threading
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from engine.events import OnEvent, check_stop, emit
from engine.fewshot.metrics import auc

__all__ = ["CurvePoint", "Extrapolation", "LearningCurve", "extrapolate", "fit_power_law", "learning_curve",
           "power_law"]

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
MIN_PER_CLASS = 3
FIT_BOOTSTRAP = 200


@dataclass(frozen=True)
class CurvePoint:
    n: int  # images in each subset
    auc: float  # mean over subsets
    se: float  # standard error of that mean across subsets
    low: float
    high: float
    aucs: tuple[float, ...]  # each subset's CV AUC


@dataclass(frozen=True)
class Extrapolation:
    """The power-law fit and its prediction at `n_target`, or why it is not trusted."""

    trusted: bool
    reason: str  # why not trusted ("" when trusted)
    a: float = math.nan
    b: float = math.nan
    c: float = math.nan
    n_now: int = 0
    n_target: int = 0
    auc_now: float = math.nan
    auc_target: float = math.nan
    low: float = math.nan
    high: float = math.nan

    def sentence(self, extra: int) -> str:
        if not self.trusted:
            return f"No extrapolation: {self.reason}."
        return (f"Labelling {extra} more images like these would probably raise the AUC from {self.auc_now:.2f} to "
                f"about {self.auc_target:.2f} (95% range {self.low:.2f}-{self.high:.2f}; an inverse power law fitted "
                f"to your learning curve, a rough guide, not a promise).")


@dataclass(frozen=True)
class LearningCurve:
    points: tuple[CurvePoint, ...]
    extrapolation: Extrapolation
    extra: int  # the extrapolation's added images
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"points": [asdict(p) for p in self.points], "extrapolation": asdict(self.extrapolation),
                "extra": self.extra, "warnings": list(self.warnings),
                "sentence": self.extrapolation.sentence(self.extra)}


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """AUC(n) = a - b n^(-c) (Figueroa et al. 2012)."""
    return a - b * np.power(np.asarray(n, dtype=np.float64), -c)


def _subset(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified random rows (about n, at least MIN_PER_CLASS per class) keeping the class mix."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n_pos = int(np.clip(round(n * len(pos) / len(y)), MIN_PER_CLASS, len(pos)))
    n_neg = int(np.clip(n - n_pos, MIN_PER_CLASS, len(neg)))
    return np.sort(np.r_[rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])


def cv_probe_auc(X: np.ndarray, y: np.ndarray, seed: int, C: float | None = None) -> float:
    """Pooled out-of-fold AUC of a linear probe (engine.fewshot.probe) under stratified k-fold CV,
    k = min(5, smaller class). X (N, D) features, y (N,) 0/1."""
    from engine.fewshot.classifier.estimate import cv_folds
    from engine.fewshot.probe import DEFAULT_C, fit_probe

    k = min(5, int((y == 1).sum()), int((y == 0).sum()))
    oof = np.zeros(len(y))
    for tr, te in cv_folds(y, None, k, seed):
        oof[te] = fit_probe(X[tr], y[tr], C=DEFAULT_C if C is None else C, seed=seed).decision_function(X[te])
    return auc(y, oof)


def _points(X: np.ndarray, y: np.ndarray, fractions: Sequence[float], repeats: int, seed: int,
            on_event: OnEvent | None, stop: threading.Event | None) -> list[CurvePoint]:
    rng = np.random.default_rng(seed)
    sizes = sorted({max(2 * MIN_PER_CLASS, int(round(f * len(y)))) for f in fractions})
    out = []
    for i, n in enumerate(sizes):
        aucs = []
        for r in range(repeats):
            check_stop(stop)
            rows = _subset(y, n, rng) if n < len(y) else np.arange(len(y))
            aucs.append(cv_probe_auc(X[rows], y[rows], seed + r))
        a = np.asarray(aucs)
        se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
        out.append(CurvePoint(n, float(a.mean()), se, float(a.mean() - 1.96 * se), float(a.mean() + 1.96 * se),
                              tuple(float(v) for v in a)))
        emit(on_event, step=i + 1, total=len(sizes), message=f"learning curve: {n} images, AUC {a.mean():.2f}")
    return out


def fit_power_law(n: Sequence[float], aucs: Sequence[float], se: Sequence[float] | None = None
                  ) -> tuple[float, float, float]:
    """(a, b, c) of AUC(n) = a - b n^-c by weighted least squares (scipy curve_fit; bounds a in [0.5, 1],
    b in [0, 50], c in [0.01, 3]). Raises RuntimeError when the fit does not converge."""
    from scipy.optimize import curve_fit

    n, y = np.asarray(n, dtype=np.float64), np.asarray(aucs, dtype=np.float64)
    sigma = None if se is None else np.maximum(np.asarray(se, dtype=np.float64), 1e-3)
    p0 = (min(0.999, y.max() + 0.05), max(1e-3, (y.max() - y.min()) * n.min() ** 0.5 * 2), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (a, b, c), _ = curve_fit(power_law, n, y, p0=p0, sigma=sigma, bounds=([0.5, 0.0, 0.01], [1.0, 50.0, 3.0]),
                                 maxfev=5000)
    return float(a), float(b), float(c)


def _refusal(points: Sequence[CurvePoint], n_target: int) -> str:
    """Why the curve cannot be extrapolated, or ''."""
    ns = [p.n for p in points]
    if len(set(ns)) < 3:
        return f"only {len(set(ns))} sizes were measured; a power law needs at least 3"
    if max(ns) < 2 * min(ns):
        return "the sizes span less than a factor of 2"
    first, last = points[0], points[-1]
    noise = math.hypot(first.se if math.isfinite(first.se) else 0.0, last.se if math.isfinite(last.se) else 0.0)
    if last.auc - first.auc < 2 * max(noise, 1e-3):
        return (f"the curve is flat within its noise (AUC {first.auc:.2f} at {first.n} images, {last.auc:.2f} at "
                f"{last.n}), which is common with under ~100 labeled images; it says neither that more labels "
                "will help nor that they will not")
    if n_target > 2 * max(ns):
        return f"{n_target} images is more than twice the {max(ns)} measured; too far to extrapolate"
    return ""


def extrapolate(points: Sequence[CurvePoint], extra: int, seed: int = 0) -> Extrapolation:
    """The fitted power law's AUC at (largest n) + extra with a bootstrap range, or the reason not to trust it."""
    n_now = max(p.n for p in points)
    n_target = n_now + int(extra)
    why = _refusal(points, n_target)
    if why:
        return Extrapolation(False, why, n_now=n_now, n_target=n_target)
    ns = np.array([p.n for p in points], dtype=np.float64)
    try:
        a, b, c = fit_power_law(ns, [p.auc for p in points], [p.se for p in points])
    except (RuntimeError, ValueError) as e:
        return Extrapolation(False, f"the power law did not fit ({e})", n_now=n_now, n_target=n_target)
    rng = np.random.default_rng(seed)
    preds = []
    for _ in range(FIT_BOOTSTRAP):
        means = [float(np.mean(rng.choice(p.aucs, len(p.aucs)))) for p in points]
        try:
            preds.append(power_law(np.array([n_target]), *fit_power_law(ns, means, [p.se for p in points]))[0])
        except (RuntimeError, ValueError):
            continue
    if len(preds) < FIT_BOOTSTRAP // 2:
        return Extrapolation(False, "the power law fit is unstable under resampling", a, b, c, n_now, n_target)
    lo, hi = np.quantile(preds, [0.025, 0.975])
    # + the spread of one CV AUC at this size (which images get labeled, which folds): the fit's range alone
    # covered the truth in 1 of 4 trusted NIH trials (bench/learning_curve_check.py)
    spread = 1.96 * float(np.std(points[-2].aucs, ddof=1)) if len(points[-2].aucs) > 1 else 0.0
    lo, hi = max(0.0, lo - spread), min(1.0, hi + spread)
    now = float(power_law(np.array([n_now]), a, b, c)[0])
    return Extrapolation(True, "", a, b, c, n_now, n_target, now, float(power_law(np.array([n_target]), a, b, c)[0]),
                         float(lo), float(hi))


def learning_curve(X: np.ndarray, y: np.ndarray, fractions: Sequence[float] = FRACTIONS, repeats: int = 5,
                   extra: int = 20, seed: int = 0, on_event: OnEvent | None = None,
                   stop: threading.Event | None = None) -> LearningCurve:
    """The learning curve of features X (N, D) with 0/1 labels y (N,) and its extrapolation to N + extra.
    Raises ValueError when a class has fewer than 2 * MIN_PER_CLASS images (no subsets to compare)."""
    y = np.asarray(y, dtype=np.float64)
    if min((y == 1).sum(), (y == 0).sum()) < 2 * MIN_PER_CLASS:
        raise ValueError(f"a learning curve needs at least {2 * MIN_PER_CLASS} labeled images of each class")
    pts = _points(np.asarray(X), y, fractions, repeats, seed, on_event, stop)
    ex = extrapolate(pts, extra, seed)
    warn = [] if ex.trusted else [f"no extrapolation: {ex.reason}"]
    return LearningCurve(tuple(pts), ex, int(extra), tuple(warn))
