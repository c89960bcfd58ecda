"""Model-parameter randomization test for saliency maps (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

A map that explains what a classifier learned must change when the learned weights are destroyed. For a
trained backbone + head (`ExplainModel`) `randomized(model, part, seed)` returns a copy with

* part="head": the head's weights re-initialized (its layers' own `reset_parameters`, seeded);
* part="top": the head and the CAM's target stage (e.g. layer4: the paper's cascade, first step into the
  backbone);
* part="backbone": every layer of the backbone re-initialized as well (the end of the paper's cascade,
  top stage down to the stem). BatchNorm layers return to weight 1, bias 0, running mean 0, variance 1.

`rank_correlation(a, b)` is the Spearman rank correlation of two maps of one image (the paper's measure,
on the maps as given, both scaled to [0, 1]). A flat (all-equal) map has no ranking: its correlation with
anything is taken as 0 (no dependence shown), so the number is always finite. The study reports, per
init, the mean over images of rho(real map, map of the randomized model): near 1 = the map survives the
randomization (it shows the architecture's or the image's structure, not what was learned), near 0 or
below = it depends on the learned weights, as it should.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

PARTS = ("head", "top", "backbone")


def _reset_all(module: nn.Module) -> None:
    for m in module.modules():
        if callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()


def randomized(model: nn.Module, part: str, seed: int, layer: str | None = None) -> nn.Module:
    """A deep copy of `model` (with `.head` and `.backbone`) whose `part` ("head": the head only; "top": the
    head and the stage named `layer`, e.g. "layer4"; "backbone": head and backbone) is re-initialized with torch seed `seed` (on the CPU, then moved to `model`'s
    device, so the weights do not depend on the device). `model` is not changed.
    ValueError for another part, or "top" without a valid `layer`."""
    from engine.explain.gradcam import resolve_layer

    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}; got {part!r}")
    if part == "top" and not layer:
        raise ValueError("part='top' needs the target layer's name (e.g. layer4)")
    device = next(model.parameters()).device
    out = copy.deepcopy(model).cpu()  # re-initialized on the CPU: the same weights on every device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _reset_all(out.head)
        if part == "top":
            _reset_all(resolve_layer(out, layer))
        if part == "backbone":
            _reset_all(out.backbone)
    return out.to(device).eval()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of the same shape (ties: average ranks); 0.0 when either map
    is constant. ValueError for different shapes."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes: {a.shape} and {b.shape}")
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    ra, rb = rankdata(a), rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])
