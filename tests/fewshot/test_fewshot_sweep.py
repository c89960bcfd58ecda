"""Sweeps on phantom data: chance on noise labels, well above chance on a visible lesion; resume; skips."""
from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest

from engine.events import Cancelled
from engine.fewshot.plots import auc_vs_shots_figure
from engine.fewshot.sweep import TRIAL_COLUMNS, SweepConfig, run_sweep
from engine.models import UnknownInitError


SIZE = 64


def phantom_manifest(tmp_path_factory, phantom_set) -> str:
    """A 240-image phantom (cardiomegaly at 40% prevalence, 64 px; the session's shared set) plus a
    pure-noise label column, in a manifest of its own made once per session."""
    base = tmp_path_factory.getbasetemp() / "fewshot-phantom"
    csv = base / "manifest.csv"
    if not csv.exists():
        data = phantom_set(240, SIZE, 1, findings=("cardiomegaly",), prevalence=0.4).parent
        base.mkdir(parents=True, exist_ok=True)
        df = pd.read_csv(data / "manifest.csv")
        df["path"] = [str((data / p).resolve()) for p in df["path"]]
        df["noise"] = np.random.default_rng(123).integers(0, 2, len(df))  # independent of the images
        df.to_csv(csv, index=False)
    return str(csv)


@pytest.fixture
def manifest(tmp_path_factory, phantom_set) -> str:
    """The shared phantom. Its sweeps pass `cache_dir=sweep_cache` (the session's image and feature caches,
    keyed by content, so sharing them only saves time; every test still runs its own sweep)."""
    return phantom_manifest(tmp_path_factory, phantom_set)


def test_noise_labels_centre_on_chance_and_a_visible_lesion_scores_well_above(manifest, sweep_cache, tmp_path):
    cfg = SweepConfig(findings=("noise", "cardiomegaly"), inits=("random",), modes=("probe",), shots=(5, 20, 40),
                      trials=6, image_size=SIZE)
    res = run_sweep(manifest, cfg, tmp_path / "sweep", "cpu", cache_dir=sweep_cache)
    t = res.trials
    assert len(t) == 2 * 3 * 6 and list(t.columns) == TRIAL_COLUMNS
    noise = t[t["finding"] == "noise"]["auc"]
    assert abs(noise.mean() - 0.5) < 0.07, noise.describe()
    lesion = t[(t["finding"] == "cardiomegaly") & (t["shots"] == 40)]["auc"]
    assert lesion.mean() > 0.7 and lesion.mean() > noise.mean() + 0.15, lesion.describe()
    # Paired trials: the same training images for a given (finding, shots, trial), whatever the init.
    assert t.groupby(["finding", "shots", "trial"])["seed"].nunique().max() == 1
    # The per-trial interval is the whole test pool's; `auc` is on the trial's own resample of it.
    assert ((t["auc_ci_low"] <= t["auc_pool"]) & (t["auc_pool"] <= t["auc_ci_high"])).all()
    assert (t["n_train"] == 2 * t["shots"]).all() and (t["n_test"] > 0).all()
    s = res.summary
    row = s[(s["finding"] == "cardiomegaly") & (s["shots"] == 40)].iloc[0]
    assert row["auc_mean"] == pytest.approx(lesion.mean()) and row["auc_std"] == pytest.approx(lesion.std())
    assert row["auc_ci_low"] <= row["auc_mean"] <= row["auc_ci_high"]
    for name in ("trials.csv", "summary.csv", "auc_vs_shots.html"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "sweep" / "trials.csv"), t, check_dtype=False)


def test_cancel_then_resume_skips_finished_trials_and_matches_a_full_run(manifest, sweep_cache, tmp_path):
    cfg = SweepConfig(findings=("cardiomegaly",), inits=("random",), modes=("probe",), shots=(2, 4), trials=3,
                      image_size=SIZE, n_bootstrap=50)
    stop = threading.Event()

    def stop_after_two(ev):
        if ev.kind == "metrics" and ev.step == 2:
            stop.set()

    out = tmp_path / "resumed"
    with pytest.raises(Cancelled):
        run_sweep(manifest, cfg, out, "cpu", on_event=stop_after_two, stop=stop, cache_dir=sweep_cache)
    assert len(pd.read_csv(out / "trials.csv")) == 2  # finished trials were saved before stopping
    with pytest.raises(ValueError, match="resume"):
        run_sweep(manifest, cfg, out, "cpu")  # never silently overwrites
    events = []
    res = run_sweep(manifest, cfg, out, "cpu", on_event=events.append, resume=True, cache_dir=sweep_cache)
    assert [e.total for e in events if e.kind == "metrics"] == [4] * 4  # only the 4 missing trials ran
    full = run_sweep(manifest, cfg, tmp_path / "full", "cpu")  # its own fresh caches: an independent run
    key = ["finding", "init", "mode", "shots", "trial"]
    a = res.trials.sort_values(key).reset_index(drop=True)
    b = full.trials.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    with pytest.raises(ValueError, match="image_size"):
        run_sweep(manifest, SweepConfig(**{**cfg.__dict__, "image_size": 32}), out, "cpu", resume=True,
                  cache_dir=sweep_cache)


