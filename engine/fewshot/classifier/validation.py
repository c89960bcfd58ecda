"""External validation: a saved classifier measured on a labeled test set of the user's own.

Statistics (all on the test images the classifier was *not* trained on; training images found in the test
set by content hash are listed and left out, see `engine.fewshot.classifier.scoring`):

* **AUC** (rank-based, ties = 1/2) with a 95% **percentile bootstrap** interval over test images, 2,000
  resamples (Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13; resamples that lose a
  class are dropped, as in `engine.fewshot.metrics.bootstrap_auc`), floored by `metrics.floor_interval`
  (the hull with Newcombe's 2006 small-sample interval for the test set's class counts; `auc_ci_note`
  says when that widened it).
* **Sensitivity and specificity** at the classifier's operating point (a calibrated probability >= the cut
  is called positive) with 95% **Wilson score** intervals (Wilson 1927, JASA 22:209; recommended over the
  Wald interval for small n by Brown, Cai & DasGupta 2001, Statistical Science 16:101).
* **Calibration** (reliability diagram): the test images binned by predicted probability into equal-width
  bins; per bin the count, the mean predicted probability and the observed fraction with the finding
  (with its Wilson interval) -- a calibrated classifier puts the points on the diagonal (DeGroot &
  Fienberg 1983; Niculescu-Mizil & Caruana 2005). The Brier score (mean squared error of the
  probability; Brier 1950) and its baseline (predicting the test prevalence for every image) go with it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from engine.fewshot.metrics import Floored, auc, bootstrap_auc_samples, floor_interval, percentile_interval

VALIDATION_BOOTSTRAP = 2000  # resamples of the AUC interval
CALIBRATION_BINS = 10
MIN_TEST_PER_CLASS = 1  # an AUC needs both classes; intervals say how little a tiny test set tells

__all__ = ["CALIBRATION_BINS", "CalibrationBin", "ValidationReport", "auc_with_interval", "reliability_bins",
           "validate_scores", "wilson_interval"]


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion k / n (Wilson 1927):
    (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), p = k/n, z the normal (1+level)/2 quantile.
    (nan, nan) when n == 0. Raises ValueError for k outside [0, n]."""
    if n == 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, n]; got k={k}, n={n}")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2.0))
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def auc_with_interval(y: np.ndarray, p: np.ndarray, n_boot: int = VALIDATION_BOOTSTRAP, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """(AUC, low, high): the AUC of scores p (N,) for 0/1 labels y (N,) and its percentile bootstrap interval
    over images (Efron & Tibshirani 1993), floored with the class counts (metrics.floor_interval).
    Raises ValueError when y lacks a class."""
    a, fl = _floored_auc(y, p, n_boot, seed, level)
    return a, fl.low, fl.high


def _floored_auc(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int, level: float) -> tuple[float, Floored]:
    y = np.asarray(y, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("an AUC needs test images with and without the finding")
    lo, hi = percentile_interval(bootstrap_auc_samples(y, np.asarray(p, dtype=np.float64), n_boot, seed), level)
    a = auc(y, p)
    return a, floor_interval(a, lo, hi, int((y == 1).sum()), int((y == 0).sum()), level=level)


@dataclass(frozen=True)
class CalibrationBin:
    """One bin of a reliability diagram: probabilities in [low, high)."""

    low: float
    high: float
    count: int
    mean_predicted: float  # nan for an empty bin
    observed: float  # fraction with the finding; nan for an empty bin
    observed_low: float
    observed_high: float


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = CALIBRATION_BINS) -> list[CalibrationBin]:
    """Equal-width bins of predicted probability p (N,) in [0, 1] with the observed rate of y (N,) 0/1 in each
    and its Wilson interval; the last bin includes 1.0. Raises ValueError for probabilities outside [0, 1]."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if p.size and (p.min() < 0 or p.max() > 1 or not np.isfinite(p).all()):
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)  # [b/n, (b+1)/n)
    out = []
    for b in range(n_bins):
        m = which == b
        n, k = int(m.sum()), int(y[m].sum())
        lo, hi = wilson_interval(k, n)
        out.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), n, float(p[m].mean()) if n else math.nan,
                                  k / n if n else math.nan, lo, hi))
    return out


@dataclass(frozen=True)
class ValidationReport:
    """A classifier measured on a labeled test set (see the module docstring for every statistic)."""

    finding: str
    n_positive: int
    n_negative: int
    auc: float
    auc_low: float
    auc_high: float
    threshold: float
    sensitivity: float
    sensitivity_low: float
    sensitivity_high: float
    specificity: float
    specificity_low: float
    specificity_high: float
    counts: dict[str, int]  # tp, fn, tn, fp at the threshold
    brier: float
    brier_baseline: float  # predicting the test prevalence for every image
    bins: tuple[CalibrationBin, ...]
    cv_auc: float | None = None  # the classifier's own cross-validated estimate, for comparison
    n_training_excluded: int = 0  # test images that were training images (by content hash), left out
    n_unfamiliar: int = 0
    warnings: tuple[str, ...] = field(default_factory=tuple)
    auc_ci_note: str = ""  # metrics.floor_interval's note when the small-sample floor widened the AUC interval

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (undefined values, e.g. an empty bin's rate, as None)."""
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        d = {k: clean(v) for k, v in asdict(self).items()}
        d["bins"] = [{k: clean(v) for k, v in asdict(b).items()} for b in self.bins]
        d["warnings"] = list(self.warnings)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ValidationReport":
        """Inverse of to_dict (None back to NaN)."""
        def nan(v: Any) -> Any:
            return math.nan if v is None else v

        bins = tuple(CalibrationBin(**{k: nan(v) for k, v in b.items()}) for b in d["bins"])
        keep = ("cv_auc", "auc_ci_note")
        top = {k: (v if k in keep else nan(v)) for k, v in d.items() if k not in ("bins", "warnings")}
        return cls(**top, bins=bins, warnings=tuple(d.get("warnings", ())))

    def sentence(self) -> str:
        """Plain words: the AUC with its interval, the operating point, and whether it works at all."""
        n = self.n_positive + self.n_negative
        s = (f"On {n} test images ({self.n_positive} with {self.finding}, {self.n_negative} without) the AUC is "
             f"{self.auc:.2f} (95% CI {self.auc_low:.2f}-{self.auc_high:.2f}); at the cut-off {self.threshold:.2f} "
             f"sensitivity {self.sensitivity:.0%} ({self.sensitivity_low:.0%}-{self.sensitivity_high:.0%}), "
             f"specificity {self.specificity:.0%} ({self.specificity_low:.0%}-{self.specificity_high:.0%}).")
        if self.auc_ci_note:
            s += f" {self.auc_ci_note}."
        if not self.auc_low > 0.5:
            s += " The interval includes 0.5: on this test set the classifier is not shown to be better than chance."
        return s


def _warnings(y: np.ndarray, lo: float, cv_auc: float | None, a: float, n_excluded: int) -> list[str]:
    w = []
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if min(n_pos, n_neg) < 10:
        w.append(f"only {min(n_pos, n_neg)} test images of the smaller class: every figure here is uncertain "
                 "(see the intervals); 30+ per class give a useful estimate")
    if n_excluded:
        w.append(f"{n_excluded} test image(s) are training images of this classifier (same pixels) and were left out")
    if cv_auc is not None and math.isfinite(cv_auc) and math.isfinite(lo) and cv_auc < lo:
        w.append(f"the cross-validated AUC {cv_auc:.2f} lies below this test interval")
    if cv_auc is not None and math.isfinite(cv_auc) and a < cv_auc - 0.1:
        w.append(f"the test AUC is well below the cross-validated {cv_auc:.2f}: the test images may differ from the "
                 "training images (another hospital, machine or population)")
    return w


def validate_scores(y: Sequence[float], p: Sequence[float], threshold: float, finding: str = "finding",
                    cv_auc: float | None = None, n_training_excluded: int = 0, n_unfamiliar: int = 0,
                    n_boot: int = VALIDATION_BOOTSTRAP, seed: int = 0) -> ValidationReport:
    """The validation report of calibrated probabilities p (N,) against 0/1 labels y (N,) at `threshold`
    (p >= threshold called positive). Raises ValueError when a class is missing or the inputs disagree."""
    y, p = np.asarray(y, dtype=np.float64).ravel(), np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("test labels must be 1 (finding present) or 0 (absent)")
    a, fl = _floored_auc(y, p, n_boot, seed, 0.95)
    lo, hi = fl.low, fl.high
    pred = p >= threshold
    tp, fn = int((pred & (y == 1)).sum()), int((~pred & (y == 1)).sum())
    tn, fp = int((~pred & (y == 0)).sum()), int((pred & (y == 0)).sum())
    se_lo, se_hi = wilson_interval(tp, tp + fn)
    sp_lo, sp_hi = wilson_interval(tn, tn + fp)
    prev = float(y.mean())
    return ValidationReport(
        finding=finding, n_positive=tp + fn, n_negative=tn + fp, auc=a, auc_low=lo, auc_high=hi,
        threshold=float(threshold), sensitivity=tp / (tp + fn), sensitivity_low=se_lo, sensitivity_high=se_hi,
        specificity=tn / (tn + fp), specificity_low=sp_lo, specificity_high=sp_hi,
        counts={"tp": tp, "fn": fn, "tn": tn, "fp": fp}, brier=float(np.mean((p - y) ** 2)),
        brier_baseline=float(np.mean((prev - y) ** 2)), bins=tuple(reliability_bins(y, p)), cv_auc=cv_auc,
        n_training_excluded=int(n_training_excluded), n_unfamiliar=int(n_unfamiliar),
        warnings=tuple(_warnings(y, lo, cv_auc, a, n_training_excluded)), auc_ci_note=fl.note)


def validate_classifier(clf: Any, items: Sequence[tuple[str, Any]], labels: Sequence[float],
                        threshold: float | None = None, n_boot: int = VALIDATION_BOOTSTRAP, seed: int = 0,
                        on_event: Any = None, stop: Any = None) -> tuple[ValidationReport, list]:
    """Score labeled test images (name, path | bytes) with a Classifier (engine.fewshot.classifier.scoring) and
    measure it: (ValidationReport, the ScoreRows). Training images of the classifier (by content hash) and images
    that could not be read are left out of the statistics (the rows say which). `threshold`: default the
    classifier's operating point. Raises ValueError when fewer than one usable image of a class remains."""
    from engine.fewshot.classifier.scoring import score_items

    if len(items) != len(labels):
        raise ValueError(f"{len(items)} test images but {len(labels)} labels")
    rows = score_items(clf, items, threshold, total=len(items), on_event=on_event, stop=stop)
    return report_from_rows(clf, rows, labels, threshold, n_boot, seed), rows


def report_from_rows(clf: Any, rows: Sequence[Any], labels: Sequence[float], threshold: float | None = None,
                     n_boot: int = VALIDATION_BOOTSTRAP, seed: int = 0) -> ValidationReport:
    """The ValidationReport of scored rows (engine.fewshot.classifier.scoring.ScoreRow) with 0/1 `labels` (one
    per row): training images and unreadable images left out. Raises ValueError when a class is then missing."""
    t = clf.threshold if threshold is None else float(threshold)
    use = [i for i, r in enumerate(rows) if r.error is None and not r.training_image]
    n_train = sum(r.training_image for r in rows)
    y = np.asarray(labels, dtype=np.float64)[use]
    if min(int((y == 1).sum()), int((y == 0).sum())) < MIN_TEST_PER_CLASS:
        raise ValueError(f"after leaving out {n_train} training image(s) and {len(rows) - len(use) - n_train} "
                         "unreadable one(s), the test set lacks images with or without the finding; add some")
    p = np.array([rows[i].probability for i in use])
    cv = clf.estimate.auc if getattr(clf, "estimate", None) is not None else None
    return validate_scores(y, p, t, clf.finding, cv, n_train, sum(bool(rows[i].unfamiliar) for i in use), n_boot,
                           seed)
