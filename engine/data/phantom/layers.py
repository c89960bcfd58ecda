"""Normal anatomy as attenuation layers: soft tissue, airways, bones and the pulmonary vessel tree."""
from __future__ import annotations



import numpy as np
from scipy import ndimage

from engine.data.phantom.geometry import _dome, _Frame, _Geometry, _resample, _sided
from engine.data.phantom.patient import _Patient
from engine.data.phantom.shapes import _ellipse_margin, _ramp, _smin, _smoothstep


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
