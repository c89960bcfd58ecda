"""Issue 23 item 1, one head recipe: a Benchmark trial and a Classifier built on the same images, backbone and
seed are the same model; results stored before the recipe keep their meaning under the new mode names."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engine.fewshot.fast_finetune import FastFinetune
from engine.fewshot.finetune import FinetuneConfig
from engine.fewshot.sweep import SweepConfig, run_sweep

SIZE = 32
FAST = FastFinetune(steps=3, views=1, batch_size=8)


@pytest.fixture
def manifest(phantom_set) -> str:
    return str(phantom_set(60, 64, 3, findings=("cardiomegaly",), prevalence=0.5))


def _sweep_scores(manifest: str, modes: tuple[str, ...], out, monkeypatch) -> tuple[pd.DataFrame, list[dict]]:
    """A one-trial 3-shot sweep, and for each of its rows (same order) the trial's episode and logits."""
    import engine.fewshot.sweep as sweep

    seen: list[dict] = []
    real = sweep._score

    def spy(run, p, k, trial, seed, idx, s_tr, s_te):
        seen.append({"seed": seed, "train": idx.copy(), "test": p.test_idx.copy(), "s_tr": s_tr, "s_te": s_te,
                     "y": p.labels[idx]})
        return real(run, p, k, trial, seed, idx, s_tr, s_te)

    monkeypatch.setattr(sweep, "_score", spy)
    cfg = SweepConfig(findings=("cardiomegaly",), inits=("random",), modes=modes, shots=(3,), trials=1,
                      image_size=SIZE, n_bootstrap=20, finetune=FAST)
    res = run_sweep(manifest, cfg, out, "cpu")
    assert len(seen) == len(res.trials) == len(modes)
    return res.trials, seen


def test_a_benchmark_trial_and_a_classifier_build_on_the_same_images_and_seed_are_the_same_model(
        manifest, tmp_path, monkeypatch):
    """The issue's "done when": for probe and finetune, the sweep's trial model and `build_classifier`'s final model
    (same episode images as files, same `random` backbone, the trial's seed) give the same logits on the training
    images and on every held-out test image; a Classifier built with another seed does not (finetune)."""
    from engine.data.manifest import load_manifest
    from engine.fewshot.classifier import build_classifier
    from engine.fewshot.classifier.inputs import to_uint8
    from engine.fewshot.head_recipe import HeadSettings, fit_episode
    from engine.models import load_backbone

    trials, seen = _sweep_scores(manifest, ("probe", "finetune"), tmp_path / "sweep", monkeypatch)
    paths = load_manifest(manifest).df["path"].to_numpy()
    for mode, trial in zip(trials["mode"], seen):
        train, test = list(paths[trial["train"]]), list(paths[trial["test"]])
        clf, _ = build_classifier(train, trial["y"], init="random", mode=mode, image_size=SIZE, seed=trial["seed"],
                                  cv_repeats=1, n_bootstrap=20, finetune_cfg=FAST, finding="cardiomegaly")
        assert clf.mode == mode
        np.testing.assert_allclose(clf.logits(train), trial["s_tr"], rtol=1e-4, atol=1e-4, err_msg=mode)
        np.testing.assert_allclose(clf.logits(test), trial["s_te"], rtol=1e-4, atol=1e-4, err_msg=mode)
        assert np.std(trial["s_te"]) > 1e-3  # a model that tells images apart, not a constant
        if mode == "finetune":  # the comparison can fail: the seed draws the views and the batches
            u8 = to_uint8(train, SIZE)
            other, _ = fit_episode(load_backbone("random", "cpu"), u8, trial["y"], mode, trial["seed"] + 1, "cpu",
                                   settings=HeadSettings(fast=FAST))
            assert np.abs(other.logits(to_uint8(test, SIZE)) - trial["s_te"]).max() > 1e-3


