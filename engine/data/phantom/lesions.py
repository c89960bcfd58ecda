"""Each finding as a change of the physics (never paint over the result): pneumothorax, effusion,
reticular pattern, nodule, mass and hiatal hernia; each returns its mask and its attenuation effect."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from engine.data.phantom.geometry import _dome, _Frame, _Geometry
from engine.data.phantom.patient import _Patient
from engine.data.phantom.shapes import _ellipse_margin, _ramp, _smoothstep


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
