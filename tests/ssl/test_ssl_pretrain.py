"""The pretraining loop end to end on CPU: every method, export, resume, stop, NaN, errors, CLI."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from engine.events import Cancelled
from engine.models import InitUnavailableError, load_backbone
from engine.ssl import (
    METHODS, BarlowConfig, DINOConfig, MaskedContrastiveConfig, MoCoConfig, NonFiniteLossError, PretrainConfig,
    SparKConfig, pretrain_images,
)
from engine.ssl.moco_v2 import MoCoV2


SMALL = {
    "moco_v2": (MoCoConfig(queue=40, proj_hidden=64, proj_dim=32), 32),  # 40 % 8 keys per step != 0: wraps
    "barlow_twins": (BarlowConfig(proj_dim=64, grad_checkpointing=True), 32),
    "spark": (SparKConfig(decoder_width=64), 64),
    "dino": (DINOConfig(out_dim=64, hidden_dim=64, bottleneck_dim=16, n_local_crops=2), 32),
    "masked_contrastive": (MaskedContrastiveConfig(queue=40, proj_hidden=64, proj_dim=32, recon_weight=1.0,
                                                   decoder_width=64), 64),
}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(24, 64, 64), dtype=np.uint8)


def _cfg(method: str, **kw) -> PretrainConfig:
    mc, size = SMALL[method]
    base = dict(method=method, epochs=1, batch_size=8, image_size=size, lr=0.01, monitor_every_steps=2,
                monitor_images=8, save_every_steps=2, method_config=mc)
    return PretrainConfig(**{**base, **kw})


# The quick preset with the small model sizes of SMALL (and its 40-key queue that wraps) over it: one run per
# method serves both the export test and the quick-preset test below.
QUICK_SMALL = {
    "moco_v2": {"queue": 40, "proj_hidden": 64, "proj_dim": 32},
    "barlow_twins": {"proj_dim": 64, "grad_checkpointing": True},
    "spark": {"decoder_width": 64},
    "dino": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16},
    "masked_contrastive": {"queue": 40, "proj_hidden": 64, "proj_dim": 32, "decoder_width": 64},
}


@pytest.fixture(scope="module")
def quick_run(images, tmp_path_factory):
    """`quick_run(method)` -> (cfg, path, events, checkpoint_dir, run_dir): a 3-step quick-preset run of `method`
    (small heads), trained once per module on first use and exported to a checkpoint folder of its own."""
    from engine.ssl.presets import build_config

    runs: dict[str, tuple] = {}

    def get(method: str) -> tuple:
        if method not in runs:
            base = tmp_path_factory.mktemp(f"quick-{method}")
            cfg = build_config(method, "quick", method_opts=QUICK_SMALL[method], epochs=1, batch_size=8,
                               image_size=SMALL[method][1], max_steps=3, monitor_every_steps=2, monitor_images=8,
                               save_every_steps=2)
            events: list = []
            path = pretrain_images(images, cfg, f"t-{method}", "cpu", base / "run", on_event=events.append,
                                   checkpoint_dir=base / "ck", data_fingerprint="fp")
            runs[method] = (cfg, path, events, base / "ck", base / "run")
        return runs[method]

    return get


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_and_exports_a_loadable_backbone(method, quick_run):
    cfg, path, events, ck, run_dir = quick_run(method)
    assert path.exists() and path.name == f"t-{method}.safetensors" and path.parent == ck
    model, meta = load_backbone(f"t-{method}", checkpoint_dir=ck)
    assert meta.method == method and meta.arch == "resnet18"
    info = meta.info
    assert info["steps"] == 3 and info["data_fingerprint"] == "fp" and info["n_images"] == 24
    assert info["config"]["method_config"] == json.loads(json.dumps(cfg.method_config.__dict__))
    assert set(info["collapse"]["final"]) >= {"std", "cos", "erank", "backbone_std", "backbone_erank"}
    assert [h["step"] for h in info["collapse"]["history"]] == [0, 2, 3]
    assert np.isfinite(info["loss"]["last"])
    progress = [e for e in events if e.kind == "progress"]
    assert [e.step for e in progress] == [1, 2, 3] and all({"loss", "lr"} <= set(e.metrics) for e in progress)
    assert [e.step for e in events if e.kind == "metrics"] == [0, 2, 3]
    random_model, _ = load_backbone("random")
    assert not torch.equal(model.conv1.weight, random_model.conv1.weight)  # trained, not the random init
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    state = torch.load(run_dir / "state.pt", weights_only=True)  # safe to load
    assert state["step"] == 3


@pytest.mark.parametrize("method", ["moco_v2", "dino"])
def test_a_stopped_run_resumes_exactly(method, images, tmp_path):
    images = images[:8]
    cfg = _cfg(method, epochs=2, batch_size=4, save_every_steps=100)  # 2 x 2 steps
    losses_a: list[float] = []
    pretrain_images(images, cfg, "a", "cpu", tmp_path / "a",
             on_event=lambda e: e.kind == "progress" and losses_a.append(e.metrics["loss"]))

    stop, losses_b = threading.Event(), []

    def on_b(e):
        if e.kind == "progress":
            losses_b.append(e.metrics["loss"])
            if e.step == 1:
                stop.set()

    with pytest.raises(Cancelled):  # stopped inside the first epoch: the resumed part crosses the epoch boundary
        pretrain_images(images, cfg, "b", "cpu", tmp_path / "b", on_event=on_b, stop=stop)
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=True)["step"] == 1
    pretrain_images(images, cfg, "b", "cpu", tmp_path / "b", resume=True,
             on_event=lambda e: e.kind == "progress" and losses_b.append(e.metrics["loss"]))
    assert len(losses_b) == 4
    np.testing.assert_allclose(losses_b, losses_a, rtol=1e-5)
    (ma, info_a), (mb, info_b) = load_backbone("a"), load_backbone("b")
    assert info_b.info["steps"] == 4
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=k)
    sa = torch.load(tmp_path / "a" / "state.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "b" / "state.pt", weights_only=True)["model"]
    key = "queue" if method == "moco_v2" else "center"
    torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_state(images, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = MoCoV2.forward

    def poisoned(self, *views):
        loss, metrics = real(self, *views)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    monkeypatch.setattr(MoCoV2, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3/.*last good state \(step 2\)"):
        pretrain_images(images, _cfg("moco_v2", epochs=2, max_steps=5), "nan", "cpu", tmp_path / "run")
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    monkeypatch.setattr(MoCoV2, "forward", real)
    path = pretrain_images(images, _cfg("moco_v2", epochs=2, max_steps=5), "nan", "cpu", tmp_path / "run", resume=True)
    assert json.loads(path.with_suffix(".json").read_text())["steps"] == 5


def test_collapse_warnings_and_clear_errors(images, tmp_path):
    events = []
    # judged after the monitor's warm-up (the step-0 baseline and 3 readings): readings 4 and 5 break the floor
    pretrain_images(images, _cfg("barlow_twins", epochs=2, max_steps=5, monitor_every_steps=1, collapse_std_min=10.0),
                    "w", "cpu", tmp_path / "w", on_event=events.append)
    warnings = [e for e in events if e.kind == "warning"]
    assert warnings and all("collapse" in e.message and e.level == "warning" for e in warnings)
    assert [e.step for e in warnings] == [4, 5]  # not for the untrained step-0 baseline nor the warm-up
    assert np.isfinite([e.metrics["loss"] for e in events if e.kind == "progress"]).all()

    with pytest.raises(ValueError, match="fewer than one batch"):
        pretrain_images(images[:4], _cfg("moco_v2"), "x", "cpu", tmp_path / "x")
    with pytest.raises(ValueError, match="divisible by its patch 32"):
        PretrainConfig(method="spark", image_size=48)
    with pytest.raises(ValueError, match="unknown SSL method"):
        PretrainConfig(method="simclr")
    with pytest.raises(ValueError, match="invalid output name"):
        pretrain_images(images, _cfg("moco_v2"), "bad name", "cpu", tmp_path / "x")
    with pytest.raises(ValueError, match="uint8"):
        pretrain_images(images.astype(np.float32), _cfg("moco_v2"), "x", "cpu", tmp_path / "x")
    with pytest.raises(InitUnavailableError, match="imagenet"):  # tests run offline with an empty weights dir
        pretrain_images(images, _cfg("moco_v2", init="imagenet"), "x", "cpu", tmp_path / "x")
    # resuming with other settings is refused, naming the difference
    pretrain_images(images, _cfg("moco_v2", max_steps=1), "r", "cpu", tmp_path / "r")
    with pytest.raises(ValueError, match=r"lr: 0.01 -> 0.02"):
        pretrain_images(images, _cfg("moco_v2", max_steps=1, lr=0.02), "r", "cpu", tmp_path / "r", resume=True)


def test_the_autocast_path_trains_with_finite_losses(images, tmp_path):
    """amp forced on: bf16 autocast on the CPU (the CUDA path's code; one step of the smallest batch, as bf16
    backward on a CPU without bf16 instructions takes seconds per step), monitor readings included."""
    events = []
    cfg = _cfg("barlow_twins", batch_size=2, max_steps=1, monitor_every_steps=1, monitor_images=2, amp=True)
    pretrain_images(images[:4], cfg, "a", "cpu", tmp_path / "a", on_event=events.append)
    losses = [e.metrics["loss"] for e in events if e.kind == "progress" and "loss" in (e.metrics or {})]
    assert losses and np.isfinite(losses).all()


def test_config_round_trips_through_json():
    cfg = _cfg("dino")
    again = PretrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.method_config, DINOConfig)
    with pytest.raises(ValueError, match="unknown MoCoConfig fields"):
        PretrainConfig(method="moco_v2", method_config={"queu": 4})


def test_cli_method_names_and_overrides():
    from engine.ssl.commands import method_overrides

    assert method_overrides("moco_v2", ["queue=4096", "T=0.2", "proj_hidden=128"]) == {"queue": 4096, "T": 0.2, "proj_hidden": 128}
    assert method_overrides("barlow_twins", ["grad_checkpointing=off"]) == {"grad_checkpointing": False}
    assert method_overrides("dino", ["global_scale=0.4,1"]) == {"global_scale": (0.4, 1.0)}
    with pytest.raises(ValueError, match="KEY one of"):
        method_overrides("spark", ["queue=3"])


def _png_folder(tmp_path, n=20, size=48):
    from PIL import Image

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size + 8), dtype=np.uint8)).save(folder / "sub" / f"{i}.png")
    return folder


def test_cli_pretrains_from_a_folder(tmp_path, capsys):
    pytest.importorskip("engine.data.cache")
    from engine.cli import main

    folder = _png_folder(tmp_path)
    rc = main(["pretrain", "--method", "moco_v2", "--data", str(folder), "--epochs", "1", "--batch-size", "8",
               "--image-size", "32", "--out", "cli-moco", "--device", "cpu", "--max-steps", "2",
               "--monitor-every", "1", "--opt", "queue=64", "--opt", "proj_hidden=32", "--run-dir", str(tmp_path / "run"),
               "--preset", "quick", "--aug", "blur_p=0", "--aug", "crop_scale=0.5,1", "--threads", "1"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert out.out.strip().endswith("cli-moco.safetensors")
    assert "CPU threads: 1 (as asked)" in out.err
    _, meta = load_backbone("cli-moco")
    mc = meta.info["config"]["method_config"]
    assert meta.info["n_images"] == 20 and mc["queue"] == 64  # --opt wins over the preset
    assert mc["head_bn"] and mc["m"] == 0.99 and meta.info["config"]["lr"] == 0.0075  # the rest is the quick preset
    assert meta.info["data_fingerprint"]
    aug = meta.info["config"]["aug"]
    assert aug["blur_p"] == 0 and aug["crop_scale"] == [0.5, 1.0] and aug["noise_std"] == 0.05  # --aug over the preset
    assert meta.info["train_seconds"] > 0 and meta.info["torch"]
    assert main(["pretrain", "--data", str(folder), "--out", "x", "--aug", "blur=1"]) == 2  # a typo: clear error
    assert "--aug 'blur=1': expected KEY=VALUE with KEY one of" in capsys.readouterr().err


def test_data_resolution_leaves_the_test_split_out(tmp_path):
    from engine.ssl.pretrain import resolve_image_paths

    folder = _png_folder(tmp_path, n=6)
    rows = ["path,patient_id,split,finding"] + [f"sub/{i}.png,p{i},{'test' if i < 2 else 'train'},{i % 2}" for i in range(6)]
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    train = resolve_image_paths(folder / "manifest.csv")
    assert len(train) == 4 and not any(p.endswith(("/0.png", "/1.png")) for p in train)
    assert len(resolve_image_paths(folder / "manifest.csv", include_test=True)) == 6
    assert len(resolve_image_paths(folder)) == 6  # a folder: every image, recursively
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_image_paths(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        resolve_image_paths(tmp_path / "empty")


def test_resume_command_repeats_the_settings():
    from engine.cli import build_parser
    from engine.ssl.commands import _resume_command

    args = build_parser().parse_args(["pretrain", "--data", "d.csv", "--out", "x", "--method", "dino", "--lr", "0.1",
                                      "--opt", "out_dim=512"])
    cmd = _resume_command(args)
    assert cmd.startswith("python -m engine pretrain") and cmd.endswith("--resume")
    assert "--method dino" in cmd and "--lr 0.1" in cmd and "--opt out_dim=512" in cmd and "--data d.csv" in cmd


def test_pretrain_is_a_module_the_package_exports_pretrain_images_and_stays_lazy():
    """One fresh interpreter: the registry, presets, the CLI parser and the package import no torch; then
    both import orders (submodule first / package name first) give the module and the function. Between
    the orders every engine.ssl module is dropped from sys.modules, so each order starts from an unimported
    package (torch itself stays loaded: the second order needs no second interpreter)."""
    import subprocess
    import sys
    import types

    import engine.ssl
    import engine.ssl.pretrain  # an ordinary submodule

    assert isinstance(engine.ssl.pretrain, types.ModuleType) and engine.ssl.pretrain.pretrain_images is pretrain_images
    assert pretrain_images.__module__ == "engine.ssl.pretrain"
    code = ("import sys, types, engine.ssl.registry, engine.ssl.presets, engine.ssl.commands, engine.ssl\n"
            "from engine.ssl import METHODS\n"
            "assert 'torch' not in sys.modules and 'masked_contrastive' in METHODS\n")
    for first, then in (("import engine.ssl.pretrain", "from engine.ssl import pretrain, pretrain_images"),
                        ("from engine.ssl import pretrain_images", "from engine.ssl import pretrain")):
        code += ("for m in [m for m in sys.modules if m == 'engine.ssl' or m.startswith('engine.ssl.')]:\n"
                 "    del sys.modules[m]\n"
                 "import engine; engine.__dict__.pop('ssl', None); pretrain = pretrain_images = None\n"
                 f"{first}\n{then}\n"
                 "from engine.ssl import pretrain_images\n"
                 "assert isinstance(pretrain, types.ModuleType) and pretrain.pretrain_images is pretrain_images\n"
                 "assert callable(pretrain_images) and pretrain_images.__name__ == 'pretrain_images'\n")
    out = subprocess.run([sys.executable, "-c", code + "print('ok')"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_presets_merge_under_the_callers_settings():
    from engine.ssl.augment import AugmentConfig
    from engine.ssl.presets import PRESETS, build_config, preset_overrides

    assert build_config("moco_v2", "study") == PretrainConfig(method="moco_v2")  # study = the config's defaults
    q = build_config("moco_v2", "quick", method_opts={"T": 0.1}, epochs=3, lr=None)
    assert q.method_config == MoCoConfig(queue=256, m=0.99, T=0.1, head_bn=True, head_out_bn=True)
    assert q.lr == 0.0075 and q.epochs == 3
    assert q.aug == AugmentConfig(crop_scale=(0.8, 1.0), jitter=0.4, noise_std=0.05, blur_p=1.0, blur_sigma=(3.5, 7.0))
    assert build_config("moco_v2", "quick", aug_opts={"blur_p": 0.0}).aug.blur_p == 0.0  # the caller's aug wins
    d = build_config("dino", "quick")
    assert d.method_config.n_local_crops == 0 and d.aug.blur_p == 1.0 and d.lr == 0.02
    assert build_config("dino", "quick", method_opts={"n_local_crops": 2}).method_config.n_local_crops == 2
    b = build_config("barlow_twins", "quick", lr=0.05, aug_opts={"noise_std": 0.0})
    assert b.lr == 0.05 and b.aug.crop_scale == (0.3, 1.0) and b.aug.noise_std == 0.0
    assert set(PRESETS) == {"paper", "study", "quick", "long"} and all(preset_overrides(m, "quick") for m in METHODS)
    lg = build_config("moco_v2", "long")  # the shipped backbone's recipe
    assert lg.lr == 0.06 and lg.method_config.queue == 4096 and lg.aug.crop_scale == (0.3, 1.0) and lg.aug.blur_p == 0.5
    with pytest.raises(ValueError, match="no 'long' preset for method 'spark'"):
        build_config("spark", "long")
    with pytest.raises(ValueError, match="unknown preset"):
        build_config("spark", "fast")
    with pytest.raises(ValueError, match="unknown SSL method"):
        build_config("simclr", "quick")


@pytest.mark.parametrize("method", list(METHODS))
def test_quick_preset_trains_each_method(method, quick_run):
    from engine.ssl.presets import preset_overrides

    cfg, path, _, ck, _ = quick_run(method)  # the run above: the quick preset under small heads
    quick = preset_overrides(method, "quick")  # the preset's own values, but for the small heads over it
    assert cfg.lr == quick["lr"]
    for part, over in (("method_config", quick["method_config"]), ("aug", quick.get("aug", {}))):
        for k, v in over.items():
            if not (part == "method_config" and k in QUICK_SMALL[method]):
                assert getattr(getattr(cfg, part), k) == (tuple(v) if isinstance(v, list) else v), (part, k)
    _, meta = load_backbone(f"t-{method}", checkpoint_dir=ck)
    assert path.exists() and meta.info["steps"] == 3 and np.isfinite(meta.info["loss"]["last"])
    assert meta.info["config"]["lr"] == quick["lr"]


def test_a_state_written_before_new_settings_existed_still_resumes(images, tmp_path):
    cfg = _cfg("moco_v2", max_steps=2)
    pretrain_images(images, cfg, "old-run", "cpu", tmp_path / "run")
    state_path = tmp_path / "run" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    for key in ("head_bn", "head_out_bn"):  # an older version wrote no such fields
        del state["config"]["method_config"][key]
    for key in ("blur_p", "blur_sigma"):
        del state["config"]["aug"][key]
    torch.save(state, state_path)
    assert pretrain_images(images, cfg, "old-run", "cpu", tmp_path / "run", resume=True).exists()
    with pytest.raises(ValueError, match="different settings"):
        pretrain_images(images, _cfg("moco_v2", max_steps=2, lr=0.5), "old-run", "cpu", tmp_path / "run", resume=True)
