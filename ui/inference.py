"""Prediction + Grad-CAM for images a user uploads to a saved classifier (no streamlit calls here).

The page caches one `LoadedClassifier` per file (st.cache_resource) and calls `explain_uploads`,
which serializes on the classifier's lock: Grad-CAM hooks live on the model's modules, so two
sessions must not explain with the same model at once.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from engine.data.io import ImageReadError, read_image
from engine.explain.gradcam import CAMExplainer, explain_image
from engine.explain.overlay import overlay
from engine.fewshot.classifier import Classifier


@dataclass
class LoadedClassifier:
    clf: Classifier
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Explained:
    name: str
    image: np.ndarray | None = None  # float32 HxW in [0, 1]
    overlay: np.ndarray | None = None  # uint8 HxWx3
    probability: float | None = None
    label: int | None = None
    error: str | None = None


def explain_uploads(loaded: LoadedClassifier, files: list[tuple[str, bytes]], method: str = "gradcam") -> list[Explained]:
    """Probability and Grad-CAM overlay per uploaded file; unreadable files get an `error` instead."""
    clf = loaded.clf
    out: list[Explained] = []
    with loaded.lock:
        for name, data in files:
            try:
                img, _ = read_image(data)
            except ImageReadError as e:
                out.append(Explained(name, error=str(e)))
                continue
            pred = clf.predict([img])[0]
            with CAMExplainer(clf.explain_module(), clf.target_layer, method, clf.device, mean=clf.mean,
                              std=clf.std) as ex:
                heat = explain_image(ex, img, clf.image_size)
            out.append(Explained(name, img, overlay(img, heat), float(pred["probability"]), int(pred["label"])))
    return out


def fmt_probability(p: float) -> str:
    """'0.37', or '< 0.01' / '> 0.99' at the ends (two decimals would print a misleading 0.00 / 1.00)."""
    return "< 0.01" if p < 0.005 else "> 0.99" if p > 0.995 else f"{p:.2f}"


def verdict(p: float, threshold: float, finding: str) -> str:
    """Plain words for one probability and the classifier's cut-off."""
    f = finding.replace("_", " ")
    detail = f"probability {fmt_probability(p)}; the classifier's cut-off is {threshold:.2f}"
    if p >= threshold:
        return f"Suggests **{f}** ({detail})."
    return f"Does not suggest {f} ({detail})."

