"""k-shot sampling: disjoint from the test set, patient-level, deterministic, honest about maximum k."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.fewshot.episodes import ShotsError, max_shots, sample_episode, test_split as make_test_split, trial_seed


def _df(n_patients: int = 60, per_patient: int = 3, seed: int = 0, with_split: bool = False) -> pd.DataFrame:
    """Several images per patient; some patients have positive and negative images; some labels unknown."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        sick = rng.random() < 0.35
        for j in range(per_patient):
            lab = 1.0 if (sick and j > 0) else 0.0
            if rng.random() < 0.1:
                lab = np.nan
            rows.append({"path": f"/img/{p}_{j}.png", "patient_id": f"P{p:03d}", "x": lab,
                         "split": ("test" if p % 4 == 0 else "train") if with_split else ""})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("with_split", [False, True])
def test_test_split_is_patient_level_and_excludes_unknown(with_split):
    df = _df(with_split=with_split)
    pool, test = make_test_split(df, "x", seed=0, test_fraction=0.3)
    lab = df["x"].to_numpy()
    assert not np.isnan(lab[pool]).any() and not np.isnan(lab[test]).any()
    assert set(pool).isdisjoint(test)
    assert set(df["patient_id"].iloc[pool]).isdisjoint(set(df["patient_id"].iloc[test]))
    assert (lab[test] == 1).any() and (lab[test] == 0).any()
    if with_split:
        assert (df["split"].iloc[test] == "test").all()
    else:
        frac = df["patient_id"].iloc[test].nunique() / df["patient_id"][~np.isnan(lab)].nunique()
        assert 0.2 < frac < 0.4
        p2, t2 = make_test_split(df, "x", seed=0, test_fraction=0.3)
        np.testing.assert_array_equal(t2, test)  # the fixed test set is reproducible


def test_episode_is_disjoint_patient_level_and_deterministic():
    df = _df()
    pool, test = make_test_split(df, "x", seed=0)
    lab, pid = df["x"].to_numpy(), df["patient_id"].to_numpy()
    for k in (1, 3, 5):
        for seed in range(20):
            idx = sample_episode(lab, pid, pool, k, seed)
            assert len(idx) == 2 * k
            assert set(idx) <= set(pool) and set(idx).isdisjoint(test)
            np.testing.assert_array_equal(lab[idx], np.r_[np.ones(k), np.zeros(k)])
            assert len(set(pid[idx])) == 2 * k  # one image per patient, classes share no patient
            neg_patients = set(pid[idx[k:]])
            assert not (lab[np.isin(pid, list(neg_patients)) & np.isin(np.arange(len(lab)), pool)] == 1).any()
            np.testing.assert_array_equal(idx, sample_episode(lab, pid, pool, k, seed))
    draws = {tuple(sample_episode(lab, pid, pool, 3, s)) for s in range(20)}
    assert len(draws) > 15  # different seeds give different episodes


def test_episode_draws_every_image_of_a_patient_eventually():
    df = _df(n_patients=10, per_patient=3, seed=4)
    pool = np.flatnonzero(~df["x"].isna().to_numpy())
    lab, pid = df["x"].to_numpy(), df["patient_id"].to_numpy()
    seen = set()
    for s in range(300):
        seen |= set(sample_episode(lab, pid, pool, 1, s)[:1])
    assert seen == set(pool[lab[pool] == 1])


def test_too_many_shots_names_the_maximum():
    df = _df()
    pool, _ = make_test_split(df, "x", seed=0)
    lab, pid = df["x"].to_numpy(), df["patient_id"].to_numpy()
    k_max = max_shots(lab, pid, pool)
    assert k_max > 0
    sample_episode(lab, pid, pool, k_max, 0)
    with pytest.raises(ShotsError, match=f"at most k={k_max}") as e:
        sample_episode(lab, pid, pool, k_max + 1, 0)
    assert e.value.max_k == k_max


def test_trial_seed_depends_on_finding_shots_trial_only():
    s = trial_seed(0, "mass", 5, 3)
    assert s == trial_seed(0, "mass", 5, 3)
    assert len({s, trial_seed(0, "mass", 5, 4), trial_seed(0, "mass", 10, 3), trial_seed(0, "nodule", 5, 3),
                trial_seed(1, "mass", 5, 3)}) == 5
