"""`render(seed, size, findings)` and `anatomy(...)`: one synthetic radiograph with its masks, pure
and deterministic (see engine.data.phantom)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from engine.data.phantom.findings import (_check_findings, _finding_params, FINDINGS, _MIN_SIZE, _STREAM_ANATOMY,
                                          _STREAM_FINDING0, _STREAM_NOISE)
from engine.data.phantom.geometry import _Frame, _Geometry, _geometry, _heart_mask, _vessel_tree
from engine.data.phantom.layers import _airways, _bones, _soft_tissue, _vessels
from engine.data.phantom.lesions import _effusion, _hiatal_hernia, _mass, _nodule, _pneumothorax, _reticular
from engine.data.phantom.patient import _Patient, _sample_patient
from engine.data.phantom.shapes import _smoothstep


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

    _organ_and_density_findings(fr, p, geo, fp, streams, atten, masks, effects)

    img = _expose(atten, p, seed)
    return img, {f: np.ascontiguousarray(_nonempty(masks[f], effects[f]), dtype=bool) for f in fs}


def _organ_and_density_findings(fr: _Frame, p: _Patient, geo: _Geometry, fp: dict[str, dict[str, float]],
                                streams: dict[str, np.random.Generator], atten: np.ndarray,
                                masks: dict[str, np.ndarray], effects: dict[str, np.ndarray]) -> None:
    """`render`'s second half: the findings that move an organ (raised dome, enlarged heart) or add
    density (reticular pattern, nodule, mass, hiatal hernia). Adds each one's density to `atten`
    (S, S) in place, in this order, and its mask and effect to `masks` / `effects`."""
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
