"""Is this classifier usable at all? A degenerate model is said not to work, in plain words.

A classifier is **not usable** when any of these holds (each gives one plain-language reason):

* its calibrated output is (nearly) constant: the calibrated out-of-fold (OOF) probabilities of all
  images span less than `NEAR_CONSTANT` (e.g. a Platt slope of 0, which gives every image the training
  prevalence), so it cannot tell images apart;
* the 95% interval of its cross-validated AUC reaches 0.5 (a coin flip): with these images it may be no
  better than chance;
* its saved operating point has a cross-validated sensitivity or specificity of 0%: it calls no image
  with the finding positive, or every image without it positive.

The verdict is recomputed from the file's checked contents on every load (never trusted from the file);
it is also written into the file's metadata, `classify`'s output and the model card for readers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.fewshot.classifier.calibration import OperatingPoint
from engine.fewshot.classifier.estimate import Estimate

NEAR_CONSTANT = 0.02  # calibrated OOF probabilities spanning less than this are "the same for every image"


@dataclass(frozen=True)
class Usability:
    """usable: False when any reason holds; reasons: plain-language sentences (empty when usable)."""

    usable: bool
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"usable": self.usable, "reasons": list(self.reasons)}

    def sentence(self) -> str:
        """One paragraph for pages, the CLI and the model card."""
        if self.usable:
            return "Usable: its output varies with the image and its cross-validated AUC interval is above chance."
        return ("NOT USABLE - do not use this classifier on patients: " + "; ".join(self.reasons)
                + ". Label more images, or try another backbone or the probe method, and build it again.")


def assess(cv_probs: np.ndarray | None, estimate: Estimate | None, operating: OperatingPoint | None) -> Usability:
    """The verdict for calibrated OOF probabilities cv_probs (R, N) (None: files without them), the AUC
    estimate and the saved operating point (see the module docstring for the rules)."""
    reasons: list[str] = []
    if cv_probs is not None and np.size(cv_probs):
        p = np.asarray(cv_probs, dtype=np.float64)
        lo, hi = float(p.min()), float(p.max())
        if hi - lo < NEAR_CONSTANT:
            reasons.append(f"it gives (almost) the same probability to every image (cross-validated probabilities "
                           f"span only {lo:.3f} to {hi:.3f}), so it cannot tell images with the finding from "
                           "images without")
    if estimate is not None and estimate.ci_low <= 0.5:
        reasons.append(f"the 95% interval of its cross-validated AUC ({estimate.ci_low:.2f} to {estimate.ci_high:.2f}) "
                       "includes 0.5, a coin flip: it may be no better than chance")
    if operating is not None:
        if operating.sensitivity <= 0.0:
            reasons.append("at its operating point it calls no image with the finding positive (cross-validated "
                           "sensitivity 0%)")
        if operating.specificity <= 0.0:
            reasons.append("at its operating point it calls every image without the finding positive "
                           "(cross-validated specificity 0%)")
    return Usability(not reasons, tuple(reasons))
