"""How sure the operating point is, and what it means at another prevalence.

**Intervals.** The cut-off of a rule (Youden's J, equal sensitivity and specificity, a target) is chosen
on the calibrated out-of-fold (OOF) probabilities of *all* cross-validation repeats pooled. Its 95%
interval, and those of the sensitivity and specificity at the chosen cut, come from `N_OP_BOOTSTRAP`
replicates, each a stratified bootstrap resample of the images (positives and negatives resampled
separately, so both classes stay) scored by *one* cross-validation repeat drawn at random: the spread
covers both which images happened to be labeled (the bootstrap; Efron & Tibshirani 1993, percentile
interval) and how the folds happened to fall (the repeat; row order and seed decide the folds). In each
replicate the rule picks its own cut (-> the cut-off's interval) and the *chosen* cut is applied
(-> sensitivity / specificity intervals).

**Prevalence.** A calibrated probability is right at the training mix of positives (its prevalence
pi). At another prevalence pi' the posterior odds scale by the prior odds ratio (Bayes' theorem; Saerens,
Latinne & Decaestecker 2002, "Adjusting the outputs of a classifier to new a priori probabilities",
Neural Computation 14(1), eq. 2.4):

    odds(p') = odds(p) * [pi' / (1 - pi')] / [pi / (1 - pi)].

Predictive values at sensitivity Se, specificity Sp and prevalence pi' (Altman & Bland 1994, BMJ 309:102):
PPV = Se pi' / (Se pi' + (1 - Sp)(1 - pi')), NPV = Sp (1 - pi') / (Sp (1 - pi') + (1 - Se) pi').
Their intervals come from the same replicates' sensitivity and specificity.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from engine.fewshot.classifier.calibration import OperatingPoint, choose_operating_point

N_OP_BOOTSTRAP = 1000
_LEVEL = (2.5, 97.5)


@dataclass(frozen=True)
class Replicates:
    """Per replicate (B,): the cut the rule would choose, and sensitivity / specificity at the chosen cut."""

    thresholds: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray


def replicates(y: np.ndarray, cv_probs: np.ndarray, op: OperatingPoint, n_boot: int = N_OP_BOOTSTRAP,
               seed: int = 0) -> Replicates:
    """Bootstrap x repeat replicates (see the module docstring) of operating point `op` for labels y (N,) 0/1
    and calibrated OOF probabilities cv_probs (R, N). Raises ValueError when a class is missing."""
    y = np.asarray(y).astype(int).ravel()
    P = np.atleast_2d(np.asarray(cv_probs, dtype=np.float64))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0 or P.shape[1] != len(y):
        raise ValueError("operating-point intervals need both classes and cv_probs (R, N) matching the labels")
    rng = np.random.default_rng(seed)
    thr, sens, spec = np.empty(n_boot), np.empty(n_boot), np.empty(n_boot)
    yy = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
    for b in range(n_boot):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        p = P[rng.integers(P.shape[0]), idx]
        thr[b] = choose_operating_point(yy, p, op.rule, op.target).threshold
        sens[b] = np.mean(p[: len(pos)] >= op.threshold)
        spec[b] = np.mean(p[len(pos):] < op.threshold)
    return Replicates(thr, sens, spec)


def interval(values: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval (low, high) of replicate values (B,)."""
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), _LEVEL)
    return float(lo), float(hi)


def with_intervals(op: OperatingPoint, y: np.ndarray, cv_probs: np.ndarray, n_boot: int = N_OP_BOOTSTRAP,
                   seed: int = 0) -> tuple[OperatingPoint, Replicates]:
    """`op` with threshold_ci, sensitivity_ci, specificity_ci filled in, and the replicates behind them."""
    rep = replicates(y, cv_probs, op, n_boot, seed)
    return dataclasses.replace(op, threshold_ci=interval(rep.thresholds), sensitivity_ci=interval(rep.sensitivity),
                               specificity_ci=interval(rep.specificity)), rep


def check_prevalence(prevalence: float) -> float:
    """The prevalence as a float in (0, 1); ValueError (saying what to enter) otherwise."""
    try:
        v = float(prevalence)
    except (TypeError, ValueError):
        raise ValueError(f"prevalence must be a number between 0 and 1 (e.g. 0.05 for 5%); "
                         f"got {prevalence!r}") from None
    if not 0.0 < v < 1.0:
        raise ValueError(f"prevalence must be between 0 and 1, exclusive (e.g. 0.05 for 5%); got {prevalence!r}")
    return v


def adjust_to_prevalence(p: np.ndarray | float, train_prevalence: float, prevalence: float) -> np.ndarray:
    """Probabilities (any shape) calibrated at `train_prevalence`, moved to `prevalence` by Bayes' odds
    adjustment (Saerens et al. 2002; module docstring). Both prevalences in (0, 1); ValueError otherwise."""
    a, b = check_prevalence(train_prevalence), check_prevalence(prevalence)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    ratio = (b / (1 - b)) / (a / (1 - a))
    odds = p / (1 - p) * ratio
    return odds / (1 + odds)


def predictive_values(sensitivity: np.ndarray | float, specificity: np.ndarray | float, prevalence: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(PPV, NPV) at `prevalence` in (0, 1) for sensitivity and specificity (same shapes; Altman & Bland 1994).
    A value whose denominator is 0 (no positive or no negative calls) is NaN."""
    q = check_prevalence(prevalence)
    se, sp = np.asarray(sensitivity, dtype=np.float64), np.asarray(specificity, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ppv = se * q / (se * q + (1 - sp) * (1 - q))
        npv = sp * (1 - q) / (sp * (1 - q) + (1 - se) * q)
    return ppv, npv


@dataclass(frozen=True)
class PredictiveValues:
    """PPV and NPV at one prevalence with 95% intervals (from the operating point's replicates)."""

    prevalence: float
    ppv: float
    npv: float
    ppv_ci: tuple[float, float]
    npv_ci: tuple[float, float]

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def describe(self, finding: str) -> str:
        f = finding.replace("_", " ")
        return (f"Where {self.prevalence:.0%} of patients have {f}: of the images called positive about "
                f"{self.ppv:.0%} (95% interval {self.ppv_ci[0]:.0%} to {self.ppv_ci[1]:.0%}) have it (PPV); of those "
                f"called negative about {self.npv:.0%} ({self.npv_ci[0]:.0%} to {self.npv_ci[1]:.0%}) do not (NPV).")


def predictive_at(op: OperatingPoint, rep: Replicates, prevalence: float) -> PredictiveValues:
    """PPV / NPV of `op` at `prevalence`, intervals over the replicates (NaN replicates dropped; a value
    without any finite replicate gets the interval (NaN, NaN))."""
    ppv, npv = predictive_values(op.sensitivity, op.specificity, prevalence)
    bp, bn = predictive_values(rep.sensitivity, rep.specificity, prevalence)

    def ci(v: np.ndarray) -> tuple[float, float]:
        v = v[np.isfinite(v)]
        return interval(v) if v.size else (float("nan"), float("nan"))

    return PredictiveValues(float(prevalence), float(ppv), float(npv), ci(bp), ci(bn))
