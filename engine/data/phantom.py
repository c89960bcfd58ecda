"""Synthetic PA chest radiographs with ground-truth lesion masks (the demo workspace's data).

`render(seed, size, findings)` is a pure function: the same seed, size and findings give the same
image and masks, bit for bit. Anatomy, each finding and the noise draw from independent seeded
streams, so adding a finding to an image changes it only where that finding lives; this is what
lets tests (and the Grad-CAM localization study) compare an image with and without a lesion.

How an image is made
--------------------
Everything is drawn in *canonical patient coordinates* ``(u, v)``: ``u`` runs from the image's left
(the patient's right) to its right, ``v`` from top to bottom, both about [-1, 1] for the thorax. Each
patient gets a pose (scale, shift, small rotation) mapping these onto the pixel grid, so geometry
is resolution independent and vectorized over the whole grid (no per-pixel Python loops).

The picture is built in *attenuation* space, like a projection radiograph: a soft-tissue body
(neck, sloping shoulders, torso), two air-filled lungs subtracted from it (a rounded apex ellipse,
the mediastinum, the heart and the diaphragm domes bound each lung; costophrenic angles are the
corners they leave), bones added on top (posterior and anterior rib arcs with brighter cortices,
clavicles, humeral heads, the vertebral column with discs and pedicles), hila and a branching
pulmonary vessel tree that fades towards the periphery, a trachea and a gastric bubble. A
per-patient exposure curve maps attenuation to brightness, then blur, edge enhancement (as
clinical processing does) and signal-dependent quantum noise follow.

Findings change that physics, never paint over the result: an enlarged heart displaces lung;
an elevated dome lifts the lung base; effusion fluid replaces air under a meniscus; a pneumothorax
pulls the visceral pleura (a thin white line) away from the chest wall and leaves a lucent,
vessel-free rim; nodules, masses and a hiatal hernia (retrocardiac, often with an air-fluid level)
add density; a reticular pattern adds a fine net in the lower zones. Each finding's size and
contrast come from a range, so some cases are obvious and some are subtle.

`generate(out_dir, n, ...)` writes a manifest workspace (`images/`, `manifest.csv`, `masks.csv`,
`masks/`, `boxes.csv`, `phantom.json`) atomically: everything goes to a temporary sibling folder
that is renamed into place at the end.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import threading
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from engine.atomic import replace_dir
from engine.events import OnEvent, check_stop, emit

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


# ----------------------------------------------------------------------------------------------
# small vectorized helpers
# ----------------------------------------------------------------------------------------------


def _ramp(m: np.ndarray, eps: float) -> np.ndarray:
    """Soft indicator of ``m > 0``: a linear ramp of width ``2*eps`` around the boundary."""
    return np.clip(m * (0.5 / eps) + 0.5, 0.0, 1.0)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth minimum (rounded intersection of two margins) with rounding radius ~k."""
    h = np.clip(k - np.abs(a - b), 0.0, None) / k
    return np.minimum(a, b) - h * h * (k / 4.0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _ellipse_margin(a: np.ndarray, v: np.ndarray, ac: float, vc: float, ra: float, rv: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse boundary (positive inside)."""
    p = (a - ac) / ra
    q = (v - vc) / rv
    rho = np.sqrt(p * p + q * q) + 1e-6
    grad = np.sqrt((p / ra) ** 2 + (q / rv) ** 2) / rho + 1e-6  # |grad rho|
    return (1.0 - rho) / grad


def _rotated(u: np.ndarray, v: np.ndarray, uc: float, vc: float, phi: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(phi), math.sin(phi)
    du, dv = u - uc, v - vc
    return c * du + s * dv, -s * du + c * dv


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


# ----------------------------------------------------------------------------------------------
# anatomy parameters (one patient)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lung:
    """One lung's outline in its lateral coordinate a (0 at the midline, growing outwards)."""

    ac: float  # apex/lateral ellipse centre (lateral coordinate a >= 0), and semi-axes
    vc: float
    ra: float
    rv: float
    dome: float  # top of the diaphragm dome (v)
    dome_a: float  # lateral position of the dome's top
    dome_k: float  # dome curvature (how far the costophrenic angle lies below the top)
    hilum_v: float


@dataclass(frozen=True)
class _Patient:
    """Everything random about one patient: pose, body, organs, bones and the exposure."""

    scale: float
    cx: float
    cy: float
    theta: float
    body_w: float  # torso half-width
    neck_w: float
    shoulder_v: float
    right: _Lung  # image left (patient's right)
    left: _Lung  # image right (patient's left)
    heart_u: float
    heart_v: float
    heart_ctr: float  # cardiothoracic ratio of this (normal) heart
    heart_aspect: float
    heart_phi: float
    knob: float  # aortic knob prominence
    rib_c1: float
    rib_c2: float
    rib_top: float
    rib_step: float
    rib_growth: float
    rib_skew: float  # left/right vertical offset of the rib cage
    clav_v: float
    clav_slope: float
    spine_period: float
    spine_phase: float
    soft: float  # soft-tissue attenuation
    air: float  # lung air (negative attenuation)
    bone: float
    gain: float  # exposure curve
    gamma: float
    brightness: float
    noise: float
    blur: float  # pixels at 256
    sharpen: float
    breasts: float  # 0 = none
    bubble: float  # gastric bubble size, 0 = none


def _sample_patient(rng: np.random.Generator) -> _Patient:
    lung_w = _u(rng, 0.935, 1.035)
    apex = _u(rng, -0.785, -0.705)
    dome_r = _u(rng, 0.32, 0.40)

    def lung(dome: float, hilum_v: float) -> _Lung:
        ra = 0.40 * lung_w * _u(rng, 0.96, 1.04)
        ac = 0.43 * lung_w * _u(rng, 0.97, 1.03)
        vc = _u(rng, 0.30, 0.42)
        return _Lung(ac=ac, vc=vc, ra=ra, rv=vc - apex, dome=dome, dome_a=_u(rng, 0.38, 0.46),
                     dome_k=_u(rng, 0.26, 0.36), hilum_v=hilum_v)

    right = lung(dome_r, _u(rng, -0.04, 0.04))
    left = lung(dome_r + _u(rng, 0.03, 0.09), _u(rng, -0.12, -0.05))
    return _Patient(
        scale=_u(rng, 0.89, 0.97), cx=_u(rng, -0.025, 0.025), cy=_u(rng, 0.01, 0.06),
        theta=math.radians(_u(rng, -2.0, 2.0)),
        body_w=_u(rng, 0.92, 1.0), neck_w=_u(rng, 0.18, 0.22), shoulder_v=_u(rng, -0.97, -0.9),
        right=right, left=left,
        heart_u=_u(rng, 0.07, 0.13), heart_v=dome_r - _u(rng, 0.06, 0.14),
        heart_ctr=_u(rng, 0.38, 0.47), heart_aspect=_u(rng, 0.72, 0.88),
        heart_phi=math.radians(_u(rng, 18.0, 32.0)), knob=_u(rng, 0.04, 0.09),
        rib_c1=_u(rng, -0.32, -0.18), rib_c2=_u(rng, 0.65, 0.9), rib_top=apex + _u(rng, -0.06, 0.0),
        rib_step=_u(rng, 0.095, 0.115), rib_growth=_u(rng, 0.0, 0.012), rib_skew=_u(rng, -0.03, 0.03),
        clav_v=apex + _u(rng, 0.12, 0.2), clav_slope=_u(rng, -0.35, -0.15),
        spine_period=_u(rng, 0.085, 0.1), spine_phase=_u(rng, 0.0, 1.0),
        soft=_u(rng, 0.74, 0.8), air=_u(rng, 0.46, 0.52), bone=_u(rng, 0.9, 1.1),
        gain=_u(rng, 0.98, 1.22), gamma=_u(rng, 0.94, 1.06), brightness=_u(rng, -0.02, 0.02),
        noise=_u(rng, 0.013, 0.022), blur=_u(rng, 0.5, 0.9), sharpen=_u(rng, 0.24, 0.36),
        breasts=_u(rng, 0.03, 0.09) if rng.random() < 0.4 else 0.0,
        bubble=_u(rng, 0.05, 0.09) if rng.random() < 0.75 else 0.0,
    )


# ----------------------------------------------------------------------------------------------
# finding parameters (each from its own stream)
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------


class _Frame:
    """Pixel grid of one patient, in canonical coordinates, plus the inverse mapping for splatting."""

    def __init__(self, size: int, p: _Patient) -> None:
        self.size = size
        t = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
        self.y, self.x = np.meshgrid(t, t, indexing="ij")  # (S, S) image coordinates in [-1, 1]
        c, s = math.cos(p.theta), math.sin(p.theta)
        dx, dy = self.x - p.cx, self.y - p.cy
        self.u = (c * dx + s * dy) / p.scale  # (S, S) canonical
        self.v = (-s * dx + c * dy) / p.scale
        self.px = 2.0 / size / p.scale  # one pixel in canonical units
        self._p = p

    def to_pixels(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self._p
        c, s = math.cos(p.theta), math.sin(p.theta)
        x = p.cx + p.scale * (c * u - s * v)
        y = p.cy + p.scale * (s * u + c * v)
        return (y + 1.0) * (self.size / 2.0) - 0.5, (x + 1.0) * (self.size / 2.0) - 0.5

    def splat(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Accumulate weights at canonical points into an (S, S) image (nearest pixel)."""
        r, c = self.to_pixels(u, v)
        r, c = np.rint(r).astype(np.int64), np.rint(c).astype(np.int64)
        ok = (r >= 0) & (r < self.size) & (c >= 0) & (c < self.size)
        flat = np.bincount(r[ok] * self.size + c[ok], weights=w[ok], minlength=self.size * self.size)
        return flat.reshape(self.size, self.size).astype(np.float32)


def _heart_axes(p: _Patient, ctr: float) -> tuple[float, float]:
    """Semi-axes of the heart ellipse that give cardiothoracic ratio `ctr`."""
    thorax = (p.right.ac + p.right.ra) + (p.left.ac + p.left.ra)  # widest inner thorax
    half_w = 0.5 * ctr * thorax
    c, s = math.cos(p.heart_phi), math.sin(p.heart_phi)
    hx = half_w / math.sqrt(c * c + (p.heart_aspect * s) ** 2)
    return hx, hx * p.heart_aspect


def _dome(lung: _Lung, a: np.ndarray, lift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Diaphragm dome height D(a) and its slope along a (v grows downwards)."""
    t = (a - lung.dome_a) / 0.42
    k = np.where(t < 0, 0.35 * lung.dome_k, lung.dome_k)  # flatter towards the cardiophrenic angle
    return lung.dome - lift + k * t * t, k * 2.0 * t / 0.42


def _mediastinum(v: np.ndarray, side: int, knob: float) -> np.ndarray:
    """Half-width of the mediastinum on one side (side -1 image left, +1 image right)."""
    upper = 0.1 + 0.08 * _smoothstep((v + 0.3) / 0.5)
    if side > 0:  # aortic knob and pulmonary trunk on the patient's left
        upper = upper + knob * np.exp(-(((v + 0.38) / 0.07) ** 2)) + 0.4 * knob * np.exp(-(((v + 0.17) / 0.06) ** 2))
    return upper


def _sided(u: np.ndarray, right: np.ndarray, left: np.ndarray) -> np.ndarray:
    return np.where(u < 0, right, left)


def _vessel_tree(rng: np.random.Generator, n_primary: int = 14) -> list[np.ndarray]:
    """Random branching tree per lung in lateral coordinates (a, v) relative to the hilum.

    Returns [a, v, w] arrays of knot points for primaries and secondaries, resolution independent:
    shape (B, K+1) with K knots per branch; w is the vessel calibre at each knot.
    """
    k = 10
    ang0 = rng.uniform(-1.75, 1.95, n_primary)  # 0 = lateral, +pi/2 = down, -pi/2 = up
    length = rng.uniform(0.32, 0.62, n_primary)
    turns = rng.normal(0.0, 0.05, (n_primary, k)).cumsum(axis=1)
    ang = np.concatenate([ang0[:, None], ang0[:, None] + turns], axis=1)[:, :k]  # (B, K)
    seg = (length / k)[:, None]
    start_v = rng.uniform(-0.09, 0.09, n_primary)  # roots spread along the hilum
    start_a = rng.uniform(-0.02, 0.03, n_primary)
    a = start_a[:, None] + np.concatenate([np.zeros((n_primary, 1)), np.cumsum(seg * np.cos(ang), axis=1)], axis=1)
    v = start_v[:, None] + np.concatenate([np.zeros((n_primary, 1)), np.cumsum(seg * np.sin(ang), axis=1)], axis=1)
    w = np.linspace(1.0, 0.15, k + 1)[None, :].repeat(n_primary, axis=0)
    # two secondaries per primary, leaving at 20-70% of its length at +-(20-50) degrees
    n2 = 2 * n_primary
    parent = np.repeat(np.arange(n_primary), 2)
    at = rng.integers(2, 8, n2)
    sign = np.where(rng.random(n2) < 0.5, -1.0, 1.0)
    b_ang0 = ang[parent, np.minimum(at, k - 1)] + sign * rng.uniform(0.35, 0.9, n2)
    b_len = length[parent] * (1.0 - at / k) * rng.uniform(0.5, 0.9, n2)
    b_turns = rng.normal(0.0, 0.06, (n2, k)).cumsum(axis=1)
    b_ang = np.concatenate([b_ang0[:, None], b_ang0[:, None] + b_turns], axis=1)[:, :k]
    b_seg = (b_len / k)[:, None]
    ba = a[parent, at][:, None] + np.concatenate([np.zeros((n2, 1)), np.cumsum(b_seg * np.cos(b_ang), axis=1)], axis=1)
    bv = v[parent, at][:, None] + np.concatenate([np.zeros((n2, 1)), np.cumsum(b_seg * np.sin(b_ang), axis=1)], axis=1)
    bw = w[parent, at][:, None] * np.linspace(0.7, 0.1, k + 1)[None, :]
    return [np.concatenate([a, ba]), np.concatenate([v, bv]), np.concatenate([w, bw])]


def _resample(knots: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of (B, K+1) knot rows at n evenly spaced points each -> (B, n)."""
    k = knots.shape[1] - 1
    t = np.linspace(0.0, k, n)
    i = np.minimum(t.astype(np.int64), k - 1)
    f = t - i
    return knots[:, i] * (1.0 - f) + knots[:, i + 1] * f


@dataclass
class _Geometry:
    """Heart and lung fields of one patient, after the findings that move them."""

    heart: np.ndarray  # (S, S) signed margin, > 0 inside the heart
    sides: dict[int, dict[str, np.ndarray]]  # per lung (-1 image left, +1 image right): a, ell, m, normal, dome
    lung_m: np.ndarray  # (S, S) signed margin, > 0 inside either lung
    lung_in: np.ndarray  # (S, S) soft lung indicator in [0, 1]
    lift: dict[int, float]


def _geometry(fr: _Frame, p: _Patient, fp: dict[str, dict[str, float]]) -> _Geometry:
    """Each lung = min(apex/lateral ellipse, mediastinum, outside the heart, above the dome)."""
    u, v = fr.u, fr.v
    ctr, hu, hv = p.heart_ctr, p.heart_u, p.heart_v
    if "cardiomegaly" in fp:
        c = fp["cardiomegaly"]
        ctr, hu, hv = c["ctr"], hu + c["shift"], hv + 0.5 * c["shift"]  # enlarges down and to the left
    hx, hy = _heart_axes(p, ctr)
    ru, rv = _rotated(u, v, hu, hv, p.heart_phi)
    heart = _ellipse_margin(ru, rv, 0.0, 0.0, hx, hy)
    lift = {-1: 0.0, 1: 0.0}
    if "hemidiaphragm_elevation" in fp:
        lift[int(fp["hemidiaphragm_elevation"]["side"])] = fp["hemidiaphragm_elevation"]["lift"]
    sides: dict[int, dict[str, np.ndarray]] = {}
    for side, lung in ((-1, p.right), (1, p.left)):
        a = side * u  # (S, S) lateral coordinate of this lung
        ell = _ellipse_margin(a, v, lung.ac, lung.vc, lung.ra, lung.rv)
        base = np.minimum(np.minimum(ell, a - _mediastinum(v, side, p.knob)), -heart)
        d0, slope = _dome(lung, a)
        norm = 1.0 / np.sqrt(1.0 + slope * slope)
        sides[side] = dict(a=a, ell=ell, normal=np.minimum(base, (d0 - v) * norm),
                           m=np.minimum(base, (d0 - lift[side] - v) * norm), dome=d0 - lift[side])
    lung_m = np.maximum(sides[-1]["m"], sides[1]["m"])
    return _Geometry(heart=heart, sides=sides, lung_m=lung_m, lung_in=_ramp(lung_m, 0.7 * fr.px), lift=lift)


def _heart_mask(fr: _Frame, p: _Patient, geo: _Geometry) -> np.ndarray:
    """The heart shadow above the diaphragm (its lower part merges with the abdomen)."""
    dome = np.minimum(_dome(p.right, -fr.u)[0], _dome(p.left, fr.u)[0])
    return (geo.heart > 0) & (fr.v < dome + 0.02)


def _soft_tissue(fr: _Frame, p: _Patient) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation of the soft-tissue body (neck, shoulders, chest wall, breasts) and its margin."""
    u, v, eps = fr.u, fr.v, 0.7 * fr.px
    au = np.abs(u)
    # chest wall, slightly barrel shaped, broadening into the shoulders at the top
    torso = p.body_w * (1.0 - 0.07 * (v - 0.2) ** 2 + 0.14 * _smoothstep((-0.4 - v) / 0.35)) - au
    sh_t = np.clip((au - p.neck_w) / (p.body_w - p.neck_w), 0.0, 1.0)
    shoulder = v - (p.shoulder_v + 0.22 * sh_t**1.3)  # trapezius slope down to the shoulders
    body_m = _smin(torso, shoulder, 0.12)
    body_m = -_smin(-body_m, -np.minimum(p.neck_w - au, torso), 0.08)  # the neck joins with a curve
    bm = np.clip(body_m, 0.0, None)
    body = np.sqrt(bm * np.clip(2.0 * p.body_w - bm, 0.0, None)) / p.body_w * _ramp(body_m, eps)  # chord
    atten = p.soft * body + 0.12 * body * _smoothstep((-0.45 - v) / 0.35)  # + shoulder girdle muscles
    if p.breasts > 0:
        br = _ellipse_margin(au, v, 0.52, 0.22, 0.4, 0.32)
        atten += p.breasts * _ramp(br, 3 * eps) * _smoothstep(br / 0.12 + 0.3) * _ramp(v, 0.1)
    return atten, body_m


def _airways(fr: _Frame, p: _Patient, geo: _Geometry) -> np.ndarray:
    """Attenuation removed by the trachea, main bronchi and the gastric bubble (under the left dome)."""
    u, v, eps = fr.u, fr.v, 0.7 * fr.px
    trach = _ramp(0.032 - np.abs(u + 0.01 * v), eps) * _ramp(-0.3 - v, 0.02)
    bronchi = sum(_ramp(0.018 - np.abs((v + 0.3) - 0.7 * s * u) / 1.22, eps) * _ramp(v + 0.3, 0.01)
                  * _ramp(0.12 - np.abs(u), 0.03) for s in (-1.0, 1.0))
    out = 0.14 * trach + 0.07 * bronchi
    if p.bubble > 0:
        d_l = float(_dome(p.left, np.float32(0.38), geo.lift[1])[0])
        vc = d_l + p.bubble + 0.04
        bub = _ellipse_margin(u, v, 0.38, vc, 1.6 * p.bubble, p.bubble)
        out = out + 0.22 * _ramp(bub, eps) * _ramp(vc - v, eps)  # air above a flat fluid level
    return out


def _bones(fr: _Frame, p: _Patient, geo: _Geometry, body_m: np.ndarray) -> np.ndarray:
    """Ribs (posterior and anterior arcs), clavicles, humeral heads, spine and scapulae."""
    u, v, px = fr.u, fr.v, fr.px
    eps = 0.7 * px
    au = np.abs(u)
    bone = np.zeros_like(u)
    lat = _sided(u, geo.sides[-1]["ell"], geo.sides[1]["ell"])  # > 0 inside the apex/lateral ellipse
    # posterior ribs: arcs v = v_k + c1*a + c2*a^2; the rib index comes from interpolating the arc offset
    nr = 11
    centers = p.rib_top + np.cumsum(p.rib_step + p.rib_growth * np.arange(nr + 2)) - p.rib_step
    r = v - (p.rib_c1 * au + p.rib_c2 * au * au) + p.rib_skew * np.sign(u)
    kf = np.interp(r, centers, np.arange(nr + 2, dtype=np.float64)).astype(np.float32)
    spacing = np.interp(r, centers[1:], np.diff(centers)).astype(np.float32)
    slope = p.rib_c1 + 2.0 * p.rib_c2 * au
    d_perp = np.abs(kf - np.rint(kf)) * spacing / np.sqrt(1.0 + slope * slope)  # distance to the rib centre
    half = 0.2 * p.rib_step
    wl = _smoothstep((u + 0.2) / 0.4)  # blend the two domes across the midline (no seam)
    below = v - (geo.sides[-1]["dome"] * (1.0 - wl) + geo.sides[1]["dome"] * wl)
    win = (_ramp(au - 0.07, 0.02) * _ramp(lat + 0.1, 0.03) * _ramp(np.rint(kf) - 0.5, 0.01)
           * _ramp(nr - 0.5 - kf, 0.2) * (1.0 - 0.6 * _smoothstep(below / 0.12)))  # fade into the abdomen
    x = np.clip(d_perp / half, 0.0, 1.0)
    bone += 0.11 * win * _ramp(half - d_perp, eps) * (0.45 + 0.55 * x**4)  # brighter cortices
    # anterior ribs: fainter arcs sloping down towards the sternum
    r2 = v + 0.5 * au - 0.25 * au * au
    a_centers = p.rib_top + 0.3 + 0.15 * np.arange(-1, 8)
    kf2 = np.interp(r2, a_centers, np.arange(9, dtype=np.float64)).astype(np.float32)
    d2 = np.abs(kf2 - np.rint(kf2)) * 0.15 / np.sqrt(1.0 + (0.5 - 0.5 * au) ** 2)
    win2 = _ramp(au - 0.3, 0.06) * _ramp(lat + 0.05, 0.03) * _ramp(np.rint(kf2) - 0.5, 0.01) * _ramp(7.5 - kf2, 0.2)
    bone += 0.07 * win2 * _ramp(0.022 - d2, eps)
    # clavicles: S-shaped, from the sternal notch out to the shoulders
    ac = au - 0.07
    vcl = p.clav_v + p.clav_slope * ac + 0.35 * ac * ac - 0.05 * np.sin(ac * 5.0)
    cl_half = 0.03 + 0.012 * np.exp(-ac / 0.06)
    dcl = np.abs(v - vcl)
    clav = _ramp(cl_half - dcl, eps) * _ramp(ac, 0.01) * _ramp(0.62 - ac, 0.02)
    bone += 0.22 * clav * (0.6 + 0.4 * np.clip(dcl / cl_half, 0.0, 1.0) ** 2)
    # humeral heads inside the shoulders
    hum = _ellipse_margin(au, v, 1.1 * p.body_w - 0.12, p.shoulder_v + 0.38, 0.15, 0.15)
    bone += 0.3 * _ramp(hum, eps) * np.sqrt(np.clip(hum / 0.16, 0.0, 1.0)) * _ramp(body_m + 0.2, 0.02)
    # spine: vertebral bodies with end plates and disc spaces, pedicles, spinous processes
    ws = 0.058 + 0.012 * np.clip(v + 1.0, 0.0, 2.0)
    us = u - 0.004 * v
    aus = np.abs(us)
    ph = v / p.spine_period + p.spine_phase
    fv = ph - np.floor(ph) - 0.5  # -0.5..0.5 within one vertebra
    disc = np.exp(-(((np.abs(fv) - 0.5) / 0.08) ** 2))
    spine = np.sqrt(np.clip(1.0 - (us / ws) ** 2, 0.0, 1.0)) * (0.55 - 0.3 * disc)
    spine += 0.35 * np.exp(-(((aus - ws) / 0.006) ** 2)) * _ramp(ws + 0.01 - aus, eps)  # cortical edges
    ped = np.sqrt(((aus - 0.62 * ws) / 0.016) ** 2 + ((fv + 0.12) * p.spine_period / 0.022) ** 2)
    spine += 0.45 * np.exp(-(((ped - 1.0) / 0.35) ** 2))  # pedicles: oval cortical rings
    spine += 0.3 * np.exp(-((us / 0.012) ** 2) - ((fv - 0.25) * p.spine_period / 0.02) ** 2)  # spinous process
    bone += 0.11 * spine
    # scapulae: a faint plate over the upper lateral zones with a brighter medial border
    sc = au - (0.62 + 0.16 * (v + 0.8))
    zone = _ramp(-0.05 - v, 0.08) * _ramp(v + 0.95, 0.05)
    bone += zone * (0.035 * _ramp(sc, 2 * eps) + 0.03 * np.exp(-((sc / (1.2 * px + 0.004)) ** 2)))
    return p.bone * bone * _ramp(body_m, eps)


def _vessels(fr: _Frame, p: _Patient, trees: tuple[list[np.ndarray], list[np.ndarray]]) -> np.ndarray:
    """Hilar shadows and branching pulmonary vessels (splatted, blurred per calibre class)."""
    u, v, px = fr.u, fr.v, fr.px
    sig = fr.size / 256.0
    calibres = (0.3, 0.6)  # thinner than 0.3 / 0.6 / thicker: three blur scales
    layers = np.zeros((3, fr.size, fr.size), np.float32)
    out = np.zeros_like(u)
    for side, lung, tree in ((-1, p.right, trees[0]), (1, p.left, trees[1])):
        a0, v0 = 0.19 + 0.05 * (side > 0), lung.hilum_v
        out += 0.1 * np.exp(-(((side * u - a0 - 0.02) / 0.045) ** 2) - ((v - v0 - 0.03) / 0.09) ** 2)
        ka, kv, kw = tree
        n = max(8, int(np.ceil(0.62 / (0.5 * px))))  # samples per branch, about half a pixel apart
        aa, vv, ww = _resample(ka, n), _resample(kv, n), _resample(kw, n)  # (B, n)
        uu = side * (a0 + aa * (0.8 + 0.25 * lung.ra / 0.4))  # stretch the tree to this lung
        vv = v0 + vv * (0.9 + 0.3 * (lung.dome - v0) / 0.4)
        cls = np.digitize(ww, calibres)  # (B, n) calibre class 0..2
        for i in range(3):
            layers[i] += fr.splat(uu.ravel(), vv.ravel(), (ww * (cls == i)).ravel())
    for layer, sigma in zip(layers, (0.7, 1.1, 1.8)):  # line width ~ calibre, amplitude ~ calibre
        out += ndimage.gaussian_filter(layer, sigma * sig) * (0.36 * sig * sigma)
    return out


def _pneumothorax(fr: _Frame, p: _Patient, geo: _Geometry, f: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pleural space between chest wall and the retracted visceral pleura: (mask, soft space, pleural line)."""
    side = int(f["side"])
    lung = p.right if side < 0 else p.left
    sm = geo.sides[side]
    apex_v = lung.vc - lung.rv
    rim = f["rim"] * (1.0 - _smoothstep((fr.v - apex_v) / f["extent"]))  # (S, S) widest at the apex
    space = np.minimum(sm["m"], rim - sm["ell"])  # > 0 between chest wall and visceral pleura
    line = np.exp(-(((sm["ell"] - rim) / (0.8 * fr.px)) ** 2)) * _ramp(sm["m"] + fr.px, 0.7 * fr.px) * (rim > fr.px)
    return space > 0, _ramp(space, 0.7 * fr.px), line


def _effusion(fr: _Frame, p: _Patient, geo: _Geometry, f: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Fluid under a meniscus (higher laterally) at a lung base, sometimes both: (mask, fluid fraction)."""
    mask = np.zeros(fr.u.shape, bool)
    fluid = np.zeros_like(fr.u)
    for side, scale in ((int(f["side"]), 1.0), (-int(f["side"]), f["other"])):
        if scale <= 0:
            continue
        lung = p.right if side < 0 else p.left
        sm = geo.sides[side]
        lateral = lung.ac + lung.ra
        depth = scale * f["depth"]
        cp_v = float(_dome(lung, np.float32(lateral), geo.lift[side])[0])  # costophrenic angle level
        level = cp_v - depth - f["meniscus"] * _smoothstep((sm["a"] - 0.15) / (lateral - 0.15))
        below = fr.v - level  # > 0 under the meniscus
        mask |= (below > 0) & (sm["m"] > 0)
        fluid += _ramp(sm["m"], 0.7 * fr.px) * np.clip(below / (f["soft"] + 0.15 * depth), 0.0, 1.0)
    return mask, f["contrast"] * fluid


def _reticular(fr: _Frame, geo: _Geometry, f: dict[str, float], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fine net of lines (zero crossings of band-pass noise) in the lower zones: (mask, density)."""
    S = fr.size
    s1 = max(0.6, f["scale"] * S)
    noise = rng.standard_normal((S, S)).astype(np.float32)
    band = ndimage.gaussian_filter(noise, s1) - ndimage.gaussian_filter(noise, 2.5 * s1)  # band-pass
    band /= band.std() + 1e-8
    net = np.exp(-((band / 0.35) ** 2))  # thin ridges along the zero crossings: a cell network
    sides = int(f["sides"])
    which = np.ones_like(fr.u) if sides == 0 else ((fr.u < 0) if sides == 1 else (fr.u >= 0)).astype(np.float32)
    zone = _smoothstep((fr.v - f["top"]) / 0.2 + 0.5) * which  # fades in over the zone's upper edge
    periph = 0.55 + 0.45 * (1.0 - _smoothstep(geo.lung_m / 0.3))  # subpleural predominance
    return (zone > 0.5) & (geo.lung_m > 0), f["contrast"] * net * zone * geo.lung_in * periph


def _place(fr: _Frame, geo: _Geometry, side: int, radius: float, pick: float, exclude: list[np.ndarray]) -> tuple[float, float]:
    """A lesion centre inside one lung field, at least ~0.6 radius from its edge (deterministic pick)."""
    sm = geo.sides[side]
    ok = sm["m"] > 0.6 * radius
    for ex in exclude:
        ok &= ~ex
    for fallback in (sm["m"] > 0, geo.lung_m > 0):
        if ok.any():
            break
        ok = fallback
    idx = np.flatnonzero(ok)
    if idx.size == 0:  # no lung on the grid at all (not for sane poses): lateral mid-lung
        return 0.45 * side, 0.0
    j = idx[min(int(pick * idx.size), idx.size - 1)]
    return float(fr.u.flat[j]), float(fr.v.flat[j])


def _nodule(fr: _Frame, p: _Patient, geo: _Geometry, f: dict[str, float], exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A round opacity (a sphere's projection) in one lung field."""
    rad = max(f["radius"] * 2.0 / p.scale, 1.6 * fr.px)  # at least ~3 pixels across
    cu, cv = _place(fr, geo, int(f["side"]), rad, f["pick"], exclude)
    rho = np.sqrt((fr.u - cu) ** 2 + (fr.v - cv) ** 2)
    ball = np.sqrt(np.clip(1.0 - (rho / rad) ** 2, 0.0, 1.0)) * _ramp(rad - rho, 0.7 * fr.px)
    return rho < rad, f["contrast"] * ball


def _mass(fr: _Frame, p: _Patient, geo: _Geometry, f: dict[str, float], exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    rad = max(f["radius"] * 2.0 / p.scale, 3.0 * fr.px)
    cu, cv = _place(fr, geo, int(f["side"]), rad, f["pick"], exclude)
    du, dv = fr.u - cu, fr.v - cv
    rho = np.sqrt(du * du + dv * dv)
    th = np.arctan2(dv, du)
    edge = 1.0 + sum(f[f"h{k}"] * np.cos(k * th + f[f"p{k}"]) for k in range(2, 7))  # lobulated outline
    edge = edge + f["spikes"] * np.maximum(np.cos(13 * th + f["spike_phase"]), 0.0) ** 6  # short spicules
    rr = rad * edge
    dens = np.clip(1.0 - (rho / rr) ** 2, 0.0, 1.0) ** 0.35 * _ramp(rr - rho, 0.7 * fr.px)
    return rho < rr, f["contrast"] * dens


def _hiatal_hernia(fr: _Frame, p: _Patient, geo: _Geometry, f: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Retrocardiac round opacity above the diaphragm, with an air cap over a horizontal fluid level."""
    rad = max(f["radius"], 2.0 * fr.px)
    rv = rad * f["aspect"]
    d_mid = float(min(_dome(p.right, np.float32(0.0))[0], _dome(p.left, np.float32(0.0))[0]))
    cu, cv = 0.03 + f["du"], d_mid - f["rise"] * rv
    hm = _ellipse_margin(fr.u, fr.v, cu, cv, rad, rv)
    eps = 0.7 * fr.px
    dens = f["contrast"] * np.sqrt(np.clip(hm / rad, 0.0, 1.0)) * _ramp(hm, eps)
    if f["air"] > 0:  # fluid levels are horizontal in the image (patient upright), not in patient axes
        cy = p.cy + p.scale * (math.sin(p.theta) * cu + math.cos(p.theta) * cv)
        level = cy - p.scale * rv * f["level"]
        dens = dens - f["air"] * _ramp(level - fr.y, eps * p.scale) * _ramp(hm - 0.012, eps)
    return hm > 0, dens


def _expose(atten: np.ndarray, p: _Patient, seed: int) -> np.ndarray:
    """Attenuation -> displayed brightness: exposure curve, blur, edge enhancement, quantum noise."""
    S = atten.shape[0]
    sig = S / 256.0
    img = (1.0 - np.exp(-p.gain * np.clip(atten, 0.0, None))) / (1.0 - math.exp(-p.gain * 1.25))
    img = np.clip(img, 0.0, 1.0) ** p.gamma + p.brightness
    img = ndimage.gaussian_filter(img, p.blur * sig)
    img = img + p.sharpen * (img - ndimage.gaussian_filter(img, 6.0 * sig, truncate=3.0))  # unsharp mask
    rng = np.random.default_rng([seed, _STREAM_NOISE])
    grain = ndimage.gaussian_filter(rng.standard_normal((S, S)).astype(np.float32), 0.5 * sig) * 1.6
    img = img + p.noise * np.sqrt(0.25 + np.clip(img, 0.0, 1.0)) * grain  # more noise where fewer photons
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _nonempty(mask: np.ndarray, effect: np.ndarray) -> np.ndarray:
    """A finding's mask, never empty: on very small grids fall back to where its effect is largest."""
    if mask.any():
        return mask
    mag = np.abs(effect)
    return mag >= mag.max() if mag.max() > 0 else np.zeros_like(mask)


def _setup(seed: int, size: int, findings: Iterable[str]) -> tuple[
        _Patient, tuple[list[np.ndarray], list[np.ndarray]], dict[str, np.random.Generator], dict[str, dict[str, float]]]:
    """Validate arguments and draw the patient, its vessel trees and each finding's parameters."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise ValueError(f"size must be an integer >= {_MIN_SIZE} pixels, got {size!r}")
    fs = _check_findings((findings,) if isinstance(findings, str) else findings)
    rng = np.random.default_rng([int(seed), _STREAM_ANATOMY])
    p = _sample_patient(rng)
    trees = (_vessel_tree(rng), _vessel_tree(rng))
    streams = {f: np.random.default_rng([int(seed), _STREAM_FINDING0 + FINDINGS.index(f)]) for f in fs}
    return p, trees, streams, {f: _finding_params(f, streams[f]) for f in fs}


def anatomy(seed: int, size: int = 256, findings: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Bool (size, size) masks of the ``lungs``, the ``heart`` (above the diaphragm) and the ``body``
    of ``render(seed, size, findings)`` (findings that move organs, e.g. cardiomegaly, included).

    Also reports ``ctr``, the cardiothoracic ratio (heart width / widest inner thorax width), as a
    0-d float array. Useful to restrict a saliency map to the lungs or to check the anatomy.
    """
    p, _, _, fp = _setup(seed, size, findings)
    fr = _Frame(int(size), p)
    geo = _geometry(fr, p, fp)
    _, body_m = _soft_tissue(fr, p)
    heart = _heart_mask(fr, p, geo)
    lungs = geo.lung_m > 0
    hc, lc = np.flatnonzero(heart.any(axis=0)), np.flatnonzero(lungs.any(axis=0))
    ctr = (hc[-1] - hc[0] + 1) / (lc[-1] - lc[0] + 1) if hc.size and lc.size else float("nan")
    return {"lungs": lungs, "heart": heart, "body": body_m > 0, "ctr": np.asarray(ctr, dtype=np.float64)}


def render(seed: int, size: int = 256, findings: Iterable[str] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render one synthetic PA chest radiograph.

    Returns ``(image, masks)``: a float32 (size, size) array in [0, 1] (bright = dense, as displayed)
    and one bool (size, size) mask per requested finding. Pure: the same ``seed``, ``size`` and
    ``findings`` give identical output. Anatomy and noise depend only on ``seed`` and each finding
    draws from its own stream, so ``render(s, n, ("mass",))`` differs from ``render(s, n)`` only
    around the mass.
    """
    p, trees, streams, fp = _setup(seed, size, findings)
    seed, size, fs = int(seed), int(size), tuple(fp)

    fr = _Frame(size, p)
    geo = _geometry(fr, p, fp)
    masks: dict[str, np.ndarray] = {}
    effects: dict[str, np.ndarray] = {}

    atten, body_m = _soft_tissue(fr, p)
    # lung air: thin at the edges, full depth inside
    air = p.air * geo.lung_in * (0.3 + 0.7 * np.sqrt(np.clip(geo.lung_m / 0.22, 0.0, 1.0)))
    vessel_vis = geo.lung_in * _smoothstep(geo.lung_m / 0.3)  # fade out in the outer third
    if "pneumothorax" in fp:
        f = fp["pneumothorax"]
        masks["pneumothorax"], space, line = _pneumothorax(fr, p, geo, f)
        vessel_vis = vessel_vis * (1.0 - space)  # no lung markings beyond the pleural line
        air = air + f["lucency"] * space
        atten += f["line"] * line * (1.0 - 0.5 * space)
        effects["pneumothorax"] = space + line
    if "pleural_effusion" in fp:
        masks["pleural_effusion"], fluid = _effusion(fr, p, geo, fp["pleural_effusion"])
        air = air * (1.0 - fluid) + 0.1 * fluid * geo.lung_in * p.air  # fluid replaces air
        vessel_vis = vessel_vis * (1.0 - fluid)
        effects["pleural_effusion"] = fluid
    atten -= air + _airways(fr, p, geo)
    atten += _bones(fr, p, geo, body_m)
    atten += 0.8 * p.soft * vessel_vis * _vessels(fr, p, trees)

    if "hemidiaphragm_elevation" in fp:
        sm = geo.sides[int(fp["hemidiaphragm_elevation"]["side"])]
        masks["hemidiaphragm_elevation"] = (sm["normal"] > 0) & ~(sm["m"] > 0)
        effects["hemidiaphragm_elevation"] = sm["normal"] - sm["m"]
    if "cardiomegaly" in fp:
        masks["cardiomegaly"] = _heart_mask(fr, p, geo)
        effects["cardiomegaly"] = np.clip(geo.heart, 0.0, None)
    if "reticular_pattern" in fp:
        masks["reticular_pattern"], dens = _reticular(fr, geo, fp["reticular_pattern"], streams["reticular_pattern"])
        atten += dens
        effects["reticular_pattern"] = dens
    exclude = [masks[k] for k in ("pneumothorax", "pleural_effusion") if k in masks]
    for name, fn in (("nodule", _nodule), ("mass", _mass)):
        if name in fp:
            masks[name], dens = fn(fr, p, geo, fp[name], exclude)
            atten += dens
            effects[name] = dens
    if "hiatal_hernia" in fp:
        masks["hiatal_hernia"], dens = _hiatal_hernia(fr, p, geo, fp["hiatal_hernia"])
        atten += dens
        effects["hiatal_hernia"] = dens

    img = _expose(atten, p, seed)
    return img, {f: np.ascontiguousarray(_nonempty(masks[f], effects[f]), dtype=bool) for f in fs}


# ----------------------------------------------------------------------------------------------
# writing a phantom dataset
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomSpec:
    """What `generate` was asked for; written to `phantom.json` beside the manifest."""

    n: int
    size: int
    seed: int
    findings: tuple[str, ...]
    prevalence: float
    test_fraction: float
    version: int = PHANTOM_VERSION


def image_seed(seed: int, index: int) -> int:
    """The `render` seed of image `index` (0-based) of a dataset generated with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def _assign_labels(n: int, findings: tuple[str, ...], prevalence: float, test_fraction: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split and labels: (is_test bool (n,), labels uint8 (n, F)).

    Each finding is present independently with probability `prevalence`; then, in each split with
    at least two images, a finding that has only one class gets one label flipped, so every finding
    has positives and negatives in both splits whenever n allows it.
    """
    n_test = int(round(n * test_fraction))
    if 0 < test_fraction < 1 and n >= 4:
        n_test = min(max(n_test, 2), n - 2)
    is_test = np.zeros(n, bool)
    is_test[rng.permutation(n)[:n_test]] = True
    labels = (rng.random((n, len(findings))) < prevalence).astype(np.uint8)  # (n, F)
    for split in (is_test, ~is_test):
        idx = np.flatnonzero(split)
        if idx.size < 2:
            continue
        for j in range(len(findings)):
            col = labels[idx, j]
            if col.min() == col.max():
                labels[idx[rng.integers(idx.size)], j] = 1 - col[0]
    return is_test, labels


def _save_png(path: Path, arr_u8: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr_u8).save(path, format="PNG", compress_level=3)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x, y, w, h) in pixels of a non-empty bool mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def _is_phantom_dir(path: Path) -> bool:
    return (path / "phantom.json").is_file()


def generate(out_dir: str | Path, n: int, size: int = 256, seed: int = 0, findings: Iterable[str] = FINDINGS,
             prevalence: float = 0.3, test_fraction: float = 0.25, on_event: OnEvent | None = None,
             stop: threading.Event | None = None) -> Path:
    """Write a phantom dataset to `out_dir` and return the path of its `manifest.csv`.

    Layout: ``images/ph00001.png`` (8-bit gray), ``manifest.csv`` (path, patient_id, split, one 0/1
    column per finding), ``masks.csv`` (path, finding, mask_path) with ``masks/<id>_<finding>.png``
    (0/255), ``boxes.csv`` (path, finding, x, y, w, h: the bounding box of each mask) and
    ``phantom.json`` (the parameters). One image per patient. Deterministic in all arguments.

    The folder is written atomically: into a temporary sibling that is renamed into place. An
    existing `out_dir` is replaced only if it is empty or an earlier phantom (has phantom.json).
    Cancelling through `stop` removes the partial output (regenerating is cheap and deterministic).
    """
    out_dir = Path(out_dir)
    fs = _check_findings((findings,) if isinstance(findings, str) else findings)
    if not fs:
        raise ValueError(f"choose at least one finding from {list(FINDINGS)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of images) must be a positive integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise ValueError(f"size must be an integer >= {_MIN_SIZE} pixels, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must be strictly between 0 and 1, got {prevalence!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not _is_phantom_dir(out_dir))):
        raise FileExistsError(f"{out_dir} exists and is not an earlier phantom output; "
                              "choose a new or empty folder (a phantom is never written over other files)")
    n, size, seed = int(n), int(size), int(seed)
    spec = PhantomSpec(n=n, size=size, seed=seed, findings=fs, prevalence=float(prevalence),
                       test_fraction=float(test_fraction))

    is_test, labels = _assign_labels(n, fs, prevalence, test_fraction, np.random.default_rng([seed, 0x5EED]))
    width = max(5, len(str(n)))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    try:
        manifest, mask_rows, box_rows = [], [], []
        for i in range(n):
            check_stop(stop)
            image_id = f"ph{i + 1:0{width}d}"
            rel = f"images/{image_id}.png"
            present = tuple(f for f, y in zip(fs, labels[i]) if y)
            img, masks = render(image_seed(seed, i), size, present)
            _save_png(tmp / rel, np.round(img * 255.0).astype(np.uint8))
            for f in present:
                mrel = f"masks/{image_id}_{f}.png"
                _save_png(tmp / mrel, masks[f].astype(np.uint8) * 255)
                mask_rows.append([rel, f, mrel])
                box_rows.append([rel, f, *_box(masks[f])])
            manifest.append([rel, image_id, "test" if is_test[i] else "train", *(int(y) for y in labels[i])])
            if on_event is not None and ((i + 1) % 10 == 0 or i + 1 == n):
                emit(on_event, step=i + 1, total=n, message=f"phantom: {i + 1}/{n} images")
        _write_csv(tmp / "manifest.csv", ["path", "patient_id", "split", *fs], manifest)
        _write_csv(tmp / "masks.csv", ["path", "finding", "mask_path"], mask_rows)
        _write_csv(tmp / "boxes.csv", ["path", "finding", "x", "y", "w", "h"], box_rows)
        (tmp / "phantom.json").write_text(json.dumps({**asdict(spec), "findings": list(fs)}, indent=2) + "\n")
        replace_dir(tmp, out_dir)  # an empty folder or an earlier phantom is moved aside, swapped, deleted
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "manifest.csv"
