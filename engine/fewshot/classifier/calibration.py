"""Calibration (logit -> probability) and operating points (cuts on the calibrated probability).

Calibration is fitted on the out-of-fold logits of the cross-validation: `platt` (Platt 1999, smoothed
targets, slope clamped at >= 0) or `isotonic` (Zadrozny & Elkan 2002 via scikit-learn). Operating points
are chosen on the calibrated out-of-fold probabilities: Youden's J, equal sensitivity and specificity, a
target sensitivity or a target specificity (their intervals: `engine.fewshot.classifier.operating`). The package docstring (`engine.fewshot.classifier`) gives the reasons and sources.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import expit

from engine.fewshot.classifier.checks import bounded_list, finite_number

CALIBRATIONS = ("platt", "isotonic")
TARGETS = ("youden", "equal", "sensitivity", "specificity")
RULE_NAMES = {"youden": "Youden's J (highest sensitivity + specificity)", "equal": "equal sensitivity and specificity",
              "sensitivity": "target sensitivity", "specificity": "target specificity"}


@dataclass(frozen=True)
class Calibration:
    """Logit -> probability. `platt`: expit(a * s + b); `isotonic`: linear interpolation through the
    breakpoints (x, y), clipped at the ends; `none` (files of format v1): expit(s)."""

    method: str
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def __call__(self, s: np.ndarray) -> np.ndarray:
        """Probabilities (N,) float64 for logits s (N,)."""
        s = np.asarray(s, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(s, self.x, self.y)
        if self.method == "platt":
            return expit(self.a * s + self.b)
        return expit(s)

    @property
    def label(self) -> str:
        return {"platt": "Platt scaling (Platt 1999)", "isotonic": "isotonic regression (Zadrozny & Elkan 2002)",
                "none": "none (logistic of the raw score; saved by an older version)"}[self.method]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "a": self.a, "b": self.b, "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, d: Any) -> "Calibration":
        """Validated: raises ValueError for an unknown method or non-finite / out-of-range parameters."""
        if not isinstance(d, dict) or d.get("method") not in (*CALIBRATIONS, "none"):
            raise ValueError(f"calibration must be an object with method one of {', '.join(CALIBRATIONS)}")
        a, b = finite_number(d.get("a", 1.0), "calibration a"), finite_number(d.get("b", 0.0), "calibration b")
        x = tuple(finite_number(v, "calibration x") for v in bounded_list(d.get("x", []), "calibration x", 100_000))
        y = tuple(finite_number(v, "calibration y", 0.0, 1.0) for v in bounded_list(d.get("y", []), "calibration y", 100_000))
        if d["method"] == "isotonic" and (len(x) != len(y) or len(x) < 1 or np.any(np.diff(x) < 0)
                                          or np.any(np.diff(y) < 0)):
            raise ValueError("isotonic calibration needs increasing breakpoints x and y of the same length")
        return cls(d["method"], a, b, x, y)


def fit_calibration(logits: np.ndarray, y: np.ndarray, method: str = "platt", weights: np.ndarray | None = None
                    ) -> Calibration:
    """Fit a logit -> probability map on out-of-fold logits (M,) and labels y (M,) 0/1 (weights (M,), default 1).

    `platt`: Platt (1999) maximum likelihood with smoothed targets, N+ / N- = the weighted class counts;
    slope clamped at 0 (see engine.fewshot.classifier). `isotonic`: Zadrozny & Elkan (2002) via
    sklearn.isotonic.IsotonicRegression, clipped to [1/(N+2), (N+1)/(N+2)]. Raises ValueError for an
    unknown method, non-finite logits or one class.
    """
    s = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}; got {method!r}")
    if not np.isfinite(s).all():
        raise ValueError("cannot calibrate: some cross-validated scores are NaN or infinite")
    n_pos, n_neg = float(w[y == 1].sum()), float(w[y == 0].sum())
    if n_pos <= 0 or n_neg <= 0:
        raise ValueError("calibration needs both classes")
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        n = n_pos + n_neg
        iso = IsotonicRegression(y_min=1.0 / (n + 2), y_max=(n + 1) / (n + 2), out_of_bounds="clip")
        iso.fit(s, y, sample_weight=w)
        return Calibration("isotonic", x=tuple(map(float, iso.X_thresholds_)), y=tuple(map(float, iso.y_thresholds_)))
    return _fit_platt(s, y, w, n_pos, n_neg)


def _fit_platt(s: np.ndarray, y: np.ndarray, w: np.ndarray, n_pos: float, n_neg: float) -> Calibration:
    """Platt (1999) maximum likelihood on logits s (M,) with smoothed targets; slope bounded below by 0."""
    from scipy.optimize import minimize

    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1.0 / (n_neg + 2))  # Platt's smoothed targets
    mu = float(np.average(s, weights=w))
    sd = float(np.sqrt(np.average((s - mu) ** 2, weights=w))) or 1.0
    z = (s - mu) / sd  # conditioning only; a, b are mapped back below

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        u = theta[0] * z + theta[1]
        loss = np.sum(w * (np.logaddexp(0.0, u) - t * u))
        g = w * (expit(u) - t)
        return float(loss), np.array([np.sum(g * z), np.sum(g)])

    prior = math.log((n_pos + 1) / (n_neg + 1))
    res = minimize(nll, np.array([0.0, prior]), jac=True, method="L-BFGS-B", bounds=[(0.0, None), (None, None)])
    a_z, b_z = float(res.x[0]), float(res.x[1])
    return Calibration("platt", a=a_z / sd, b=b_z - a_z * mu / sd)


@dataclass(frozen=True)
class OperatingPoint:
    """A cut on the calibrated probability with its cross-validated sensitivity and specificity, and (when
    computed by `engine.fewshot.classifier.operating.with_intervals`) their 95% intervals as (low, high)."""

    rule: str  # "youden" | "equal" | "sensitivity" | "specificity"
    target: float | None  # the requested sensitivity / specificity (None for youden / equal)
    threshold: float  # probability >= threshold -> "suggests the finding"
    sensitivity: float
    specificity: float
    threshold_ci: tuple[float, float] | None = None  # where the rule puts the cut over repeats x bootstrap
    sensitivity_ci: tuple[float, float] | None = None  # sensitivity at `threshold` over repeats x bootstrap
    specificity_ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def name(self) -> str:
        """The rule in plain words, e.g. 'target sensitivity 90%'."""
        base = RULE_NAMES[self.rule]
        return f"{base} {self.target:.0%}" if self.target is not None else base

    def describe(self) -> str:
        def ci(v: tuple[float, float] | None, fmt: str) -> str:
            return f" (95% interval {v[0]:{fmt}} to {v[1]:{fmt}})" if v else ""

        return (f"{self.name}: cut-off {self.threshold:.3f}{ci(self.threshold_ci, '.3f')}; in cross-validation "
                f"{self.sensitivity:.0%}{ci(self.sensitivity_ci, '.0%')} of images with the finding were called "
                f"positive (sensitivity) and {self.specificity:.0%}{ci(self.specificity_ci, '.0%')} of images "
                "without it were called negative (specificity)")


def operating_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cuts (C,), sensitivity (C,), specificity (C,)) for labels y (M,) and probabilities p (M,).

    Cuts: one below all values, the midpoints between consecutive distinct values, one above all
    (capped to [0, 1]); increasing, so sensitivity is non-increasing and specificity non-decreasing.
    """
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    u = np.unique(p)
    cuts = np.r_[max(0.0, u[0] - 1e-6), (u[1:] + u[:-1]) / 2.0, min(1.0, u[-1] + 1e-6)]
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    sens = 1.0 - np.searchsorted(pos, cuts, side="left") / max(len(pos), 1)  # share of positives >= cut
    spec = np.searchsorted(neg, cuts, side="left") / max(len(neg), 1)  # share of negatives < cut
    return cuts, sens, spec


