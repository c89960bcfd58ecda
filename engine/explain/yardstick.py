"""Yardsticks for localization scores: chance levels, content-free baseline maps, intervals across episodes.

A localization score says little alone: a map that always lights the centre of the chest scores well on
cardiomegaly without looking at the image. Each score of a real heatmap is therefore shown beside

* its chance level on the same region (per image, averaged over images):
  - pointing game and energy-in-region: the region's area share `a` of the image (a uniformly random
    hottest pixel falls inside with probability `a`; a flat map puts a share `a` of its energy there);
  - energy ratio: 1 (a flat map);
  - top-q IoU: `q a / (q + a - q a)`, the IoU of a random q-share of the pixels with the region
    (expected overlap q a, union q + a - q a).
* two content-free baseline maps, the SAME map for every test image, scored on the same regions:
  - "train-mean": the mean of the init's own heatmaps over the training images of the episode, each map
    resampled to a common grid in normalized image coordinates (`MEAN_GRID` x `MEAN_GRID`) and the mean
    resampled to each test image's size. It says where this classifier looks on average;
  - "Gaussian": a centred isotropic Gaussian in normalized image coordinates, sigma = `GAUSS_SIGMA`
    (a quarter of the image's width and height), i.e. "findings are near the middle".
  An init's gain over a baseline is its score minus the baseline's score on the same image, averaged.
* an interval across training episodes: the study trains each init on several episodes (different
  k-shot training sets, same held-out images); per episode the images' mean is taken, then the mean over
  episodes and its Student-t 95% interval (`t_interval`). The bootstrap over the images of one episode
  ignores the variation between training sets, which on real data dominates.

Rows (one per episode x image x init) carry the scores, `chance_<m>`, `trainmean_<m>`, `gauss_<m>`, and
the sanity-check correlations `rho_head` / `rho_top` / `rho_backbone` (engine.explain.sanity); `across_episodes`
summarizes them and `yardstick_tables` formats the summary for the CLI, the report and the app.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from engine.explain.localization import METRICS, TOPQ, region_mask, scores

GAUSS_SIGMA = 0.25  # in units of the image's width (x) and height (y)
MEAN_GRID = 64  # the common grid of the train-mean map (normalized image coordinates)
BASELINES = ("trainmean", "gauss")
BASELINE_LABEL = {"trainmean": "train-mean map", "gauss": f"centred Gaussian (sigma {GAUSS_SIGMA:g})"}
SANITY = ("rho_head", "rho_top", "rho_backbone")  # engine.explain.sanity.PARTS, in cascade order
# a t-interval of a bounded quantity is clipped to its range (the mean itself always lies inside)
RANGE = {"energy_in_region": (0.0, 1.0), "energy_ratio": (0.0, np.inf), "pointing_hit": (0.0, 1.0),
         "topq_iou": (0.0, 1.0), "rho_head": (-1.0, 1.0), "rho_top": (-1.0, 1.0), "rho_backbone": (-1.0, 1.0)}


def resample(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of a map HxW to `shape` (rows, cols), same normalized coordinates; float32."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(int(s) for s in shape), mode="bilinear", align_corners=False)[0, 0].numpy()


def mean_map(maps: Sequence[np.ndarray], grid: int = MEAN_GRID) -> np.ndarray:
    """Mean of heatmaps of any sizes on a grid x grid map in normalized image coordinates (float32, max 1,
    or all zero when every map is). ValueError for no maps."""
    if not len(maps):
        raise ValueError("the train-mean map needs at least one heatmap")
    acc = np.mean([resample(np.asarray(m, np.float32), (grid, grid)) for m in maps], axis=0)
    acc = np.clip(acc, 0.0, None)
    hi = float(acc.max())
    return (acc / hi if hi > 0 else acc).astype(np.float32)


def gaussian_prior(shape: tuple[int, int], sigma: float = GAUSS_SIGMA) -> np.ndarray:
    """Centred Gaussian HxW (max 1): exp(-((u - .5)^2 + (v - .5)^2) / (2 sigma^2)), u, v the pixel centres in
    [0, 1] image coordinates (so the spread is sigma times the width across, the height down)."""
    h, w = shape
    v = (np.arange(h) + 0.5) / h - 0.5
    u = (np.arange(w) + 0.5) / w - 0.5
    return np.exp(-(v[:, None] ** 2 + u[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)


def chance_levels(region: np.ndarray, q: float = TOPQ) -> dict[str, float]:
    """Each metric's chance level on one region (bool mask HxW; see the module docstring)."""
    a = float(np.asarray(region, bool).mean())
    iou = q * a / (q + a - q * a) if (q + a) > 0 else float("nan")
    return {"energy_in_region": a, "energy_ratio": 1.0 if a > 0 else float("nan"), "pointing_hit": a,
            "topq_iou": iou}


def yardstick_fields(region: np.ndarray, trainmean: np.ndarray | None, q: float = TOPQ) -> dict[str, float]:
    """`chance_<m>`, `trainmean_<m>` (NaN without a train-mean map) and `gauss_<m>` of one image's region."""
    region = region_mask(region, region.shape)
    out = {f"chance_{m}": v for m, v in chance_levels(region, q).items()}
    out |= {f"gauss_{m}": v for m, v in scores(gaussian_prior(region.shape), region, q).items()}
    tm = (scores(resample(trainmean, region.shape).clip(0, None), region, q) if trainmean is not None
          else dict.fromkeys(METRICS, float("nan")))
    return out | {f"trainmean_{m}": v for m, v in tm.items()}


