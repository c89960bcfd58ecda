"""The phantom's findings: names, focal/diffuse, descriptions, and each finding's size/contrast draw
(from its own seeded stream, so adding a finding never changes the anatomy)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from engine.data.phantom.shapes import _u


FINDINGS: tuple[str, ...] = (
    "nodule",
    "mass",
    "cardiomegaly",
    "pleural_effusion",
    "hemidiaphragm_elevation",
    "hiatal_hernia",
    "reticular_pattern",
    "pneumothorax",
)


# Focal findings have a compact lesion (a box around the mask is meaningful); diffuse ones change a
# whole region or an organ outline.
FOCAL_FINDINGS: tuple[str, ...] = ("nodule", "mass", "hiatal_hernia")


DIFFUSE_FINDINGS: tuple[str, ...] = tuple(f for f in FINDINGS if f not in FOCAL_FINDINGS)


_DESCRIPTIONS: dict[str, str] = {
    "nodule": "Small round opacity (radius 1-3% of the image width) inside a lung field.",
    "mass": "Large lobulated, irregular opacity (radius 7-14% of the image width) inside a lung field.",
    "cardiomegaly": "Enlarged heart shadow, cardiothoracic ratio above 0.5 (mask: the heart).",
    "pleural_effusion": "Fluid at a lung base: meniscus-shaped opacity blunting the costophrenic angle.",
    "hemidiaphragm_elevation": "One diaphragm dome raised (mask: the lung base lost between normal and raised dome).",
    "hiatal_hernia": "Round retrocardiac opacity behind the heart, often with an air-fluid level.",
    "reticular_pattern": "Fine net-like interstitial opacities in the lower lung zones (mask: affected zone).",
    "pneumothorax": "Air between lung and chest wall: thin pleural line, lucent rim without vessel markings.",
}


PHANTOM_VERSION = 1


_MIN_SIZE = 32


_STREAM_ANATOMY, _STREAM_NOISE, _STREAM_FINDING0 = 0, 1, 100


def describe_findings() -> dict[str, str]:
    """One-line description per finding (for the UI), in `FINDINGS` order."""
    return {f: _DESCRIPTIONS[f] for f in FINDINGS}


def is_focal(finding: str) -> bool:
    """True for findings with a compact lesion (nodule, mass, hiatal hernia), False for diffuse ones."""
    _check_findings([finding])
    return finding in FOCAL_FINDINGS


# Size and contrast ranges per finding (canonical units: the thorax spans about [-1, 1]; contrasts
# are attenuation, a lung field is ~0.3, the mediastinum ~0.8). Each image draws uniformly inside
# the range, so every task mixes obvious and subtle cases. Calibrated with a 10-shot linear probe on
# random-init ResNet-18 features (docs/design.md, "Phantom"): above chance, far from perfect.
_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "nodule": dict(radius=(0.012, 0.03), contrast=(0.15, 0.35)),  # radius: fraction of image width
    "mass": dict(radius=(0.07, 0.14), contrast=(0.18, 0.34)),
    "cardiomegaly": dict(ctr=(0.53, 0.68), shift=(0.0, 0.05)),
    "pleural_effusion": dict(depth=(0.2, 0.8), meniscus=(0.06, 0.18), contrast=(0.75, 1.0), soft=(0.015, 0.05)),
    "hemidiaphragm_elevation": dict(lift=(0.15, 0.36)),
    "hiatal_hernia": dict(radius=(0.11, 0.17), aspect=(0.75, 1.05), du=(-0.03, 0.1), rise=(0.9, 1.7),
                          contrast=(0.16, 0.34), air=(0.15, 0.35), level=(-0.1, 0.45)),
    "reticular_pattern": dict(contrast=(0.14, 0.3), top=(-0.4, 0.0), scale=(0.006, 0.011)),
    "pneumothorax": dict(rim=(0.07, 0.24), extent=(0.8, 1.8), line=(0.06, 0.14), lucency=(0.06, 0.15)),
}


def _finding_params(name: str, rng: np.random.Generator) -> dict[str, float]:
    """Size, contrast and position draws of one finding, from its own stream (subtlety varies)."""
    out = {k: _u(rng, lo, hi) for k, (lo, hi) in _RANGES[name].items()}
    out["side"] = 1.0 if rng.random() < 0.5 else -1.0  # +1: image right (patient's left)
    out["pick"] = _u(rng, 0.0, 1.0)  # where inside the allowed region a focal lesion sits
    if name == "mass":  # lobulated outline harmonics and short spicules
        out.update({f"h{k}": _u(rng, 0.0, 0.16) / k**0.6 for k in range(2, 7)})
        out.update({f"p{k}": _u(rng, 0.0, 2 * math.pi) for k in range(2, 7)})
        out.update(spikes=_u(rng, 0.0, 0.06), spike_phase=_u(rng, 0.0, 2 * math.pi))
    if name == "hiatal_hernia" and rng.random() >= 0.75:
        out["air"] = 0.0  # a quarter without an air-fluid level
    if name == "pleural_effusion":  # a third are bilateral, the other side smaller
        out["other"] = _u(rng, 0.4, 0.9) if rng.random() < 0.3 else 0.0
    if name == "reticular_pattern":  # 0 both lungs (70%), 1 image left, 2 image right
        out["sides"] = 0.0 if rng.random() < 0.7 else float(rng.integers(1, 3))
    return out


def _check_findings(findings: Iterable[str]) -> tuple[str, ...]:
    fs = tuple(findings)
    unknown = [f for f in fs if f not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown phantom finding(s) {unknown}; valid findings are {list(FINDINGS)}")
    return tuple(dict.fromkeys(fs))
