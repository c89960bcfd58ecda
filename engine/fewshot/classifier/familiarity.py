"""Unfamiliar-image flag: deep nearest-neighbour out-of-distribution rule with a conformal threshold.

Score: Euclidean distance of an image's L2-normalized features to its k-th nearest training image, k = 1
(Sun, Ming, Zhu & Li, "Out-of-distribution detection with deep nearest neighbors", ICML 2022). Threshold:
the r-th smallest of the training images' leave-one-out nearest-neighbour distances, r = ceil((n + 1)(1 -
alpha)) capped at n (the conformal rank: Vovk, Gammerman & Shafer 2005; Angelopoulos & Bates 2021), so a
new image from the training images' own source is flagged with probability about alpha (at most
1 / (n + 1) more when r is capped, i.e. for n < 19). Which feature space is used (pooled backbone output,
or the frozen stages' output in finetune mode) is explained in the package docstring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

OOD_ALPHA = 0.05  # target rate of flagging an image from the training images' own source
OOD_K = 1  # k-th nearest training image (few-shot: the nearest)


@dataclass(frozen=True)
class Familiarity:
    """Deep k-NN out-of-distribution rule (Sun et al. 2022) with a leave-one-out conformal threshold."""

    train: np.ndarray  # (n, D) float32, L2-normalized training features
    threshold: float  # distances above this are flagged
    k: int = OOD_K
    alpha: float = OOD_ALPHA
    rank: int = 0  # r: the threshold is the r-th smallest leave-one-out distance
    space: str = "features"  # "features": the backbone's pooled output; "frozen": pooled input of its last stage

    @staticmethod
    def _normalize(F: np.ndarray) -> np.ndarray:
        F = np.asarray(F, dtype=np.float64)
        return F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)

    def distances(self, F: np.ndarray) -> np.ndarray:
        """Distance (N,) of each feature row F (N, D) to its k-th nearest training image."""
        d = np.sqrt(np.maximum(_sqdist(self._normalize(F), self.train.astype(np.float64)), 0.0))  # (N, n)
        return np.sort(d, axis=1)[:, self.k - 1]

    def rule(self) -> str:
        where = "backbone features" if self.space == "features" else "features of the frozen stages"
        return (f"flagged when the distance (L2-normalized {where}) to the nearest of the {len(self.train)} "
                f"training images exceeds {self.threshold:.4f}, the {self.rank}-th smallest of the training images' "
                f"leave-one-out nearest-neighbour distances (about {max(self.alpha, 1 / (len(self.train) + 1)):.0%} "
                "of new images from the same source are flagged)")

    def meta(self) -> dict[str, Any]:
        return {"k": self.k, "alpha": self.alpha, "threshold": self.threshold, "rank": self.rank,
                "n": int(len(self.train)), "space": self.space, "rule": self.rule()}


def _sqdist(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T


def fit_familiarity(features: np.ndarray, alpha: float = OOD_ALPHA, k: int = OOD_K, space: str = "features"
                    ) -> Familiarity:
    """Familiarity rule from training features (n, D), n >= k + 1 (see engine.fewshot.classifier).
    Raises ValueError for non-finite features or too few images."""
    F = np.asarray(features, dtype=np.float64)
    if F.ndim != 2 or F.shape[0] < k + 1:
        raise ValueError(f"the familiarity rule needs at least {k + 1} training feature rows; got {F.shape}")
    if not np.isfinite(F).all():
        raise ValueError("training features hold NaN or infinite values")
    Z = Familiarity._normalize(F)
    d = np.sqrt(np.maximum(_sqdist(Z, Z), 0.0))
    np.fill_diagonal(d, np.inf)
    loo = np.sort(d, axis=1)[:, k - 1]  # (n,) each image's k-th nearest *other* training image
    n = len(loo)
    r = min(n, int(math.ceil((n + 1) * (1.0 - alpha))))
    return Familiarity(Z.astype(np.float32), float(np.sort(loo)[r - 1]), k, float(alpha), r, space)
