"""How much of a heatmap falls on the clinically relevant region: pure functions and their aggregation.

A heatmap is a non-negative float array HxW (any scale); a region is a bool mask HxW (or any array of
the heatmap's shape, nonzero = inside), one box `(x, y, w, h)` in pixels, or a sequence / (n, 4) array
of boxes (their union). Box pixel `(i, j)` (row, column) is
inside when its centre `(j + 0.5, i + 0.5)` lies in `[x, x + w) x [y, y + h)`, so integer boxes cover
columns x .. x+w-1 and rows y .. y+h-1; a box too thin to hold a pixel centre marks the pixel holding
its own centre.

Scores (per image):
- `energy_in_region`: fraction of the heatmap's sum inside the region (energy-based pointing game;
  Wang et al. 2020, Score-CAM sec. 5.2).
- `energy_ratio`: energy_in_region / (region area / image area). 1.0 = no better than a flat map;
  above 1 = concentrated on the region. NaN for an empty region.
- `pointing_hit`: pointing game (Zhang et al. 2016): is the maximum inside the region. With ties, the
  maximal pixels (within 1e-6 of the max) vote: a hit when more than half of them are inside. A unique
  maximum reduces to the usual rule, and a flat (or all-zero) map is a miss unless the region covers
  more than half the image, so an uninformative map cannot score hits.
- `topq_iou`: IoU between the region and the top-q fraction of pixels (q = 0.15 by default): pixels
  whose value is >= the (1 - q) quantile, ties included (a flat map selects everything), and > 0
  (zero pixels are never "highlighted": a map hot on fewer than q of the pixels selects only those).

An all-zero heatmap (Grad-CAM's ReLU removed everything: no positive evidence at the layer) carries no
localization, so every score treats it as a flat map (energy = area fraction, ratio 1, a miss, IoU =
area fraction) rather than dropping it, which would flatter an init that often produces empty maps.
`is_empty(heatmap)` tells such maps apart; the study records it per row.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import pandas as pd

Box = tuple[float, float, float, float]
Region = Union[np.ndarray, Box, Sequence[Box]]

METRICS = ("energy_in_region", "energy_ratio", "pointing_hit", "topq_iou")
TOPQ = 0.15  # top 15% of pixels: about the area of a large focal lesion; a parameter, not a paper value
TIE_TOL = 1e-6


def box_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Bool mask HxW of the pixels whose centres lie in the box (x, y, w, h)."""
    h, w = shape
    x, y, bw, bh = (float(v) for v in box)
    cols = np.arange(w) + 0.5
    rows = np.arange(h) + 0.5
    m = ((rows >= y) & (rows < y + bh))[:, None] & ((cols >= x) & (cols < x + bw))[None, :]
    cy, cx = int(np.floor(y + bh / 2)), int(np.floor(x + bw / 2))
    if not m.any() and bw > 0 and bh > 0 and 0 <= cy < h and 0 <= cx < w:
        m[cy, cx] = True  # a box thinner than a pixel still marks the pixel holding its centre
    return m


def region_mask(region: Region, shape: tuple[int, int]) -> np.ndarray:
    """Any region form -> bool mask of `shape`. Masks must already have that shape."""
    if isinstance(region, np.ndarray) and region.ndim == 2 and (region.dtype == bool or region.shape == tuple(shape)):
        if region.shape != tuple(shape):
            raise ValueError(f"region mask has shape {region.shape} but the heatmap is {tuple(shape)}")
        return region.astype(bool, copy=False)
    arr = np.asarray(region, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 4:
        return box_mask(tuple(arr), shape)
    if arr.ndim == 2 and arr.shape[1] == 4:
        m = np.zeros(shape, bool)
        for b in arr:
            m |= box_mask(tuple(b), shape)
        return m
    raise ValueError("a region is a bool mask HxW, a box (x, y, w, h) or a list of boxes")


def _prep(heatmap: np.ndarray, region: Region) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"a heatmap is HxW; got shape {h.shape}")
    if np.any(h < 0) or not np.all(np.isfinite(h)):
        raise ValueError("a heatmap must be finite and non-negative")
    if h.size and h.max() == 0:
        h = np.ones_like(h)  # all-zero map: scored as a flat map (see module docstring)
    return h, region_mask(region, h.shape)


