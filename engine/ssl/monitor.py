"""Collapse monitor: is the embedding still spreading images apart, or did it flatline?

Pure metrics on an (N, D) embedding matrix, in two labelled sets (`METRIC_SETS`, `METRIC_LABELS`).

The product's set (RankMe-style, scale-free; the warning thresholds act on it):

- `std`: mean per-dimension standard deviation of the L2-normalized embeddings, reported relative
  to 1/sqrt(D) (SimSiam, Chen & He 2021, Sec. 4.1: an isotropic embedding gives ~1, a collapsed
  one 0);
- `cos`: mean pairwise cosine similarity between different images (1 = all images the same);
- `erank`: effective rank of the *uncentred* embedding, exp of the entropy of the normalized
  singular values (Roy & Vetterli 2007; RankMe, Garrido et al. 2023): 1 for a rank-1 set, up to
  min(N, D).

The seed study's set (so a run can be compared with the numbers the study reports):

- `raw_std`: mean over dimensions of the per-dimension standard deviation of the *raw* embedding
  (no normalization; torch's default unbiased estimator, as `z.std(0).mean()`), in feature units:
  it depends on the feature scale, so compare it only between runs of one method/head;
- `cos`: mean cosine of random pairs of different images. The study averages sampled pairs; the
  monitor reports the exact mean over all N(N-1) pairs, which is that estimator's expectation
  (same key as the product's set: it is one quantity);
- `centred_erank`: the same effective rank (Roy & Vetterli 2007) of the *centred* embedding
  z - mean(z): the shared mean direction no longer counts as a dimension, so an embedding that is
  one common vector plus spread in k directions reads ~k here and less than that uncentred.

Judging (`collapse_status`, issue 23): relative to the run's own early readings after a warm-up, not
absolute thresholds from step 0 (an untrained network's features are nearly parallel already); see
WARMUP_READINGS below.

`CollapseMonitor` embeds a fixed seeded sample of training images every N steps (eval mode, no
gradient), keeps the history (one flat record per reading with every key of both sets, for the
method's head and, prefixed `backbone_`, for the pooled backbone features), and turns a low `std`, a high `cos` or a low
`erank` (the same rule for every method, on its head and its backbone features) into at most one
plain-words warning per reading (`collapse_status`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.ssl.collapse_control import (CONTROL_METRICS, CollapseControl, CollapseController,  # noqa: F401
                                         parse_collapse_control)

# Warning thresholds, from 64 px phantom runs (256 monitor images): a random-init ResNet-18 already
# gives nearly parallel embeddings on homogeneous radiographs (std ~0.09, cos ~0.99, head erank
# 12-24, backbone erank 27); healthy training raises them (Barlow head std 0.46 / erank 34, SparK
# backbone erank 64); collapsed MoCo runs fell to std 0.002 / erank 1.1, or erank 1.6 at std 0.2.
STD_MIN = 0.05
ERANK_MIN = 2.0
# Mean cosine of different images above this reads as collapsed: the untrained network's ~0.99, a
# SparK demo run that finished at 0.979; the shipped MoCo backbone (224 px, real X-rays) ends at head
# 0.017 / backbone 0.909. Every method is judged by the same three thresholds on the same spaces:
# its head embedding (if it has one) and its pooled backbone features (every method has those).
COS_MAX = 0.95

# The two labelled metric sets (keys of `collapse_metrics`); `cos` belongs to both.
METRIC_SETS: dict[str, tuple[str, ...]] = {
    "product": ("std", "cos", "erank"),  # RankMe-style; thresholds STD_MIN / ERANK_MIN act on these
    "study": ("raw_std", "cos", "centred_erank"),  # the seed study's collapse numbers
}
METRIC_LABELS: dict[str, str] = {
    "std": "spread: std of L2-normalized features x sqrt(D) (SimSiam)",
    "cos": "mean cosine of random pairs of images (exact all-pairs mean)",
    "erank": "effective rank, uncentred (RankMe)",
    "raw_std": "raw feature std: mean per-dimension std, feature units (study)",
    "centred_erank": "effective rank of centred features (study)",
}


def normalized_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the std of L2-normalized rows, times sqrt(D). z: (N, D)."""
    zn = F.normalize(z.double(), dim=1)  # (N, D)
    return float(zn.std(dim=0, unbiased=False).mean() * math.sqrt(z.shape[1]))


