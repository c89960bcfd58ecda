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

Layout of this package: ``findings`` (names, descriptions, each finding's draws), ``patient`` (one
patient's random anatomy), ``shapes`` (vectorized helpers), ``geometry`` (pixel grid, organ
outlines), ``layers`` (normal anatomy), ``lesions`` (each finding's physics), ``render`` (`render`,
`anatomy`) and ``dataset`` (`generate`). Import the public names from ``engine.data.phantom``.
"""
from __future__ import annotations

from engine.data.phantom.dataset import PhantomSpec, generate, image_seed
from engine.data.phantom.findings import (DIFFUSE_FINDINGS, FINDINGS, FOCAL_FINDINGS, PHANTOM_VERSION, describe_findings,
                                          is_focal)
from engine.data.phantom.render import anatomy, render

__all__ = ["DIFFUSE_FINDINGS", "FINDINGS", "FOCAL_FINDINGS", "PHANTOM_VERSION", "PhantomSpec", "anatomy",
           "describe_findings", "generate", "image_seed", "is_focal", "render"]