def test_fit_episode_equals_prepare_once_then_fit_and_batched_full_finetune_equals_one_by_one():
    """The shared precomputation changes nothing: a fold fitted on a prepared superset equals fit_episode on its
    own images for probe (convex, order-free); full finetune vmapped equals one trial after another."""
    import torch

    from engine.fewshot.head_recipe import HeadSettings, fit, fit_episode, fit_many, prepare
    from engine.models import load_backbone

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, SIZE, SIZE), dtype=np.uint8)
    y = np.array([0, 1] * 6, dtype=float)
    backbone = load_backbone("random", "cpu")
    settings = HeadSettings(full=FinetuneConfig(mode="last_stage", steps=2, batch_size=4))
    prep = prepare(backbone, images, "probe", "cpu", settings=settings)
    rows = np.arange(2, 10)
    alone, _ = fit_episode(backbone, images[rows], y[rows], "probe", 5, "cpu", settings=settings)
    np.testing.assert_allclose(fit(prep, rows, y[rows], 5).logits(images), alone.logits(images), rtol=1e-6, atol=1e-6)

    full = prepare(backbone, images, "full_finetune", "cpu", settings=settings)
    eps = [(np.arange(0, 6), y[:6], 1), (np.arange(6, 12), y[6:], 2)]
    batched = fit_many(full, eps, batched=True)
    single = fit_many(full, eps, batched=False)
    for b, s in zip(batched, single):
        torch.testing.assert_close(b.head.weight, s.head.weight, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b.logits(images), s.logits(images), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="full_finetune"):
        prepare(backbone, images, "double_finetune", "cpu")


def _age(out) -> None:
    """Turn a sweep folder into what the engine wrote before the head recipe: no recipe_version, the whole-network
    settings under `finetune`, its rows named `finetune`."""
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("recipe_version")
    cfg["finetune"] = cfg.pop("full_finetune")
    cfg["modes"] = ["finetune" if m == "full_finetune" else m for m in cfg["modes"]]
    (out / "config.json").write_text(json.dumps(cfg))
    for name in ("trials.csv", "summary.csv"):
        df = pd.read_csv(out / name)
        df["mode"] = df["mode"].replace({"full_finetune": "finetune"})
        df.to_csv(out / name, index=False)


def test_an_old_sweep_folder_keeps_its_meaning_read_and_resumed(manifest, tmp_path):
    """A folder from before the recipe (its `finetune` = the whole network): read as full_finetune, refused when
    resumed with the Classifier's finetune (nothing written), resumed as full_finetune with no trial run again
    and its files renamed on disk."""
    from engine.fewshot.trials import read_summary, read_trials

    full = FinetuneConfig(mode="last_stage", steps=2, batch_size=4)
    cfg = SweepConfig(findings=("cardiomegaly",), inits=("random",), modes=("probe", "full_finetune"), shots=(2,),
                      trials=2, image_size=SIZE, n_bootstrap=20, full_finetune=full)
    out = tmp_path / "old"
    new = run_sweep(manifest, cfg, out, "cpu").trials
    _age(out)
    assert set(pd.read_csv(out / "trials.csv")["mode"]) == {"probe", "finetune"}  # the old folder as stored

    trials = read_trials(out / "trials.csv")
    pd.testing.assert_frame_equal(trials[new.columns], new, check_dtype=False)
    assert set(read_summary(out / "summary.csv")["mode"]) == {"probe", "full_finetune"}

    stored = (out / "config.json").read_text()
    with pytest.raises(ValueError, match="whole-network finetunes.*full_finetune"):
        run_sweep(manifest, SweepConfig(**{**cfg.__dict__, "modes": ("probe", "finetune")}), out, "cpu", resume=True)
    assert (out / "config.json").read_text() == stored and "finetune" in set(pd.read_csv(out / "trials.csv")["mode"])

    events = []
    res = run_sweep(manifest, cfg, out, "cpu", resume=True, on_event=events.append)
    assert not [e for e in events if e.kind == "metrics"]  # every trial was done: none trained again
    pd.testing.assert_frame_equal(res.trials[new.columns], new, check_dtype=False)
    assert set(pd.read_csv(out / "trials.csv")["mode"]) == {"probe", "full_finetune"}  # renamed on disk
    assert json.loads((out / "config.json").read_text())["recipe_version"] == 2


def test_old_study_and_mode_names_are_read_under_their_meaning():
    from engine.fewshot.modes import check_modes, current_modes
    from engine.study.config import current_state

    old = {"version": 1, "config": {"modes": ["probe", "finetune"], "gradcam_mode": "finetune"}, "stages": {}}
    now = current_state(old)
    assert now["config"]["modes"] == ["probe", "full_finetune"] and now["config"]["gradcam_mode"] == "full_finetune"
    assert current_state(now) == now and old["config"]["modes"] == ["probe", "finetune"]  # once; a copy
    assert current_modes(["finetune", "double_finetune"], 2) == ["finetune", "double_finetune"]
    with pytest.raises(ValueError, match="'double_finetune' is now 'double_full_finetune'"):
        check_modes(["double_finetune"])
