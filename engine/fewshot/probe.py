"""Linear probe: L2-regularized logistic regression on standardized frozen features.

Objective (the same one scikit-learn's `LogisticRegression(C=C)` minimizes, intercept unpenalized):

    min_{w, b}  C * sum_i log(1 + exp(-(2 y_i - 1) (w . z_i + b)))  +  1/2 ||w||^2,
    z_i = (x_i - mean) / scale   (mean / scale of the *training* features; constant features scale 1)

solved exactly in float64 by damped Newton in the row space of the training features (see
`fit_probe`); the problem is strictly convex, so the solution is unique and matches scikit-learn's
to solver precision.

Default C = 1.0 (`DEFAULT_C`). Why: with 1-50 shots there is no held-out data to tune C on (with
1 shot there are two images), so C must be a fixed rule. On standardized features C = 1 puts the
data term and the L2 penalty on the same scale, and it is the choice of the standard few-shot
linear-probe baseline (Tian et al., "Rethinking Few-Shot Image Classification", ECCV 2020: scikit-learn
logistic regression with default settings on frozen embeddings). Because the loss is a sum over
images, the penalty's relative weight shrinks as shots grow, which is the behaviour one wants.

`Probe.as_torch_head()` folds the standardization into an `nn.Linear(D, 1)` on *raw* features, so
`head(backbone(x))` is the probe's logit and Grad-CAM can treat backbone + head as one module.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from scipy.special import expit
from threadpoolctl import ThreadpoolController

DEFAULT_C = 1.0  # see module docstring (Tian et al. 2020; no tuning data at 1-50 shots)
_MIN_SCALE = 1e-6  # features whose training std is below this are treated as constant (scale 1)


@dataclass(frozen=True)
class Probe:
    mean: np.ndarray  # (D,) training feature mean
    scale: np.ndarray  # (D,) training feature std (1 where constant)
    coef: np.ndarray  # (D,) weights on standardized features
    intercept: float
    C: float = DEFAULT_C

    @property
    def dim(self) -> int:
        return int(self.coef.shape[0])

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits (N,) for raw features X (N, D)."""
        X = np.asarray(X, dtype=np.float64)
        return ((X - self.mean) / self.scale) @ self.coef + self.intercept

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(finding present) (N,) for raw features X (N, D)."""
        return expit(self.decision_function(X))

    def raw_weights(self) -> tuple[np.ndarray, float]:
        """(w, b) with logit = X @ w + b on raw features: standardization folded in."""
        w = self.coef / self.scale
        return w, float(self.intercept - w @ self.mean)

    def as_torch_head(self) -> nn.Linear:
        """nn.Linear(D, 1) (float32) whose output equals `decision_function` on raw features."""
        w, b = self.raw_weights()
        head = nn.Linear(self.dim, 1)
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(w).float()[None, :])  # (1, D)
            head.bias.fill_(b)
        return head

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-friendly); float64 so a round trip is exact."""
        f64 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
        return {
            "mean": f64(self.mean), "scale": f64(self.scale), "coef": f64(self.coef),
            "intercept": torch.tensor([self.intercept], dtype=torch.float64),
            "C": torch.tensor([self.C], dtype=torch.float64),
        }

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "Probe":
        a = lambda k: sd[k].detach().cpu().double().numpy().copy()  # noqa: E731
        return cls(mean=a("mean"), scale=a("scale"), coef=a("coef"),
                   intercept=float(sd["intercept"].reshape(-1)[0]), C=float(sd["C"].reshape(-1)[0]))


