"""The pixel grid of one patient in canonical coordinates (`_Frame`) and the organ geometry derived
from the patient and the findings that move organs (`_Geometry`: lungs, heart, diaphragm domes)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.data.phantom.patient import _Lung, _Patient
from engine.data.phantom.shapes import _ellipse_margin, _ramp, _rotated, _smoothstep


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
