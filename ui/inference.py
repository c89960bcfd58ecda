"""Prediction + Grad-CAM for images a user uploads to a saved classifier (no streamlit calls here).

The page caches one `LoadedClassifier` per file (st.cache_resource) and calls `explain_uploads`,
which serializes on the classifier's lock: Grad-CAM hooks live on the model's modules, so two
sessions must not explain with the same model at once.

The number shown is the classifier's *calibrated* probability and the verdict compares that same number
with the chosen cut-off (`label = probability >= threshold`), so headline and verdict cannot disagree;
`fmt_pair` adds decimals where two decimals would make them look equal or reversed.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from engine.data.io import ImageReadError, read_image
from engine.explain.single_image import classifier_heatmap
from engine.explain.overlay import overlay
from engine.fewshot.classifier import Classifier, ClassifierScoreError
from engine.fewshot.classifier.scoring import image_key


DEFAULT_OPACITY = 0.6  # heatmap colour opacity where the map is highest; the X-ray shows through where it is low


@dataclass
class LoadedClassifier:
    clf: Classifier
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Explained:
    name: str
    image: np.ndarray | None = None  # float32 HxW in [0, 1]
    overlay: np.ndarray | None = None  # uint8 HxWx3 (opacity proportional to the map, at most DEFAULT_OPACITY)
    probability: float | None = None  # calibrated
    label: int | None = None  # 1 = probability >= threshold
    threshold: float | None = None
    unfamiliar: bool | None = None  # None: the classifier file has no familiarity rule (older version)
    distance: float | None = None  # to the nearest training image (L2-normalized features)
    distance_threshold: float | None = None
    error: str | None = None
    heat: np.ndarray | None = None  # float32 HxW in [0, 1], the Grad-CAM map at the image's size
    training_image: bool | None = None  # (nearly) one of the classifier's training images

    def overlay_at(self, opacity: float) -> np.ndarray | None:
        """The overlay redrawn with colour opacity `opacity` in [0, 1] at the map's maximum (proportional to it)."""
        return None if self.heat is None else overlay(self.image, self.heat, alpha=float(opacity))


def explain_uploads(loaded: LoadedClassifier, files: list[tuple[str, bytes]], method: str = "gradcam",
                    threshold: float | None = None) -> list[Explained]:
    """Calibrated probability, verdict at `threshold` (default: the classifier's saved cut), familiarity flag
    and Grad-CAM overlay per uploaded file; unreadable files and non-finite scores get an `error` instead."""
    clf = loaded.clf
    train_keys = set(clf.training_keys)  # pixel keys of its training images (issue 21 item 6)
    out: list[Explained] = []
    with loaded.lock:
        for name, data in files:
            try:
                img, meta = read_image(data)
            except ImageReadError as e:
                out.append(Explained(name, error=f"This file could not be read as an X-ray, so it was not scored: {e}"))
                continue
            try:
                pred = clf.predict([img], threshold=threshold)[0]
            except ClassifierScoreError as e:
                out.append(Explained(name, img, error=f"No answer for this image: {e}"))
                continue
            heat, _ = classifier_heatmap(clf, img, method)
            out.append(Explained(name, img, overlay(img, heat, alpha=DEFAULT_OPACITY), float(pred["probability"]),
                                 int(pred["label"]), float(pred["threshold"]), pred["unfamiliar"],
                                 pred["familiarity_distance"], pred["familiarity_threshold"], heat=heat,
                                 training_image=bool(image_key(img, meta.bits) in train_keys
                                                     or pred.get("training_image"))))
    return out


def fmt_probability(p: float) -> str:
    """'0.37', or '< 0.01' / '> 0.99' at the ends (two decimals would print a misleading 0.00 / 1.00)."""
    return "< 0.01" if p < 0.005 else "> 0.99" if p > 0.995 else f"{p:.2f}"


def fmt_pair(p: float, threshold: float) -> tuple[str, str]:
    """(probability, cut-off) as text with as many decimals (2..4) as it takes for the printed numbers to
    order the same way as the real ones, e.g. (0.7951, 0.7953) -> ('0.7951', '0.7953'), never ('0.80', '0.80')."""
    for d in (2, 3, 4):
        a, b = round(p, d), round(threshold, d)
        if (p >= threshold) == (a >= b) and (p == threshold or a != b):
            break
    ps = fmt_probability(p) if d == 2 and 0.005 <= threshold <= 0.995 else f"{p:.{d}f}"
    return ps, f"{threshold:.{d}f}"


def verdict(p: float, threshold: float, finding: str) -> str:
    """Plain words for one calibrated probability and the cut-off (probability >= cut-off: suggests)."""
    f = finding.replace("_", " ")
    ps, ts = fmt_pair(p, threshold)
    if p >= threshold:
        return f"Suggests **{f}**: probability {ps} is at or above the cut-off {ts}."
    return f"Does not suggest {f}: probability {ps} is below the cut-off {ts}."


def headline(p: float, threshold: float, finding: str) -> str:
    """The large-type line: the verdict itself, so it can never contradict the number beside it."""
    f = finding.replace("_", " ")
    return f"Suggests {f}" if p >= threshold else f"Does not suggest {f}"


def training_note(r: Explained) -> str | None:
    """A note when the image is one of the training images (its score is then no test of the classifier)."""
    if not r.training_image:
        return None
    return ("This is one of the training images (or a copy of it): the classifier has seen it, so its score says "
            "nothing about how well it works. The cross-validated figures above are the honest test.")


def familiarity_note(r: Explained) -> str | None:
    """A warning when the image is unlike the training images (None when it is familiar or unknown; a training
    image has `training_note` instead)."""
    if not r.unfamiliar:
        return None
    return (f"Unlike the training images: its nearest training image is at distance {r.distance:.3f} in the backbone's "
            f"feature space, beyond the {r.distance_threshold:.3f} that about 95% of images like the training images "
            "stay within. The accuracy estimate and the probability do not apply to it (another hospital, scanner, "
            "age group or image type?). Do not rely on this result.")
