"""The input contract lives with the backbone: the registry's InitInfo carries size, channels, normalisation and
kind; `input_size_for` answers at what size an init runs; synthetic comes from the recorded training data, never
from the name; a sweep runs each init at its own size (or says why not)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engine import paths
from engine.models import (InitInfo, UnknownInitError, build_backbone, input_size_for, list_inits, save_backbone,
                           synthetic_data)
from engine.models.backbones import IMAGENET_MEAN, IMAGENET_STD


def _save(name: str, **info) -> InitInfo:
    """A resnet18 checkpoint with the json fields given (no training: only the record matters here)."""
    save_backbone(build_backbone("resnet18"), name, {"arch": "resnet18", "method": "moco_v2", **info})
    return next(i for i in list_inits() if i.name == name)


def test_builtins_carry_their_own_contracts():
    by = {i.name: i for i in list_inits()}
    r, im = by["random"], by["imagenet"]
    assert (r.kind, r.image_size, r.channels, r.mean, r.std) == ("random", None, 3, IMAGENET_MEAN, IMAGENET_STD)
    assert (im.kind, im.image_size, im.channels) == ("download-gated", 224, 3)  # torchvision's 224 px training crops
    assert input_size_for(r, "cpu") == 96 and input_size_for(r, "cuda") == 224  # no trained size: the device's
    assert input_size_for(im, "cpu") == input_size_for("imagenet", "cuda") == 224
    assert input_size_for("random-resnet50", "cpu") == 96


def test_a_checkpoint_runs_at_the_size_and_normalisation_it_recorded():
    ck = _save("ck-64", image_size=64, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], config={"method": "moco_v2"},
               data_fingerprint="abc")
    assert (ck.image_size, ck.mean, ck.std, ck.kind) == (64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "user")
    assert input_size_for(ck, "cpu") == input_size_for("ck-64", "cuda") == 64  # its own size on every device
    unknown_size = _save("ck-nosize", config={"method": "moco_v2"})
    assert unknown_size.image_size is None and input_size_for(unknown_size, "cpu") == 96
    with pytest.raises(UnknownInitError, match="unknown init 'nope'"):
        input_size_for("nope", "cpu")
    assert _save("ck-outside").kind == "imported"  # no training record: weights this tool did not train


def test_synthetic_comes_from_the_recorded_data_never_from_the_name():
    from ui.widgets import init_label, is_ssl

    real = _save("moco_v2-resnet18-demo", image_size=96, config={},
                 data={"source": "/data/cxr", "synthetic": False, "why": ""})
    fake = _save("chest-backbone", image_size=96, config={},
                 data={"source": "workspace demo", "synthetic": True, "why": "the demo workspace holds phantoms"})
    assert real.kind == "user" and "synthetic" not in init_label(real)  # a real backbone named ...-demo
    assert fake.kind == "synthetic" and init_label(fake).endswith("synthetic phantoms, not real X-rays")
    assert "synthetic phantom images" in fake.provenance and is_ssl(real) and is_ssl(fake)
    # a json from before the record: its run folder decides (the demo workspace's jobs trained on phantoms)
    demo_run = str(paths.REPO_ROOT / "workspace" / "demo" / "jobs" / "7" / "ssl")
    assert synthetic_data({"run_dir": demo_run})[0]
    assert not synthetic_data({"run_dir": "/elsewhere/runs/moco_v2-resnet18-demo"})[0]
    assert _save("old-demo-run", config={}, run_dir=demo_run).kind == "synthetic"
    assert _save("old-real-demo", config={}, run_dir="/srv/runs/x-demo").kind == "user"


def test_default_page_size_is_the_largest_own_size_of_the_inits():
    from ui.widgets import default_image_size

    ck = _save("ck-160", image_size=160, config={})
    assert default_image_size("cpu") == 96 and default_image_size("cuda") == 224
    assert default_image_size("cpu", [ck, "random"]) == 160 and default_image_size("cpu", ["imagenet", ck]) == 224


def _png_folder(root, n=12, size=40):
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def test_pretraining_records_whether_its_images_were_phantoms(tmp_path):
    from engine.data.phantom import generate
    from engine.ssl.presets import build_config
    from engine.ssl.pretrain import describe_data, pretrain_from_data

    manifest = generate(tmp_path / "ph", 8, size=48, seed=0, findings=("cardiomegaly",))
    real = _png_folder(tmp_path / "real")
    assert describe_data(manifest)["synthetic"] and describe_data(str(manifest.parent))["synthetic"]
    assert not describe_data(real)["synthetic"] and not describe_data([str(p) for p in real.glob("*.png")])["synthetic"]
    cfg = build_config("moco_v2", "quick", image_size=32, batch_size=4, epochs=1, max_steps=1, monitor_every_steps=0,
                       method_opts={"queue": 16, "proj_hidden": 16, "proj_dim": 8})
    pretrain_from_data(manifest, cfg, "phantom-trained", "cpu", run_dir=tmp_path / "r1", include_test=True)
    pretrain_from_data(real, cfg, "real-trained-demo", "cpu", run_dir=tmp_path / "r2")
    by = {i.name: i for i in list_inits()}
    assert by["phantom-trained"].kind == "synthetic" and by["phantom-trained"].info["data"]["synthetic"] is True
    assert by["real-trained-demo"].kind == "user" and by["phantom-trained"].image_size == 32


def test_a_pretrain_job_in_the_demo_workspace_records_synthetic(monkeypatch, tmp_path):
    from engine.tasks.params import PretrainParams
    from engine.tasks.pretrain import _data_record

    class Store:
        workspace = tmp_path / "ws"

    p = PretrainParams(method="moco_v2", out_name="x")
    monkeypatch.setenv("SCARCE_CXR_DEMO", "1")
    assert _data_record(p, Store())["synthetic"] is True
    monkeypatch.setenv("SCARCE_CXR_DEMO", "0")
    assert _data_record(p, Store()) == {"source": f"workspace {Store.workspace}", "synthetic": False, "why": ""}


@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory) -> str:
    from engine.data.phantom import generate

    base = tmp_path_factory.mktemp("contract-phantom")
    csv = generate(base / "data", 40, size=48, seed=1, findings=("cardiomegaly",), prevalence=0.4)
    df = pd.read_csv(csv)
    df["path"] = [str((csv.parent / p).resolve()) for p in df["path"]]
    df.to_csv(base / "manifest.csv", index=False)
    return str(base / "manifest.csv")


def test_a_sweep_runs_each_init_at_its_own_size_or_warns_about_an_explicit_one(small_manifest, tmp_path):
    from engine.fewshot.sweep import SweepConfig, run_sweep

    _save("ck-32", image_size=32, config={})
    cfg = SweepConfig(findings=("cardiomegaly",), inits=("random", "ck-32"), shots=(3,), trials=1, n_bootstrap=20)
    res = run_sweep(small_manifest, cfg, tmp_path / "own", "cpu")
    assert {k: v["image_size"] for k, v in res.input_sizes.items()} == {"random": 96, "ck-32": 32}
    assert json.loads((tmp_path / "own" / "input_sizes.json").read_text())["ck-32"] == {
        "image_size": 32, "trained": 32, "source": "init"}
    assert not [w for w in res.warnings if "trained at" in w] and set(res.trials["init"]) == {"random", "ck-32"}
    asked = run_sweep(small_manifest, SweepConfig(**{**cfg.__dict__, "image_size": 48}), tmp_path / "asked", "cpu")
    assert {v["image_size"] for v in asked.input_sizes.values()} == {48}  # an explicit size is honoured
    assert [w for w in asked.warnings if "trained at" in w] == [
        "init ck-32 was trained at 32 px and runs at 48 px here (the image size asked for): it is judged off the "
        "size it learned; leave the size unset to run each init at its own"]


def test_a_sweep_resumed_without_a_size_keeps_the_size_its_trials_ran_at(small_manifest, tmp_path):
    from engine.fewshot.sweep import SweepConfig, run_sweep

    cfg = SweepConfig(findings=("cardiomegaly",), inits=("random",), shots=(3,), trials=1, n_bootstrap=20,
                      image_size=40)
    run_sweep(small_manifest, cfg, tmp_path / "s", "cpu")  # an older sweep, run at one recorded size
    res = run_sweep(small_manifest, SweepConfig(**{**cfg.__dict__, "image_size": None, "trials": 2}), tmp_path / "s",
                    "cpu", resume=True)
    assert res.input_sizes["random"]["image_size"] == 40 and len(res.trials) == 2


def test_a_classifier_without_a_size_uses_its_inits_own():
    from engine.fewshot.classifier import build_classifier

    _save("ck-40", image_size=40, config={})
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (50, 50), dtype=np.uint8) for _ in range(8)]
    clf, _ = build_classifier(imgs, [1, 0] * 4, init="ck-40", cv_repeats=1, device="cpu")
    assert clf.image_size == 40