def t_interval(values: Sequence[float], level: float = 0.95,
               bounds: tuple[float, float] = (-np.inf, np.inf)) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval of the mean of the finite values, clipped to `bounds` (the
    quantity's range); lo = hi = NaN for fewer than 2 values."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if v.size < 2:
        return float(v[0]), float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    lo, hi = max(v.mean() - half, bounds[0]), min(v.mean() + half, bounds[1])
    return float(v.mean()), float(lo), float(hi)


def across_episodes(rows: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per finding x init: n_episodes, n_images and, per metric m, `<m>_ep_{mean,lo,hi}` (t-interval over
    the episodes' image means), `chance_<m>`, `<b>_<m>` and `gain_<b>_<m>_{mean,lo,hi}` for each baseline b,
    and `rho_head_*`, `rho_backbone_*` where the rows have them. Rows need an `episode` column (absent:
    one episode)."""
    rows = rows.copy()
    if "episode" not in rows:
        rows["episode"] = 0
    out = []
    for (finding, init), g in rows.groupby(["finding", "init"], sort=False):
        ep = g.groupby("episode")
        rec: dict[str, object] = {"finding": finding, "init": init, "n_episodes": int(ep.ngroups),
                                  "n_images": int(g["image"].nunique())}
        for m in metrics:
            rec[f"{m}_ep_mean"], rec[f"{m}_ep_lo"], rec[f"{m}_ep_hi"] = t_interval(ep[m].mean(), bounds=RANGE[m])
            if f"chance_{m}" in g:
                rec[f"chance_{m}"] = float(g[f"chance_{m}"].mean())
            for b in BASELINES:
                if f"{b}_{m}" not in g:
                    continue
                rec[f"{b}_{m}"] = float(g[f"{b}_{m}"].mean())
                gain = (g[m] - g[f"{b}_{m}"]).groupby(g["episode"]).mean()
                rec[f"gain_{b}_{m}_mean"], rec[f"gain_{b}_{m}_lo"], rec[f"gain_{b}_{m}_hi"] = t_interval(gain)
        for s in SANITY:
            if s in g:
                rec[f"{s}_mean"], rec[f"{s}_lo"], rec[f"{s}_hi"] = t_interval(ep[s].mean(), bounds=RANGE[s])
        out.append(rec)
    return pd.DataFrame(out)


def _ci(r: dict, key: str, digits: int = 2, sign: bool = False) -> str:
    m, lo, hi = r.get(f"{key}_mean", np.nan), r.get(f"{key}_lo", np.nan), r.get(f"{key}_hi", np.nan)
    if not np.isfinite(m):
        return "n/a"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f.format(m) + (f" [{f.format(lo)}, {f.format(hi)}]" if np.isfinite(lo) else " (1 episode: no interval)")


def yardstick_tables(summary: pd.DataFrame, names: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """A summary (study summary.csv, with `across_episodes`' columns) -> {title: table of strings, one row per
    init}: "Pointing game" and "Energy ratio" (mean [95% t-interval over episodes], chance level, both
    baselines, the gains over them) and "Sanity check" (the two rank correlations). {} for a summary without
    those columns (empty, or written before them). `names` maps init names to the labels shown."""
    if summary.empty or "pointing_hit_ep_mean" not in summary:
        return {}
    names = names or {}
    recs = summary.to_dict("records")
    out: dict[str, pd.DataFrame] = {}
    for m, title, d in (("pointing_hit", "Pointing game", 3), ("energy_ratio", "Energy ratio", 2)):
        rows = []
        for r in recs:
            rows.append({"init": names.get(r["init"], r["init"]), "images x episodes":
                         f"{r['n_images']} x {r['n_episodes']}", "score [95% CI]": _ci(r, f"{m}_ep", d),
                         "chance": f"{r.get(f'chance_{m}', np.nan):.{d}f}",
                         "train-mean map": f"{r.get(f'trainmean_{m}', np.nan):.{d}f}",
                         "gain over train-mean": _ci(r, f"gain_trainmean_{m}", d, sign=True),
                         "Gaussian": f"{r.get(f'gauss_{m}', np.nan):.{d}f}",
                         "gain over Gaussian": _ci(r, f"gain_gauss_{m}", d, sign=True)})
        out[title] = pd.DataFrame(rows)
    out["Sanity check (rank correlation with the randomized model's map)"] = pd.DataFrame(
        [{"init": names.get(r["init"], r["init"]), "head randomized": _ci(r, "rho_head"),
          "head + top stage randomized": _ci(r, "rho_top"), "head + backbone randomized": _ci(r, "rho_backbone")}
         for r in recs])
    return out


YARDSTICK_LEGEND = (
    "Mean over training episodes [95% t-interval across episodes]. Chance: pointing game = the region's share of "
    "the image (per image, averaged); energy ratio = 1. Baselines are content-free maps scored on the same "
    "regions: the init's mean heatmap over the episode's training images (one fixed map for every test image), and "
    f"a centred Gaussian (sigma = {GAUSS_SIGMA:g} of the image's width and height). A gain interval that includes 0 "
    "means the maps do no better than where findings usually are. Sanity check (Adebayo et al. 2018): Spearman "
    "rank correlation of the map with the map after randomizing the head's weights, then also the top stage's (the "
    "CAM's layer), then the whole backbone's (a cascade from the top; mean "
    "over images); near 1 = the map survives the randomization, so it does not show what was learned; near 0 or "
    "below = it depends on the learned weights, as it should. Intervals of bounded scores are clipped to their range.")