def choose_operating_point(y: np.ndarray, p: np.ndarray, rule: str = "youden", target: float | None = None
                           ) -> OperatingPoint:
    """The cut for `rule` on calibrated OOF probabilities p (M,) with labels y (M,) (see engine.fewshot.classifier).

    youden: maximum sensitivity + specificity (ties: the middle candidate, as metrics.youden_threshold);
    equal: the smallest |sensitivity - specificity| (ties: the highest sum, then the middle candidate);
    sensitivity: the highest cut with sensitivity >= target; specificity: the lowest cut with
    specificity >= target. Raises ValueError for an unknown rule or a target outside (0, 1].
    """
    if rule not in TARGETS:
        raise ValueError(f"operating point rule must be one of {', '.join(TARGETS)}; got {rule!r}")
    cuts, sens, spec = operating_curve(y, p)
    if rule == "youden":
        j = sens + spec
        best = np.flatnonzero(j >= j.max() - 1e-12)
        i = int(best[len(best) // 2])
        target = None
    elif rule == "equal":
        gap = np.abs(sens - spec)
        near = np.flatnonzero(gap <= gap.min() + 1e-12)
        j = sens[near] + spec[near]
        best = near[j >= j.max() - 1e-12]
        i = int(best[len(best) // 2])
        target = None
    else:
        if target is None or not (0.0 < float(target) <= 1.0):
            raise ValueError(f"target {rule} must be a number in (0, 1], e.g. 0.9; got {target!r}")
        target = float(target)
        if rule == "sensitivity":
            i = int(np.flatnonzero(sens >= target - 1e-12).max())  # the lowest cut always has sensitivity 1
        else:
            i = int(np.flatnonzero(spec >= target - 1e-12).min())  # the highest cut always has specificity 1
    return OperatingPoint(rule, target, float(cuts[i]), float(sens[i]), float(spec[i]))
