"""The cross-validated estimate: label checks, folds, the `Estimate` record and its sentence.

Repeated stratified k-fold, k = min(5, images in the smaller class), patient-grouped
(`StratifiedGroupKFold`) when a manifest gives several images per patient; see the package docstring
(`engine.fewshot.classifier`) for how the AUC and its interval are computed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engine.fewshot.classifier.errors import ClassifierDataError

MIN_PER_CLASS = 3  # below this no classifier is built: k-fold CV needs >= 2 training images per class
WARN_PER_CLASS = 10  # below this the estimate is flagged as rough


@dataclass(frozen=True)
class Estimate:
    """Cross-validated AUC (mean over repeats) with its 95% image-bootstrap interval and the counts behind it."""

    auc: float
    ci_low: float
    ci_high: float
    n_positive: int
    n_negative: int
    folds: int
    repeats: int
    repeat_aucs: tuple[float, ...] = ()
    sentence: str = ""
    warnings: tuple[str, ...] = ()
    ci_note: str = ""  # engine.fewshot.metrics.floor_interval's note when the small-sample floor widened the interval

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Estimate":
        return cls(**{**d, "repeat_aucs": tuple(d.get("repeat_aucs", ())), "warnings": tuple(d.get("warnings", ()))})


def check_counts(y: np.ndarray, finding: str) -> list[str]:
    """Refuse unusable label sets (ClassifierDataError: one class, fewer than MIN_PER_CLASS of a class);
    return warnings for small ones (fewer than WARN_PER_CLASS of a class)."""
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        have = "with" if n_neg == 0 else "without"
        raise ClassifierDataError(
            f"All {len(y)} images are labeled {have} '{finding}'. A classifier needs examples of both: "
            f"add at least {MIN_PER_CLASS} images {'without' if n_neg == 0 else 'with'} the finding.")
    if n_pos < MIN_PER_CLASS or n_neg < MIN_PER_CLASS:
        raise ClassifierDataError(
            f"You gave {n_pos} image(s) with '{finding}' and {n_neg} without. At least {MIN_PER_CLASS} of each are "
            f"needed to build a classifier and check how well it works; please label more images.")
    if n_pos < WARN_PER_CLASS or n_neg < WARN_PER_CLASS:
        return [f"Only {n_pos} image(s) with '{finding}' and {n_neg} without: the accuracy estimate is rough "
                f"(its interval is wide). {WARN_PER_CLASS} or more of each give a more reliable classifier."]
    return []


def cv_folds(y: np.ndarray, groups: np.ndarray | None, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k stratified (train rows, test rows) folds of labels y (N,), seeded; grouped by `groups` (N,) when
    some group holds several images (patients), so no patient is on both sides."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if groups is not None and len(np.unique(groups)) < len(groups):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y, groups))
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def sentence(e: Estimate, finding: str) -> str:
    """The estimate in one plain-language paragraph (shown on the page and in the model card)."""
    text = (f"Estimated AUC {e.auc:.2f} (95% interval {e.ci_low:.2f} to {e.ci_high:.2f}) for telling images with "
            f"'{finding}' from images without, from {e.repeats} repeat{'s' if e.repeats != 1 else ''} of "
            f"{e.folds}-fold cross-validation on {e.n_positive + e.n_negative} images ({e.n_positive} with, "
            f"{e.n_negative} without). 0.5 is a coin flip and 1.0 is perfect.")
    if e.ci_note:
        text += f" {e.ci_note}."
    if e.ci_low <= 0.5:
        text += " The interval includes 0.5: with these images the classifier may be no better than chance."
    elif min(e.n_positive, e.n_negative) < WARN_PER_CLASS:
        text += " With so few images, treat this as a rough guide."
    return text
