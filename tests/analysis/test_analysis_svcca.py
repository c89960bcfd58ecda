"""SVCCA (engine.analysis.svcca) against hand computations and known cases on small arrays."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import eigh, sqrtm

from engine.analysis.svcca import canonical_correlations, chance_svcca, svcca, svd_reduce


def hotelling(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations by the textbook formula (Hotelling 1936): the square roots of the
    eigenvalues of Sxx^-1 Sxy Syy^-1 Syx, descending; here as a symmetric eigenproblem."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    n = len(x)
    sxx, syy, sxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)
    wx = np.linalg.inv(np.real(sqrtm(sxx)))
    m = wx @ sxy @ np.linalg.inv(syy) @ sxy.T @ wx
    ev = eigh(m, eigvals_only=True)[::-1][: min(x.shape[1], y.shape[1])]
    return np.sqrt(np.clip(ev, 0, 1))


def google_cca(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The reference code's route (google/svcca cca_core.py): whiten each block with Sigma^-1/2, then the
    singular values of Sxx^-1/2 Sxy Syy^-1/2 are the canonical correlations."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    ix, iy = np.linalg.inv(np.real(sqrtm(sxx))), np.linalg.inv(np.real(sqrtm(syy)))
    return np.linalg.svd(ix @ sxy @ iy, compute_uv=False)


def test_canonical_correlations_match_hand_computations():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(12, 2))  # two shared latent signals
    x = np.c_[z[:, 0] + 0.3 * rng.normal(size=12), rng.normal(size=12)]  # (12, 2)
    y = np.c_[z[:, 0] + 0.5 * rng.normal(size=12), z[:, 1], rng.normal(size=12)]  # (12, 3)
    rho = canonical_correlations(x, y)
    assert rho.shape == (2,) and rho[0] >= rho[1]
    np.testing.assert_allclose(rho, hotelling(x, y), atol=1e-9)
    np.testing.assert_allclose(rho, google_cca(x, y), atol=1e-9)
    # scikit-learn's iterative CCA finds the first pair of canonical variates: same first correlation
    from sklearn.cross_decomposition import CCA

    u, v = CCA(n_components=1, max_iter=5000, tol=1e-12).fit(x, y).transform(x, y)
    assert abs(np.corrcoef(u[:, 0], v[:, 0])[0, 1]) == pytest.approx(rho[0], abs=1e-4)
    # worked by hand: x = (a, b), y = (2a, c) with a, b, c orthogonal, centred columns (6 observations):
    # a is shared (correlation 1), b and c are uncorrelated with everything else (0)
    a, b, c = (np.array(v, float) for v in ([1, -1, 0, 0, 0, 0], [1, 1, -1, -1, 0, 0], [0, 0, 1, -1, 0, 0]))
    rho2 = canonical_correlations(np.c_[a, b], np.c_[2 * a, c])
    np.testing.assert_allclose(rho2, [1.0, 0.0], atol=1e-7)


def test_sv_step_keeps_the_directions_explaining_the_variance_fraction():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(200, 5)))
    q = q - q.mean(0)  # centred columns, so the singular values below are the centred ones
    q, _ = np.linalg.qr(q)
    s = np.array([10.0, 5.0, 2.0, 1.0, 0.1])  # variances 100, 25, 4, 1, 0.01
    x = (q * s) @ np.linalg.qr(rng.normal(size=(5, 5)))[0]  # (200, 5), rotated
    frac = np.cumsum(s**2) / (s**2).sum()  # 0.7693, 0.9616, 0.9924, 0.99997, 1
    for keep, k in ((0.5, 1), (0.9, 2), (0.99, 3), (0.999, 4), (1.0, 5)):
        xr, kk, ex = svd_reduce(x, keep)
        assert kk == k and xr.shape == (200, k) and ex == pytest.approx(frac[k - 1])
        np.testing.assert_allclose(np.linalg.norm(xr, axis=0), s[:k], rtol=1e-9)  # U_k S_k
    assert svd_reduce(x, 2)[1] == 2 and svd_reduce(x, 50)[1] == 5  # an int keeps that many (at most the rank)
    for bad in (0, 1.5, -0.2):
        with pytest.raises(ValueError, match="keep"):
            svd_reduce(x, bad)
    with pytest.raises(ValueError, match="no variance"):
        svd_reduce(np.ones((10, 3)), 0.99)


def test_svcca_known_cases_and_invariances():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    a = rng.normal(size=(8, 8))
    r = svcca(x, x @ a + 3.0, keep=8)  # an invertible linear map of x (plus an offset): identical information
    assert r.mean == pytest.approx(1.0, abs=1e-9) and r.k_x == r.k_y == 8 and r.n == 400
    # with the 99% SV step: invariant to rotations and scale (which keep the singular directions), not to
    # every linear map (a non-orthogonal map changes which directions explain 99%)
    rot = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    assert svcca(x, 5 * x @ rot + 1.0).mean == pytest.approx(1.0, abs=1e-9)
    assert svcca(x, x @ a).mean > 0.98
    indep = svcca(x, rng.normal(size=(400, 8)), keep=8)
    assert indep.mean < 0.2  # unrelated data: chance level (~sqrt(k/N))
    assert chance_svcca(x, x @ a, keep=8) == pytest.approx(indep.mean, abs=0.08)  # shuffling rows gives the same
    half = svcca(np.c_[x[:, :4], rng.normal(size=(400, 4))], x, keep=8)  # shares 4 of 8 dimensions
    assert indep.mean < half.mean < 0.9 and half.correlations[3] > 0.999 and half.correlations[4] < 0.3
    # the SV step drops low-variance noise directions before the CC step
    noisy = np.c_[x, 1e-4 * rng.normal(size=(400, 20))]
    assert svcca(noisy, x).k_x == svcca(x, x).k_x


def test_svcca_refuses_too_few_observations_and_bad_inputs():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="more observations than kept dimensions"):
        svcca(rng.normal(size=(20, 15)), rng.normal(size=(20, 15)))
    with pytest.raises(ValueError, match="more observations than variables"):
        canonical_correlations(rng.normal(size=(6, 3)), rng.normal(size=(6, 3)))
    with pytest.raises(ValueError, match="same observations"):
        svcca(rng.normal(size=(20, 2)), rng.normal(size=(21, 2)))
    with pytest.raises(ValueError, match="NaN"):
        svcca(np.full((20, 2), np.nan), rng.normal(size=(20, 2)))
    with pytest.raises(ValueError, match="2-D"):
        svcca(rng.normal(size=20), rng.normal(size=(20, 2)))