def mean_pairwise_cosine(z: torch.Tensor) -> float:
    """Mean cosine similarity over pairs i != j. z: (N, D), N >= 2."""
    zn = F.normalize(z.double(), dim=1)
    n = zn.shape[0]
    s = zn.sum(dim=0)  # (D,): sum_ij cos_ij = |sum_i zn_i|^2, without the N x N matrix
    return float((s @ s - n) / (n * (n - 1)))


def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> float:
    """exp(H(p)), p = singular values / their sum (uncentered, as RankMe). z: (N, D)."""
    zd = z.double()
    # singular values via the smaller Gram matrix: cheap for (256, 65536)-sized inputs
    gram = zd @ zd.t() if zd.shape[0] <= zd.shape[1] else zd.t() @ zd
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()  # singular values
    if s.sum() <= eps:
        return 0.0
    p = s / s.sum()
    p = p[p > eps]
    return float(torch.exp(-(p * p.log()).sum()))


def raw_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of the raw rows (unbiased, torch's default). z: (N, D).

    The seed study's "feature std": in the embedding's own units (not scale-free, unlike
    `normalized_std`); 0 when every image maps to the same point.
    """
    return float(z.double().std(dim=0, unbiased=True).mean())


def centred_effective_rank(z: torch.Tensor) -> float:
    """Effective rank (Roy & Vetterli 2007) of the column-centred embedding z - mean(z). z: (N, D).

    The seed study's effective rank: at most min(N - 1, D); 0 when all rows are equal (nothing is
    left after centring).
    """
    zd = z.double()
    zc = zd - zd.mean(dim=0, keepdim=True)  # (N, D)
    # rows equal up to rounding: what is left is isotropic float noise, which must not read as rank
    if float(zc.norm()) <= 1e-9 * float(zd.norm()):
        return 0.0
    return effective_rank(zc)


def collapse_metrics(z: torch.Tensor) -> dict[str, float]:
    """Both labelled sets of an (N, D) embedding (N >= 2): {"std", "cos", "erank", "raw_std", "centred_erank"}.

    See the module docstring for each formula and its source. Raises ValueError for other shapes.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"collapse metrics need an (N >= 2, D) embedding, got shape {tuple(z.shape)}")
    z = z.detach()
    return {"std": normalized_std(z), "cos": mean_pairwise_cosine(z), "erank": effective_rank(z),
            "raw_std": raw_std(z), "centred_erank": centred_effective_rank(z)}


def metric_definitions() -> dict[str, object]:
    """What the checkpoint json stores beside the history: {"sets": METRIC_SETS, "labels": ...}.

    Labels cover the head keys and their `backbone_` counterparts (the pooled backbone features)."""
    labels = dict(METRIC_LABELS)
    labels.update({f"backbone_{k}": f"{v}; pooled backbone features" for k, v in METRIC_LABELS.items()})
    return {"sets": {k: list(v) for k, v in METRIC_SETS.items()}, "labels": labels}