def test_unavailable_init_and_too_many_shots_are_recorded_not_fatal(manifest, sweep_cache, tmp_path):
    cfg = SweepConfig(findings=("cardiomegaly",), inits=("imagenet", "random"), modes=("probe",), shots=(1, 500),
                      trials=2, image_size=SIZE, n_bootstrap=50)
    warnings = []
    res = run_sweep(manifest, cfg, tmp_path / "s", "cpu", on_event=lambda e: e.kind == "warning" and warnings.append(e),
                    cache_dir=sweep_cache)
    s = res.summary.set_index(["init", "shots"])
    assert s.loc[("imagenet", 1), "status"] == "unavailable" and "imagenet" in s.loc[("imagenet", 1), "message"]
    assert s.loc[("random", 500), "status"] == "too_few_shots" and "at most k=" in s.loc[("random", 500), "message"]
    assert s.loc[("random", 1), "status"] == "ok" and s.loc[("random", 1), "n_trials"] == 2
    assert any("imagenet" in w.message for w in warnings) and any("at most k=" in w.message for w in warnings)
    fig = auc_vs_shots_figure(res.summary)
    assert [tr.name for tr in fig.data if tr.showlegend is not False] == ["random (probe)"]
    with pytest.raises(UnknownInitError, match="valid inits: .*random"):
        run_sweep(manifest, SweepConfig(**{**cfg.__dict__, "inits": ("random", "mocov9")}), tmp_path / "u", "cpu",
                  cache_dir=sweep_cache)
    assert not (tmp_path / "u").exists()  # refused before any work


def test_full_finetune_mode_runs_batched_trials(manifest, sweep_cache, tmp_path):
    from engine.fewshot.fast_finetune import FastFinetune
    from engine.fewshot.finetune import FinetuneConfig

    cfg = SweepConfig(findings=("cardiomegaly",), inits=("random",), modes=("probe", "finetune", "full_finetune"),
                      shots=(2,), trials=2, image_size=32, n_bootstrap=50, batch_trials=True,
                      finetune=FastFinetune(steps=2, views=1),
                      full_finetune=FinetuneConfig(mode="last_stage", steps=2, batch_size=4))
    res = run_sweep(manifest, cfg, tmp_path / "ft", "cpu", cache_dir=sweep_cache)
    t = res.trials
    assert sorted(t["mode"].unique()) == ["finetune", "full_finetune", "probe"] and len(t) == 6
    assert t["auc"].between(0, 1).all()
    # same episode per trial in every mode
    assert (t.groupby(["shots", "trial"])["seed"].nunique() == 1).all()
    fig = auc_vs_shots_figure(t)
    dashes = {tr.name: tr.line.dash for tr in fig.data if tr.showlegend is not False}
    assert dashes == {"random (probe)": "solid", "random (finetune)": "dash", "random (full_finetune)": "longdash"}
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["recipe_version"] == 2


def test_the_progress_bar_counts_trials_only_and_never_goes_back(manifest, sweep_cache, tmp_path):
    """Issue 12 item 7: caching, embedding and double finetune's stage one (which counts its own
    finetune steps) used to share the bar with the trials (73/160 -> 0/41 -> 118/160)."""
    from engine.fewshot.finetune import FinetuneConfig

    cfg = SweepConfig(findings=("cardiomegaly",), inits=("random",), modes=("probe", "double_full_finetune"),
                      shots=(2,), trials=2, image_size=32, n_bootstrap=20, batch_trials=True,
                      intermediate_finding="noise", intermediate_max_images=24,
                      full_finetune=FinetuneConfig(mode="last_stage", steps=3, batch_size=4, intermediate_steps=3))
    events = []
    res = run_sweep(manifest, cfg, tmp_path / "bar", "cpu", on_event=events.append, cache_dir=sweep_cache)
    counted = [e for e in events if e.step is not None or e.total is not None]
    assert {e.total for e in counted} == {4} and len(res.trials) == 4
    steps = [e.step for e in counted]
    assert steps[0] == 0 and steps[-1] == 4 and steps == sorted(steps)
    logs = " ".join(e.message for e in events if e.step is None)
    assert "stage one" in logs and "images" in logs  # the sub-phases still report, in words
