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

`CollapseMonitor` embeds a fixed seeded sample of training images every N steps (eval mode, no
gradient), keeps the history (one flat record per reading with every key of both sets, for the
method's head and, prefixed `backbone_`, for the pooled backbone features), and turns low `std` /
`erank` into warning messages.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Warning thresholds, from 64 px phantom runs (256 monitor images): a random-init ResNet-18 already
# gives nearly parallel embeddings on homogeneous radiographs (std ~0.09, cos ~0.99, head erank
# 12-24, backbone erank 27); healthy training raises them (Barlow head std 0.46 / erank 34, SparK
# backbone erank 64); collapsed MoCo runs fell to std 0.002 / erank 1.1, or erank 1.6 at std 0.2.
STD_MIN = 0.05
ERANK_MIN = 2.0

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

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == total)

    @torch.no_grad()
    def measure(self, method: torch.nn.Module, device: torch.device, size: int, step: int,
                amp: torch.dtype | None = None) -> dict[str, float]:
        """Embed the sample with `method` (an SSLMethod) in eval mode; append to history; return metrics."""
        was_training = method.training
        method.eval()
        feats, heads = [], []
        try:
            for i in range(0, len(self.images), self.batch):
                x = torch.from_numpy(np.ascontiguousarray(self.images[i : i + self.batch])).to(device)
                x = x[:, None].float().div_(255.0)  # (b, 1, S, S)
                if x.shape[-1] != size:
                    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    f = method.backbone(method.normalize(x))  # (b, D)
                    h = method.head_embedding(f)
                feats.append(f.float())
                heads.append((h if h is not None else f).float())
        finally:
            method.train(was_training)
        head, bb = collapse_metrics(torch.cat(heads)), collapse_metrics(torch.cat(feats))
        metrics = {**head, **{f"backbone_{k}": v for k, v in bb.items()}}
        self.history.append({"step": step, **metrics})
        return metrics

    def warnings(self, metrics: dict[str, float], step: int | None = None) -> list[str]:
        """Collapse messages for `metrics`; none for the step-0 baseline (an untrained network on
        homogeneous X-rays is nearly parallel already; that is the starting point, not a collapse)."""
        out: list[str] = []
        if step == 0:
            return out
        if metrics["std"] < self.std_min:
            out.append(f"collapse: embedding std {metrics['std']:.3f} (relative to 1/sqrt(D)) is below "
                       f"{self.std_min}; all images map to nearly the same point. Lower the lr, check the "
                       f"augmentations, or stop and try another method")
        if metrics["erank"] < self.erank_min:
            out.append(f"collapse: effective rank {metrics['erank']:.2f} is below {self.erank_min}; the "
                       f"embedding uses almost a single direction")
        return out
