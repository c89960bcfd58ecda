"""Everything random about one phantom patient (pose, body, lungs, heart, bones, exposure), drawn
from the anatomy stream."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.data.phantom.shapes import _u


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
