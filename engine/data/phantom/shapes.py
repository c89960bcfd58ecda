"""Small vectorized shape helpers of the phantom renderer: soft ramps and minima, smoothstep, ellipse
margins, rotations (all on (S, S) coordinate grids), and the uniform draw `_u`."""
from __future__ import annotations

import math

import numpy as np



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
