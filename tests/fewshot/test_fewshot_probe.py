"""The probe against scikit-learn on the same data, and its torch head."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from engine.fewshot.probe import DEFAULT_C, Probe, fit_probe


@pytest.mark.parametrize("n,d,C", [(2, 64, DEFAULT_C), (20, 512, DEFAULT_C), (60, 32, 0.1), (40, 300, 10.0)])
def test_probe_matches_sklearn(n, d, C):
    rng = np.random.default_rng(n + d)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 5.0, d) + rng.normal(size=d)  # unequal feature scales
    y = np.r_[np.ones(n // 2), np.zeros(n - n // 2)]
    X[y == 1, : d // 4] += 0.5
    probe = fit_probe(X, y, C=C)
    scaler = StandardScaler().fit(X)
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(scaler.transform(X), y)
    Xt = rng.normal(size=(50, d)) * 2.0
    np.testing.assert_allclose(probe.predict_proba(Xt), ref.predict_proba(scaler.transform(Xt))[:, 1], atol=1e-6)
    np.testing.assert_allclose(probe.decision_function(Xt), ref.decision_function(scaler.transform(Xt)),
                               rtol=1e-5, atol=1e-5)


def test_torch_head_equals_decision_function_and_state_round_trip():
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(30, 128))
    y = (X[:, 0] + rng.normal(size=30) > 3.0).astype(float)
    probe = fit_probe(X, y)
    head = probe.as_torch_head()
    assert isinstance(head, torch.nn.Linear) and head.weight.shape == (1, 128)
    Xt = rng.normal(3.0, 2.0, size=(20, 128))
    out = head(torch.from_numpy(Xt).float()).detach().numpy()[:, 0]
    np.testing.assert_allclose(out, probe.decision_function(Xt), rtol=1e-4, atol=1e-4)
    back = Probe.from_state_dict(probe.state_dict())
    np.testing.assert_array_equal(back.decision_function(Xt), probe.decision_function(Xt))


def test_probe_handles_constant_features_and_refuses_one_class():
    X = np.zeros((6, 10))
    X[:, 0] = [1, 2, 3, 7, 8, 9]
    y = np.array([0, 0, 0, 1, 1, 1.0])
    p = fit_probe(X, y)
    assert np.all(np.isfinite(p.coef)) and p.predict_proba(X)[3:].min() > p.predict_proba(X)[:3].max()
    with pytest.raises(ValueError, match="both"):
        fit_probe(X, np.ones(6))


def test_newton_stops_once_its_decrement_is_below_rounding(monkeypatch):
    """Well-separated few-shot features reach f's rounding error in ~10 Newton steps; the solver must stop
    there (it used to repeat a no-op step up to max_iter = 100 times, ~25 objective evaluations each) and
    still give scikit-learn's solution."""
    import engine.fewshot.probe as probe

    rng = np.random.default_rng(3)  # (seeds 3, 6, 10 of 0-11 stalled at max_iter before the fix)
    X = rng.normal(size=(24, 512)).astype(np.float32)
    y = (rng.random(24) < 0.5).astype(float)
    y[:2] = 0, 1
    X[y == 1] += 10.0
    steps = []
    real = probe.expit
    monkeypatch.setattr(probe, "expit", lambda z: steps.append(1) or real(z))  # one call per Newton step
    p = fit_probe(X, y, C=1.0)
    assert len(steps) <= 20, len(steps)
    Z = (X - p.mean) / p.scale
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(Z, y)
    np.testing.assert_allclose(Z @ p.coef + p.intercept, ref.decision_function(Z), rtol=1e-4, atol=1e-4)
