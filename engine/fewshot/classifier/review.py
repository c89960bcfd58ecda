"""Error analysis of the cross-validation: the ROC curve, the confusion matrix at a cut-off, and the
training images the cross-validation scored most wrongly (to re-check their labels).

All from the calibrated out-of-fold (OOF) probabilities cv_probs (R, N) of R repeats: each image was scored
by models that had not seen it. The ROC curve and the confusion matrix pool the repeats (counts are the
mean over repeats, so sensitivity = TP / (TP + FN) equals the operating point's pooled CV sensitivity);
an image's score for the ranking is its OOF probability averaged over the repeats.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.fewshot.classifier.calibration import operating_curve


@dataclass(frozen=True)
class Confusion:
    """Mean counts over the CV repeats at one cut-off (probability >= cut-off = called positive)."""

    tp: float
    fn: float
    fp: float
    tn: float
    repeats: int


@dataclass(frozen=True)
class WrongImage:
    """One training image scored on the wrong side of the cut-off by the cross-validation."""

    row: int  # index into the classifier's CV rows
    label: int  # 1 = labeled with the finding
    probability: float  # OOF probability, mean over repeats
    called_positive: float  # share of repeats calling it positive
    wrongness: float  # |label - probability|: 1 = as wrong as can be


def roc_points(cv_probs: np.ndarray, cv_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate (C,), true positive rate (C,), cut-offs (C,)) of the pooled OOF probabilities,
    ordered from the highest cut-off (0, 0) to the lowest (1, 1)."""
    P = np.atleast_2d(cv_probs)
    cuts, sens, spec = operating_curve(np.tile(cv_labels, P.shape[0]), P.ravel())
    return (1.0 - spec)[::-1], sens[::-1], cuts[::-1]


def confusion(cv_probs: np.ndarray, cv_labels: np.ndarray, threshold: float) -> Confusion:
    """Mean TP/FN/FP/TN over the repeats at `threshold`."""
    P = np.atleast_2d(cv_probs)
    y = np.asarray(cv_labels).astype(int)
    call = P >= threshold  # (R, N)
    return Confusion(tp=float(call[:, y == 1].sum(1).mean()), fn=float((~call[:, y == 1]).sum(1).mean()),
                     fp=float(call[:, y == 0].sum(1).mean()), tn=float((~call[:, y == 0]).sum(1).mean()),
                     repeats=P.shape[0])


def most_wrong(cv_probs: np.ndarray, cv_labels: np.ndarray, threshold: float, k: int = 8) -> list[WrongImage]:
    """Up to `k` images whose repeat-averaged OOF probability lies on the wrong side of `threshold`, the most
    wrongly scored first (largest |label - probability|)."""
    P = np.atleast_2d(cv_probs)
    y = np.asarray(cv_labels).astype(int)
    p = P.mean(axis=0)
    wrong = np.flatnonzero((p >= threshold) != (y == 1))
    order = wrong[np.argsort(-np.abs(y[wrong] - p[wrong]), kind="stable")][:k]
    return [WrongImage(int(i), int(y[i]), float(p[i]), float(np.mean(P[:, i] >= threshold)),
                       float(abs(y[i] - p[i]))) for i in order]