def is_empty(heatmap: np.ndarray) -> bool:
    """True for an all-zero heatmap (scored as a flat map)."""
    return bool(np.asarray(heatmap).max(initial=0.0) <= 0)


def energy_in_region(heatmap: np.ndarray, region: Region) -> float:
    """Fraction of the heatmap's total inside the region."""
    h, m = _prep(heatmap, region)
    return float(h[m].sum() / h.sum())


def energy_ratio(heatmap: np.ndarray, region: Region) -> float:
    """energy_in_region / region area fraction; 1.0 = a flat map (NaN for an empty region)."""
    h, m = _prep(heatmap, region)
    frac = m.mean()
    if frac == 0:
        return float("nan")
    return energy_in_region(h, m) / float(frac)


def pointing_hit(heatmap: np.ndarray, region: Region) -> float:
    """1.0 when the maximum is inside the region, else 0.0 (ties: majority of the maximal pixels)."""
    h, m = _prep(heatmap, region)
    top = h >= h.max() - TIE_TOL
    return float(m[top].mean() > 0.5)


def topq_iou(heatmap: np.ndarray, region: Region, q: float = TOPQ) -> float:
    """IoU of the top-q fraction of pixels (ties included) with the region."""
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1]; got {q}")
    h, m = _prep(heatmap, region)
    thr = np.quantile(h, 1.0 - q, method="higher")
    top = (h >= thr) & (h > 0)
    union = (top | m).sum()
    return float((top & m).sum() / union) if union else float("nan")


def scores(heatmap: np.ndarray, region: Region, q: float = TOPQ) -> dict[str, float]:
    """All four scores of one heatmap against one region."""
    h, m = _prep(heatmap, region)
    return {
        "energy_in_region": energy_in_region(h, m),
        "energy_ratio": energy_ratio(h, m),
        "pointing_hit": pointing_hit(h, m),
        "topq_iou": topq_iou(h, m, q),
    }


# ------------------------------------------------------------------------------------ aggregate
def bootstrap_ci(
    values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap interval of the mean over the non-NaN values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(v.mean()), float(lo), float(hi)


def aggregate(
    rows: pd.DataFrame,
    metrics: Sequence[str] = METRICS,
    reference: str | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per finding x init: n and, per metric, `<m>_mean`, `<m>_lo`, `<m>_hi` (seeded percentile bootstrap).

    `rows` has columns image, finding, init and the metrics (one row per image x init); with an
    `empty_map` column, `n_empty_maps` counts the all-zero heatmaps of each init. With
    `reference` (e.g. "random") present among the inits, adds paired differences against it over the
    images both explained: `d_<m>_mean`, `d_<m>_lo`, `d_<m>_hi` (init minus reference; NaN for the
    reference itself). Inits keep their order of first appearance.
    """
    missing = [c for c in ("image", "finding", "init", *metrics) if c not in rows.columns]
    if missing:
        raise ValueError(f"localization rows lack columns {missing}")
    out = []
    inits = list(dict.fromkeys(rows["init"]))
    for finding in dict.fromkeys(rows["finding"]):
        fr = rows[rows["finding"] == finding]
        ref = fr[fr["init"] == reference].set_index("image") if reference is not None else None
        for init in inits:
            g = fr[fr["init"] == init]
            if g.empty:
                continue
            rec: dict[str, object] = {"finding": finding, "init": init, "n": int(len(g))}
            if "empty_map" in g.columns:
                rec["n_empty_maps"] = int(g["empty_map"].astype(bool).sum())
            for m in metrics:
                rec[f"{m}_mean"], rec[f"{m}_lo"], rec[f"{m}_hi"] = bootstrap_ci(g[m].to_numpy(), n_boot, level, seed)
            if ref is not None and not ref.empty:
                paired = g.set_index("image").join(ref[list(metrics)].add_suffix("_ref"), how="inner")
                for m in metrics:
                    d = (paired[m] - paired[f"{m}_ref"]).to_numpy() if init != reference else np.array([])
                    rec[f"d_{m}_mean"], rec[f"d_{m}_lo"], rec[f"d_{m}_hi"] = bootstrap_ci(d, n_boot, level, seed)
            out.append(rec)
    return pd.DataFrame(out)
