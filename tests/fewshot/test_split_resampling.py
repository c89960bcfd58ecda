"""Uncertainty that includes the test set (issue #25): per-trial patient-level test samples, the resampled SE,
its calibration on a simulated population, old results labelled, and two sweeps differing only in their
split seed giving overlapping intervals for d (phantoms; real X-rays when ../shared/data exists)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engine.fewshot.episodes import test_sample, test_seed, test_split
from engine.fewshot.metrics import FIXED, RESAMPLED, auc, paired_differences, resampled_se, uncertainty_of
from engine.fewshot.sweep import SweepConfig, run_sweep
from engine.fewshot.trials import _shared_aucs, read_trials, summarize
from tests.fewshot.test_fewshot_sweep import SIZE, phantom_manifest


def _frame(n_pat: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pats = np.repeat([f"p{i}" for i in range(n_pat)], rng.integers(1, 4, n_pat))
    y = np.array([i % 2 for i in range(n_pat)])[[int(p[1:]) for p in pats]].astype(float)
    return pd.DataFrame({"path": [f"x{i}.png" for i in range(len(pats))], "patient_id": pats, "f": y})


def test_test_sample_is_a_patient_level_stratified_bootstrap_of_the_test_pool():
    df = _frame()
    labels, pids = df["f"].to_numpy(), df["patient_id"].to_numpy()
    _, test = test_split(df, "f", seed=0)
    a = test_sample(labels, pids, test, 7)
    assert np.array_equal(a, test_sample(labels, pids, test, 7))  # seeded
    assert not np.array_equal(a, test_sample(labels, pids, test, 8))
    rows = test[a]
    assert set(rows) <= set(test)  # only test-pool images
    # whole patients: every drawn patient contributes all of its test images (a multiple of them)
    drawn = pd.Series(pids[rows]).value_counts()
    per_patient = pd.Series(pids[test]).value_counts()
    assert all(drawn[p] % per_patient[p] == 0 for p in drawn.index)
    # stratified: as many positive / negative patients drawn as the pool has
    pool_pos = {p for p in pids[test] if labels[test][pids[test] == p].max() == 1}
    n_pos_draws = sum(drawn[p] // per_patient[p] for p in drawn.index if p in pool_pos)
    assert n_pos_draws == len(pool_pos) and set(labels[rows]) == {0.0, 1.0}
    assert test_seed(0, "f", 5, 1) != test_seed(1, "f", 5, 1) and test_seed(0, "f", 5, 1) == test_seed(0, "f", 5, 1)


def test_resampled_se_adds_the_test_set_term_to_the_episode_term():
    x = np.array([0.1, 0.2, 0.3, 0.4])
    assert resampled_se(x, x) == pytest.approx(x.std(ddof=1) / 2)  # no test-sample deviation: episodes only
    pool = x - np.array([0.05, -0.05, 0.05, -0.05])
    assert resampled_se(x, pool) == pytest.approx(np.sqrt(x.var(ddof=1) / 4 + 0.05 ** 2))
    assert np.isnan(resampled_se(x[:1], pool[:1]))
    # two-way bootstrap: a test deviation fully shared by the trials counts once (not divided by J) ...
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.05, 400)
    boot = x[:, None] + shared[None, :]
    se_shared = resampled_se(x, x, boot)
    assert se_shared == pytest.approx(np.sqrt(x.var(ddof=1) / 4 + shared.var(ddof=1)), rel=1e-6)
    # ... and one independent across trials adds (almost) nothing beyond s(x)/sqrt(J), which already holds it
    indep = x[:, None] + rng.normal(0, 0.05, (4, 400))
    assert resampled_se(x, x, indep) < se_shared and resampled_se(x, x, indep) == pytest.approx(
        x.std(ddof=1) / 2, abs=0.01)


def _simulated_rows(rng, pop_y, pop_a, pop_b, n_test: int, trials: int, resample: bool, finding: str = "f"):
    """One 'sweep' on a simulated population: a fresh test pool of n_test patients, `trials` episodes (an
    episode shifts each model's separation by its own noise), each trial on its own bootstrap or the pool.
    Its trial rows, under `finding` (paired_differences gives one d and interval per finding)."""
    idx = rng.choice(pop_y.size, n_test, replace=False)
    y, a, b = pop_y[idx], pop_a[idx], pop_b[idx]
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    shared = np.stack([np.bincount(np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)], minlength=y.size)
                       for _ in range(60)])  # (60, n_test) resample counts shared by every trial
    rows = []
    for t in range(trials):
        ea, eb = rng.normal(0, 0.4, 2)  # the training episode's luck, per model
        sa, sb = a + ea * y, b + eb * y
        s = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)] if resample else np.arange(y.size)
        for init, sc in (("random", sb), ("ssl", sa)):
            rows.append({"finding": finding, "init": init, "mode": "probe", "shots": 5, "trial": t,
                         "auc": auc(y[s], sc[s]), "auc_pool": auc(y, sc) if resample else np.nan,
                         "auc_boot": " ".join(f"{v:.5f}" for v in _shared_aucs(y, sc, shared)) if resample else np.nan})
    return rows


def test_the_new_interval_covers_the_population_difference_and_the_old_one_does_not():
    """Calibration on a simulated population (truth known): 60 independent test pools of 60 patients.
    Old: every trial on the pool, sd/sqrt(J); new: every trial on its own bootstrap, resampled_se.
    Each pool is its own finding, so one paired_differences call gives the 60 intervals of a method."""
    rng = np.random.default_rng(0)
    n = 20000
    y = (rng.random(n) < 0.5).astype(float)
    a, b = rng.normal(0, 1, n) + 1.2 * y, rng.normal(0, 1, n) + 1.0 * y
    truth = auc(y, a) - auc(y, b)
    cover = {}
    for resample in (False, True):
        rows = [r for i in range(60) for r in _simulated_rows(rng, y, a, b, 60, 10, resample, f"pool{i}")]
        d = paired_differences(pd.DataFrame(rows).dropna(axis=1, how="all"), "random")
        assert len(d) == 60 and {r["uncertainty"] for r in d} == {RESAMPLED if resample else FIXED}
        cover[resample] = float(np.mean([r["ci_low"] <= truth <= r["ci_high"] for r in d]))
    assert cover[True] >= 0.85, cover
    assert cover[False] < cover[True] - 0.2, cover


def test_results_without_the_pool_auc_keep_their_old_meaning(tmp_path):
    rows = [{"finding": "f", "init": i, "mode": "probe", "shots": 5, "trial": t, "seed": t, "auc": 0.6 + 0.01 * t + d,
             "auc_ci_low": 0.5, "auc_ci_high": 0.7, "accuracy": 0.5, "sensitivity": 0.5, "specificity": 0.5,
             "precision": 0.5, "f1": 0.5, "threshold": 0.5, "n_train": 10, "n_test": 40}
            for t in range(4) for i, d in (("random", 0.0), ("ssl", 0.02))]
    pd.DataFrame(rows).to_csv(tmp_path / "trials.csv", index=False)  # an old file: no auc_pool column
    old = read_trials(tmp_path / "trials.csv")
    assert uncertainty_of(old) == FIXED and old["auc_pool"].isna().all()
    r = paired_differences(old, "random")[0]
    assert r["uncertainty"] == FIXED and r["se"] == pytest.approx(0.0, abs=1e-12)
    assert set(summarize(old)["uncertainty"]) == {FIXED}
    # resuming an old sweep folder (config without resample_test) under the new method is refused
    (tmp_path / "config.json").write_text(json.dumps({**SweepConfig(findings=("f",)).to_dict(),
                                                      "resample_test": None, "uncertainty": None}))
    from engine.fewshot.sweep import _check_config

    with pytest.raises(ValueError, match="resample_test"):
        _check_config(tmp_path, SweepConfig(findings=("f",)), resume=True)


@pytest.fixture
def phantom_ckpt(tmp_path_factory, phantom_set):
    """The shared 240-image phantom manifest (no split column) and a second init: a random-weight checkpoint."""
    import torch

    from engine.models.backbones import build_backbone
    from engine.models.registry import save_backbone

    torch.manual_seed(5)
    save_backbone(build_backbone("resnet18"), "other-r18", {"method": "fake", "arch": "resnet18"})
    return phantom_manifest(tmp_path_factory, phantom_set)


def _overlap(a: list[dict], b: list[dict]) -> list[tuple]:
    key = lambda r: (r["finding"], r["init"], r["mode"], r["shots"])  # noqa: E731
    bb = {key(r): r for r in b}
    return [(key(r), r["ci_low"], r["ci_high"], bb[key(r)]["ci_low"], bb[key(r)]["ci_high"]) for r in a
            if max(r["ci_low"], bb[key(r)]["ci_low"]) > min(r["ci_high"], bb[key(r)]["ci_high"])]


def test_phantom_sweeps_differing_only_in_split_seed_give_overlapping_intervals_for_d(phantom_ckpt, sweep_cache,
                                                                                       tmp_path):
    res = {}
    for split_seed in (1, 2):
        cfg = SweepConfig(findings=("cardiomegaly",), inits=("random", "other-r18"), shots=(5, 20), trials=6,
                          image_size=SIZE, n_bootstrap=50, split_seed=split_seed)
        res[split_seed] = run_sweep(phantom_ckpt, cfg, tmp_path / f"s{split_seed}", "cpu", cache_dir=sweep_cache)
        t = res[split_seed].trials
        # both inits of a trial share the training episode and the test sample
        assert t.groupby(["shots", "trial"])["n_test"].nunique().max() == 1
        assert t.groupby(["shots", "trial"])["seed"].nunique().max() == 1
        assert t["auc_pool"].notna().all() and set(res[split_seed].summary["uncertainty"]) == {RESAMPLED}
        assert json.loads((tmp_path / f"s{split_seed}" / "config.json").read_text())["uncertainty"] == RESAMPLED
    a, b = (paired_differences(res[s].trials, "random") for s in (1, 2))
    assert len(a) == 2 and all(r["uncertainty"] == RESAMPLED and r["ci_low"] < r["diff"] < r["ci_high"] for r in a)
    assert not _overlap(a, b), _overlap(a, b)


@pytest.mark.parametrize("task,findings,patients", [("nih_pneumonia", ("pneumonia",), None),
                                                    ("kermany224", ("pneumonia", "bacterial", "viral"), 400)])
def test_real_xrays_sweeps_differing_only_in_split_seed_overlap(shared_data, tmp_path, monkeypatch, task, findings,
                                                                patients):
    """Real tasks, split column dropped so the split seed draws the test set (Kermany: a seeded subsample of
    `patients` patients, to stay small): shipped backbone vs random, every finding and shot count overlaps.
    The two sweeps share one image and feature cache (keyed by content): the second decodes and embeds only
    the images the first did not use (features are the same arrays either way; only time is saved)."""
    from tests.conftest import SHIPPED_DIR

    monkeypatch.setenv("SCARCE_CXR_SHIPPED", str(SHIPPED_DIR))
    src = shared_data / task
    df = pd.read_csv(src / "manifest.csv").drop(columns=["split"])
    if patients:
        keep = np.random.default_rng(0).choice(np.unique(df["patient_id"].astype(str)), patients, replace=False)
        df = df[df["patient_id"].astype(str).isin(keep)]
    df["path"] = [str(src / p) for p in df["path"]]
    csv = tmp_path / "m.csv"
    df.to_csv(csv, index=False)
    runs = []
    for split_seed in (11, 12):
        cfg = SweepConfig(findings=findings, inits=("random", "cxr-moco_v2-resnet18-224"), shots=(5, 20),
                          trials=8, image_size=64, n_bootstrap=20, split_seed=split_seed)
        res = run_sweep(csv, cfg, tmp_path / f"s{split_seed}", "cpu", cache_dir=tmp_path / "cache")
        runs.append(paired_differences(res.trials, "random"))
    assert len(runs[0]) == 2 * len(findings) and not _overlap(*runs), _overlap(*runs)


def test_cli_sweep_writes_and_prints_d_vs_random_with_the_split_seed(phantom_ckpt, sweep_cache, tmp_path, capsys):
    from engine.cli import main

    out = tmp_path / "cli"
    assert main(["sweep", "--manifest", phantom_ckpt, "--finding", "cardiomegaly", "--inits", "random,other-r18",
                 "--shots", "3", "--trials", "3", "--image-size", str(SIZE), "--device", "cpu", "--split-seed", "4",
                 "--out", str(out), "--cache-dir", str(sweep_cache)]) == 0
    text = capsys.readouterr().out
    assert "Paired difference d vs random" in text and RESAMPLED in text and "(" in text.split("d vs random")[1]
    paired = pd.read_csv(out / "paired.csv")
    assert list(paired["init"]) == ["other-r18"] and set(paired["uncertainty"]) == {RESAMPLED}
    assert (paired["ci_low"] <= paired["diff"]).all() and (paired["diff"] <= paired["ci_high"]).all()
    assert json.loads((out / "config.json").read_text())["split_seed"] == 4
