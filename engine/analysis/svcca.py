"""SVCCA: singular vector canonical correlation analysis (pure numpy/scipy; no torch).

Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017, "SVCCA: Singular Vector Canonical Correlation Analysis
for Deep Learning Dynamics and Interpretability" (NeurIPS), Sec. 2:

1. SV step: centre each variable over the observations, take the SVD and keep the top singular
   directions that explain a fraction `keep` (the paper: 99%) of the variance (variance = squared
   singular values); the data projected on them, U_k S_k, is the reduced representation.
2. CC step: canonical correlation analysis (Hotelling 1936) between the two reduced representations;
   the summary is the mean of the canonical correlations.

The CC step uses `scipy.linalg.subspace_angles`: the canonical correlations of two centred data
matrices are the cosines of the principal angles between their column spaces, which SciPy computes by
the SVD-based algorithm of Bjorck & Golub 1973 ("Numerical methods for computing angles between linear
subspaces", Math. Comp. 27), sine-based for small angles so correlations near 1 stay accurate. This is
the same SVD route as the authors' reference code (github.com/google/svcca, cca_core.py, which
whitens with Sigma^-1/2 and takes an SVD); scikit-learn's CCA (iterative NIPALS, one component at a
time) gives the first correlation too but is slow and approximate, so it serves only as a test check.

Orientation: `x` is (N, p), `y` is (N, q), rows = the N paired observations, columns = variables. (The
google/svcca code takes (neurons, datapoints), the transpose.) CCA needs more observations than kept
variables: with N - 1 <= k_x + k_y the two subspaces of the (N - 1)-dimensional centred space must
intersect and correlations of exactly 1 appear by construction, so `svcca` refuses that case.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import subspace_angles

KEEP = 0.99  # Raghu et al. 2017: "the top directions explaining 99% of the variance"


@dataclass(frozen=True)
class SVCCAResult:
    """`mean` = mean canonical correlation (in [0, 1]); `correlations` (min(k_x, k_y),) descending;
    `k_x`, `k_y` = kept directions; `n` = observations; `explained_x/y` = variance fraction kept."""

    mean: float
    correlations: np.ndarray
    k_x: int
    k_y: int
    n: int
    explained_x: float
    explained_y: float


def _check(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D (observations, variables) array with at least 2 observations, "
                         f"got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values; SVCCA needs finite activations")
    return a


def svd_reduce(x: np.ndarray, keep: float | int = KEEP) -> tuple[np.ndarray, int, float]:
    """SV step of Raghu et al. 2017: (N, p) -> (N, k) projection on the top k singular directions.

    Columns are centred over the rows first. `keep` a float in (0, 1]: the smallest k whose squared
    singular values sum to at least that fraction of the total variance; an int: exactly that many
    (at most the rank). Returns (reduced (N, k) float64 = U_k S_k, k, variance fraction kept).
    Raises ValueError for a bad shape or `keep`, and for a matrix with no variance (every row equal).
    """
    x = _check(x, "x")
    xc = x - x.mean(axis=0, keepdims=True)  # (N, p)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)  # u (N, r), s (r,)
    var = s**2
    total = float(var.sum())
    if total <= 1e-24 * max(1.0, float((x**2).sum())):
        raise ValueError("the activations have no variance (every observation is the same); SVCCA is undefined")
    rank = int((s > s[0] * max(x.shape) * np.finfo(float).eps).sum())
    if isinstance(keep, (int, np.integer)) and not isinstance(keep, bool):
        if keep < 1:
            raise ValueError(f"keep must be >= 1 directions or a variance fraction in (0, 1], got {keep}")
        k = min(int(keep), rank)
    else:
        if not 0 < float(keep) <= 1:
            raise ValueError(f"keep must be a variance fraction in (0, 1] or a number of directions, got {keep}")
        frac = np.cumsum(var) / total
        k = min(int(np.searchsorted(frac, float(keep) - 1e-12) + 1), rank)
    return u[:, :k] * s[:k], k, float(var[:k].sum() / total)


def canonical_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations (Hotelling 1936) of x (N, p) and y (N, q), descending, min(rank) of them.

    Columns are centred over the rows; the correlations are cos(principal angles) between the column
    spaces (Bjorck & Golub 1973, via scipy.linalg.subspace_angles). Raises ValueError for mismatched
    rows or too few observations (N - 1 <= p + q: correlations of 1 by construction)."""
    x, y = _check(x, "x"), _check(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same observations (rows), got {x.shape[0]} and {y.shape[0]}")
    n, p, q = x.shape[0], x.shape[1], y.shape[1]
    if n - 1 <= p + q:
        raise ValueError(f"CCA needs more observations than variables: {n} observations for {p} + {q} variables "
                         f"(after centring they span at most {n - 1} dimensions, so correlations of 1 would appear "
                         f"by construction); use more observations or keep fewer directions")
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    rho = np.cos(subspace_angles(xc, yc))
    return np.sort(np.clip(rho, 0.0, 1.0))[::-1]


def svcca(x: np.ndarray, y: np.ndarray, keep: float | int = KEEP) -> SVCCAResult:
    """SVCCA similarity of x (N, p) and y (N, q) with paired rows (Raghu et al. 2017): SV step on each
    (`svd_reduce`, keeping `keep`), then the mean of the canonical correlations of the reduced pair.

    1.0 when one is an invertible linear map of the other (e.g. y = x A); ~0 for independent data with
    N much larger than the kept dimensions (for independent data the mean is not 0 but a chance level
    that grows with (k_x + k_y) / N: compare with `chance_svcca`). Raises ValueError when N - 1 <=
    k_x + k_y (say so and what to do) or for bad inputs."""
    x, y = _check(x, "x"), _check(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same observations (rows), got {x.shape[0]} and {y.shape[0]}")
    xr, kx, ex = svd_reduce(x, keep)
    yr, ky, ey = svd_reduce(y, keep)
    n = x.shape[0]
    if n - 1 <= kx + ky:
        raise ValueError(f"SVCCA needs more observations than kept dimensions: {n} observations, but the SV step "
                         f"kept {kx} + {ky} = {kx + ky} directions ({keep} of the variance); use more observations "
                         f"(e.g. a finer pooling grid), fewer variables, or a smaller keep")
    rho = canonical_correlations(xr, yr)
    return SVCCAResult(float(rho.mean()), rho, kx, ky, n, ex, ey)


def chance_svcca(x: np.ndarray, y: np.ndarray, keep: float | int = KEEP, seed: int = 0) -> float:
    """SVCCA of x with the rows of y shuffled (seeded): what the same kept dimensions give with the
    pairing destroyed, the level an SVCCA value should be read against. Same shapes/errors as `svcca`."""
    y = _check(y, "y")
    perm = np.random.default_rng(seed).permutation(y.shape[0])
    return svcca(x, y[perm], keep).mean