def sample_indices(n_images: int, n: int, seed: int) -> np.ndarray:
    """The fixed, seeded, sorted sample of image indices the monitor embeds."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_images, size=min(n, n_images), replace=False))


@dataclass
class CollapseMonitor:
    """Every `every` steps: embed `images` (M, S, S) uint8, record metrics, report warnings.

    Metrics of the method's head embedding (the space its loss acts on) are `std`, `cos`, `erank`;
    those of the pooled backbone features (the deliverable) are `backbone_std`, ... For methods
    without a head (SparK) both are the backbone's. Warnings look at the head metrics.
    """

    images: np.ndarray
    every: int
    std_min: float = STD_MIN
    erank_min: float = ERANK_MIN
    batch: int = 64
    history: list[dict[str, Any]] = field(default_factory=list)
    online: Any = None  # engine.ssl.online_eval.OnlineEval: kNN on a labeled set every `online.every` readings

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == total)

    @torch.no_grad()
    def measure(self, method: torch.nn.Module, device: torch.device, size: int, step: int,
                amp: torch.dtype | None = None) -> dict[str, float]:
        """Embed the sample with `method` (an SSLMethod) in eval mode; append to history; return metrics
        (with the online evaluation's `online_*` keys on the readings it is due)."""
        was_training = method.training
        method.eval()
        try:
            feats, heads = self._embed(method, self.images, device, size, amp)
            head, bb = collapse_metrics(heads), collapse_metrics(feats)
            metrics = {**head, **{f"backbone_{k}": v for k, v in bb.items()}}
            if self.online is not None and self.online.due(len(self.history)):
                metrics.update(self.online.evaluate(self._embed(method, self.online.images, device, size, amp)[0]))
        finally:
            method.train(was_training)
        self.history.append({"step": step, **metrics})
        return metrics

    def _embed(self, method: torch.nn.Module, images: np.ndarray, device: torch.device, size: int,
               amp: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled backbone features (M, D), head embedding (M, D') or the features again) of uint8 (M, S, S)."""
        feats, heads = [], []
        for i in range(0, len(images), self.batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + self.batch])).to(device)
            x = x[:, None].float().div_(255.0)  # (b, 1, S, S)
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                f = method.backbone(method.normalize(x))  # (b, D)
                h = method.head_embedding(f)
            feats.append(f.float())
            heads.append((h if h is not None else f).float())
        return torch.cat(feats), torch.cat(heads)

    cos_max: float = COS_MAX

    def warnings(self, metrics: dict[str, float], step: int | None = None) -> list[str]:
        """At most one collapse message for a reading (`collapse_status`'s line, judged against this
        monitor's history: the run's own early readings after a warm-up); none for the step-0 baseline.
        The same rule for every method."""
        level, line, _ = collapse_status(metrics, step, history=self.history, std_min=self.std_min,
                                         erank_min=self.erank_min, cos_max=self.cos_max)
        return [f"collapse: {line}"] if level == "warning" else []


# Judging a reading (issue 23 item 4): relative to the run's own early readings, after a warm-up.
# An untrained ResNet already gives nearly parallel features on X-rays (cos ~0.99), so an absolute
# cosine limit called healthy runs "collapsed" at step 12. Now: the step-0 baseline and the next
# WARMUP_READINGS readings are the run's reference (per metric, their median); during the warm-up
# only outright collapse is flagged (spread < DEAD_STD or effective rank < DEAD_ERANK: every image on
# one point / one line); afterwards a reading is flagged when spread or effective rank fell below
# RELATIVE_DROP x its early value, or 1 - mean cosine did (only when the early cosine was <= COS_MAX:
# from ~0.99, 1 - cosine is too small to measure a fall), or under the absolute floors std_min /
# erank_min. A mean cosine near 1 alone never flags a reading.
WARMUP_READINGS = 3
RELATIVE_DROP = 0.5
DEAD_STD = 0.01
DEAD_ERANK = 1.2


def _spaces(metrics: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    """(name, key prefix) of the head embedding and, when it differs, the pooled backbone features."""
    spaces = [("embedding", prefix)]
    bb = [metrics.get(f"{prefix}backbone_{k}") for k in ("std", "cos", "erank")]
    if any(v is not None for v in bb) and bb != [metrics.get(f"{prefix}{k}") for k in ("std", "cos", "erank")]:
        spaces.append(("backbone features", f"{prefix}backbone_"))
    return spaces


def reference_readings(history: list[dict[str, Any]], prefix: str = "", warmup: int = WARMUP_READINGS
                       ) -> dict[str, float]:
    """Per metric key, the median of the run's first 1 + `warmup` readings (the step-0 baseline and the
    warm-up; the median, so one early spike does not set the bar): what later readings are judged
    against. Keys as in the records (`{prefix}std`, `{prefix}backbone_cos`, ...)."""
    early = sorted((h for h in history if h.get("step") is not None), key=lambda h: h["step"])[: 1 + warmup]
    keys = {k for h in early for k, v in h.items() if k.startswith(prefix) and k != "step"
            and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: float(np.median([float(h[k]) for h in early if isinstance(h.get(k), (int, float))])) for k in keys}


def collapse_problems(metrics: dict[str, Any], prefix: str = "", *, std_min: float = STD_MIN,
                      erank_min: float = ERANK_MIN, reference: dict[str, float] | None = None,
                      warmup: bool = False, drop: float = RELATIVE_DROP, cos_max: float = COS_MAX) -> list[str]:
    """Each collapse sign of a reading, in words, for the head embedding and the pooled backbone
    features (keys `{prefix}std` ... and `{prefix}backbone_std` ...); a method without a head (SparK)
    records its backbone features in both, so they are judged once. `warmup`: only outright collapse
    (DEAD_STD, DEAD_ERANK). Otherwise the floors std_min / erank_min and, with `reference` (from
    `reference_readings`), a drop below `drop` x the run's early spread, rank or 1 - cosine (the last
    only when the early cosine was at most `cos_max`: from an untrained ~0.99, 1 - cosine is too small to
    measure a fall)."""
    out: list[str] = []
    ref = reference or {}
    for name, p in _spaces(metrics, prefix):
        std, cos, erank = (metrics.get(f"{p}{k}") for k in ("std", "cos", "erank"))
        lo_std, lo_rank = (DEAD_STD, DEAD_ERANK) if warmup else (std_min, erank_min)
        if std is not None and std < lo_std:
            out.append(f"{name}: spread {std:.3f} is below {lo_std:g} (all images map to nearly the same point)")
        elif std is not None and not warmup and f"{p}std" in ref and std < drop * ref[f"{p}std"]:
            out.append(f"{name}: spread {std:.3f} fell below {drop:g} x its early {ref[f'{p}std']:.3f}")
        if erank is not None and erank < lo_rank:
            out.append(f"{name}: effective rank {erank:.2f} is below {lo_rank:g} (almost a single direction)")
        elif erank is not None and not warmup and f"{p}erank" in ref and erank < drop * ref[f"{p}erank"]:
            out.append(f"{name}: effective rank {erank:.1f} fell below {drop:g} x its early {ref[f'{p}erank']:.1f}")
        if (cos is not None and not warmup and ref.get(f"{p}cos", 1.0) <= cos_max
                and 1 - cos < drop * (1 - ref[f"{p}cos"])):
            out.append(f"{name}: mean cosine of different images rose to {cos:.3f} from its early "
                       f"{ref[f'{p}cos']:.3f} (1 - cosine fell below {drop:g} x)")
    return out


def collapse_status(metrics: dict[str, Any] | None, step: int | None = None, prefix: str = "", *,
                    history: list[dict[str, Any]] | None = None, std_min: float = STD_MIN,
                    erank_min: float = ERANK_MIN, warmup: int = WARMUP_READINGS,
                    cos_max: float = COS_MAX) -> tuple[str, str, list[str]]:
    """(level, one plain-words line, the problems) for one reading, judged against the run's own
    `history` (its monitor records, this reading included or not; keys `{prefix}std`...): level "none"
    (no reading yet), "baseline" (step 0, the untrained network), "warmup" (one of the first `warmup`
    readings after it: only outright collapse is a warning), "ok" or "warning". Without a history only
    the floors std_min / erank_min judge. `cos_max` only words an "ok" line whose features are still
    nearly parallel (as parallel as the untrained network's is no collapse). The Pretrain page shows
    the latest reading's line; the job's warnings are the lines of the readings that were flagged."""
    if not metrics:
        return "none", "No collapse-monitor reading yet.", []
    at = f" at step {int(step)}" if step is not None else ""
    if step == 0:
        return "baseline", ("Baseline reading of the untrained network (step 0): nearly parallel features are "
                            "normal before training; later readings are judged against the run's own early "
                            "readings."), []
    hist = sorted((h for h in (history or []) if h.get("step") is not None and (step is None or h["step"] <= step)),
                  key=lambda h: h["step"])
    index = sum(1 for h in hist if step is None or h["step"] < step)  # readings before this one
    in_warmup = bool(hist) and index <= warmup
    ref = reference_readings(hist, prefix, warmup) if hist and not in_warmup else None
    problems = collapse_problems(metrics, prefix, std_min=std_min, erank_min=erank_min, reference=ref,
                                 warmup=in_warmup, cos_max=cos_max)
    if problems:
        return "warning", (f"looks collapsed{at}: the images map to nearly the same features ("
                           + "; ".join(problems) + "). Lower the learning rate, check the augmentations, "
                           "or stop and try another method."), problems
    if in_warmup:
        return "warmup", (f"warming up{at} (reading {index} of the first {warmup} after the baseline): no outright "
                          "collapse; from the next readings on, the run is judged against its own early readings."), []
    cos = metrics.get(f"{prefix}backbone_cos", metrics.get(f"{prefix}cos"))
    erank = metrics.get(f"{prefix}backbone_erank", metrics.get(f"{prefix}erank"))
    detail = ", ".join(x for x in (f"mean cosine {cos:.2f}" if cos is not None else "",
                                   f"effective rank {erank:.1f}" if erank is not None else "") if x)
    line = f"healthy{at}: the images stay spread apart" + (f" ({detail})." if detail else ".")
    if cos is not None and cos > cos_max:
        line = (f"no collapse{at}: no metric fell below the run's early readings, but the features are still "
                f"nearly parallel ({detail}), as an untrained network's are; the online evaluation, where "
                "enabled, shows whether they carry the findings.")
    return "ok", line, []