def standardizer(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of training features; constant features get scale 1."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    return mean, np.where(std > _MIN_SCALE, std, 1.0)


def _newton(F: np.ndarray, y: np.ndarray, C: float, max_iter: int) -> np.ndarray:
    """Minimize C * sum logloss(F beta + b) + 1/2 ||beta||^2 over theta = [beta; b] by damped Newton."""
    n, r = F.shape
    A = np.hstack([F, np.ones((n, 1))])  # (N, r+1)
    reg = np.r_[np.ones(r), 0.0]  # the intercept is not penalized

    def objective(theta: np.ndarray) -> float:
        z = A @ theta
        return C * float(np.sum(np.logaddexp(0.0, z) - y * z)) + 0.5 * float(theta[:r] @ theta[:r])

    theta = np.zeros(r + 1)
    f = objective(theta)
    for _ in range(max_iter):
        p = expit(A @ theta)  # (N,)
        grad = C * (A.T @ (p - y)) + reg * theta  # (r+1,)
        if np.abs(grad).max() < 1e-10:
            break
        H = C * (A.T * (p * (1.0 - p))) @ A + np.diag(reg)  # (r+1, r+1), positive definite
        step = np.linalg.solve(H + 1e-12 * np.eye(r + 1), grad)
        # Newton decrement lambda^2 = grad . step: the step would lower f by about lambda^2 / 2 (Boyd &
        # Vandenberghe 2004, 9.5.1); below f's own rounding error nothing more can be gained (a tighter
        # test made stalled runs repeat a no-op step up to max_iter times, ~25 objective evaluations each).
        if float(grad @ step) <= 2.0 * np.finfo(float).eps * max(1.0, abs(f)):
            break
        t = 1.0
        while True:  # backtracking (Armijo) line search keeps every step a descent step
            cand = theta - t * step
            f_new = objective(cand)
            if f_new <= f - 1e-4 * t * float(grad @ step):
                break
            if t < 1e-10:  # no step of the Newton direction decreases f beyond rounding: converged.
                # (Going on cost up to max_iter x 35 objective evaluations for steps of < 1e-10.)
                return cand if f_new < f else theta
            t *= 0.5
        if f - f_new < 1e-15 * max(1.0, abs(f)) and t == 1.0:
            theta, f = cand, f_new
            break
        theta, f = cand, f_new
    return theta


def fit_probe(X: np.ndarray, y: np.ndarray, C: float = DEFAULT_C, seed: int = 0, max_iter: int = 100) -> Probe:
    """Fit the probe on features X (N, D) and labels y (N,) in {0, 1}; both classes required.

    Solver: the optimal w lies in the row space of the standardized features Z (the loss sees Z w
    only and the penalty is ||w||^2), so with the thin SVD Z = U S V^T, w = V beta and the problem
    is the same logistic regression on F = U S (N x rank) -- at most N + 1 unknowns however large D
    is -- solved exactly by damped Newton in float64. The problem is strictly convex, so the
    solution is unique and `seed` does not change it (it is accepted so every fitting function in the
    few-shot engine has the same shape).
    """
    del seed
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"features must be (N, D) with N labels; got {X.shape} and {y.shape[0]} labels")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if y.min() == y.max():
        raise ValueError("a probe needs both positive and negative examples; got only one class")
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    with _blas_single_thread():  # N <= a few hundred: threads only add contention
        return _fit(X, y, float(C), max_iter)


def _blas_single_thread():
    """Context manager limiting BLAS to one thread for the duration of a fit."""
    return _threadpool_controller().limit(limits=1, user_api="blas")


@functools.lru_cache(maxsize=1)
def _threadpool_controller() -> ThreadpoolController:
    """One ThreadpoolController per process: building it inspects every loaded native library (slow)."""
    return ThreadpoolController()


def _fit(X: np.ndarray, y: np.ndarray, C: float, max_iter: int) -> Probe:
    mean, scale = standardizer(X)
    Z = (X - mean) / scale  # (N, D)
    U, S, Vt = np.linalg.svd(Z, full_matrices=False)  # (N, r), (r,), (r, D)
    keep = S > S.max(initial=0.0) * 1e-12
    U, S, Vt = U[:, keep], S[keep], Vt[keep]
    theta = _newton(U * S, y, C, max_iter)  # [beta (r,); b]
    coef = Vt.T @ theta[:-1]  # (D,)
    return Probe(mean=mean, scale=scale, coef=coef, intercept=float(theta[-1]), C=C)
