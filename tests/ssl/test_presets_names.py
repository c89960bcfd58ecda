"""Preset names that tell the truth: `paper` is each method's published recipe, `study` the seed study's
variant, and runs stored when `paper` meant the study's settings keep resuming with their recorded numbers."""
from __future__ import annotations

import numpy as np
import pytest

from engine.ssl.presets import PRESETS, build_config, recorded_settings, resume_settings, same_settings
from engine.ssl.registry import METHODS


def test_moco_v2_paper_is_the_published_recipe_and_study_the_seed_studys_variant():
    p = build_config("moco_v2", "paper")
    mc = p.method_config
    # Chen et al. 2020 (arXiv:2003.04297): T 0.2, K 65,536, m 0.999, 128-d MLP head, no variance term
    assert (mc.T, mc.queue, mc.m, mc.proj_dim, mc.var_weight, mc.decorr_weight) == (0.2, 65536, 0.999, 128, 0.0, 0.0)
    assert not mc.head_bn and not mc.head_out_bn
    assert p.epochs == 200 and p.batch_size == 256 and p.lr is None  # lr = 0.03 x batch / 256 (the recipe)
    r = p.recipe
    assert (r.optimizer, r.base_lr, r.weight_decay, r.warmup_epochs) == ("sgd", 0.03, 1e-4, 0.0)
    assert p.aug.crop_scale == (0.2, 1.0) and p.aug.blur_p == 0.5 and p.aug.blur_sigma == (0.1, 2.0)
    assert p.aug.jitter == 0.4 and p.aug.noise_std == 0.0
    s = build_config("moco_v2", "study")
    assert s.method_config.T == 0.07 and s.method_config.var_weight == 1.0  # the seed study's MoCo v2
    assert s.aug.blur_p == 0.0 and s.aug.crop_scale == (0.08, 1.0)


def test_every_method_builds_every_default_preset_and_the_caller_still_wins():
    assert PRESETS[:2] == ("paper", "study")
    for method in METHODS:
        for preset in ("paper", "study"):
            cfg = build_config(method, preset, image_size=64)
            assert cfg.method == method and cfg.image_size == 64
    assert build_config("barlow_twins", "paper").method_config.proj_dim == 8192  # the paper's projector
    assert build_config("barlow_twins", "study").method_config.proj_dim == 2048  # the study's
    assert build_config("masked_contrastive", "paper").method_config.T == 0.2  # MoCo v2's, masked views
    assert build_config("moco_v2", "paper", epochs=3, method_opts={"T": 0.1}).method_config.T == 0.1
    assert build_config("moco_v2", "paper", epochs=3).epochs == 3


def test_the_cli_takes_the_presets_run_length_and_batch_unless_given():
    import argparse

    from engine.ssl.commands import _config, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())

    def cfg(*extra):
        return _config(parser.parse_args(["pretrain", "--data", "x", "--out", "y", *extra]))

    assert (cfg().epochs, cfg().batch_size, cfg().method_config.T) == (200, 256, 0.2)  # moco_v2 paper
    b = cfg("--method", "barlow_twins")
    assert (b.epochs, b.batch_size, b.method_config.proj_dim) == (1000, 2048, 8192)
    s = cfg("--preset", "study")
    assert (s.epochs, s.batch_size, s.method_config.T) == (100, 256, 0.07)  # the config defaults, as before
    assert cfg("--method", "barlow_twins", "--batch-size", "64", "--epochs", "5").batch_size == 64


def test_help_says_which_preset_is_which(capsys):
    from engine.cli import main

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "paper = each method's published recipe (MoCo v2: T 0.2, no variance term" in out
    assert "study = the seed study's settings (MoCo v2 with T 0.07 plus the VICReg variance term)" in out


def _folder(tmp_path, n=16, size=40):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _args(folder, run_dir, preset, *extra):
    return ["pretrain", "--method", "moco_v2", "--data", str(folder), "--batch-size", "8", "--image-size", "32",
            "--out", "old-paper", "--device", "cpu", "--max-steps", "2", "--monitor-every", "0", "--threads", "1",
            "--opt", "queue=64", "--opt", "proj_hidden=16", "--opt", "proj_dim=16", "--opt", "bn_splits=1",
            "--run-dir", str(run_dir), "--preset", preset, *extra]


def test_a_run_stored_when_paper_meant_the_study_resumes_with_its_numbers(tmp_path, capsys):
    from engine.cli import main
    from engine.models import load_backbone

    folder, run_dir = _folder(tmp_path), tmp_path / "run"
    # what `--preset paper` ran before `study` existed: the config's defaults (T 0.07 + variance term)
    assert main(_args(folder, run_dir, "study")) == 0, capsys.readouterr().err
    recorded = recorded_settings(run_dir)
    assert recorded.method_config.T == 0.07 and recorded.method_config.var_weight == 1.0
    capsys.readouterr()
    assert main(_args(folder, run_dir, "paper", "--resume")) == 0  # the same command as then
    err = capsys.readouterr().err
    assert "meant what --preset study means now" in err
    _, meta = load_backbone("old-paper")
    assert meta.info["config"]["method_config"]["T"] == 0.07 and meta.info["config"]["method_config"]["var_weight"] == 1
    # other settings are still refused, naming the difference
    assert main(_args(folder, run_dir, "paper", "--resume", "--lr", "0.5")) != 0
    assert "different settings" in (err := capsys.readouterr().err) and "lr: None -> 0.5" in err


def test_a_stored_job_resumes_with_the_config_its_state_recorded(tmp_path):
    from engine.ssl.pretrain import pretrain_images

    images = np.random.default_rng(0).integers(0, 256, size=(16, 32, 32), dtype=np.uint8)
    kw = dict(image_size=32, batch_size=8, epochs=1, max_steps=2, monitor_every_steps=0, save_every_steps=1,
              method_opts={"queue": 64, "proj_hidden": 16, "proj_dim": 16, "bn_splits": 1})
    old = build_config("moco_v2", "study", **kw)  # a job's params said `paper`, which then built this
    pretrain_images(images, old, "job-run", "cpu", tmp_path / "ssl")
    now = build_config("moco_v2", "paper", **{**kw, "save_every_steps": 5})  # the same params today
    assert not same_settings(now, old)
    resumed = resume_settings(now, tmp_path / "ssl")
    assert same_settings(resumed, old) and resumed.save_every_steps == 5  # recorded numbers, today's frequencies
    assert pretrain_images(images, resumed, "job-run", "cpu", tmp_path / "ssl", resume=True).exists()
    assert resume_settings(now, tmp_path / "nothing-here") is now
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state.pt").write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a valid training state"):
        resume_settings(now, tmp_path / "bad")
