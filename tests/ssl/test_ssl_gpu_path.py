"""The GPU-speed options of the pretraining loop, exercised on the CPU (issue 20 item 1) and warm starts
across GPU windows (item 3): images held on the device, losses read every N steps, warm start from a
checkpoint with its lineage recorded. They must not change what a run computes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.models import UnknownInitError, load_backbone
from engine.ssl import MoCoConfig, NonFiniteLossError, PretrainConfig, pretrain_images
from engine.ssl.moco_v2 import MoCoV2


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(24, 48, 48), dtype=np.uint8)


def _cfg(**kw) -> PretrainConfig:
    base = dict(method="moco_v2", epochs=2, batch_size=8, image_size=32, lr=0.01, monitor_every_steps=2,
                monitor_images=8, save_every_steps=4, method_config=MoCoConfig(queue=40, proj_hidden=64, proj_dim=32))
    return PretrainConfig(**{**base, **kw})


def _run(images, cfg, name, tmp_path, **kw):
    events = []
    path = pretrain_images(images, cfg, name, "cpu", tmp_path / name, on_event=events.append, data_fingerprint="fp",
                           **kw)
    return load_file(str(path)), events, json.loads(path.with_suffix(".json").read_text())


def test_device_held_images_and_batched_syncs_compute_the_same_run(images, tmp_path):
    images = images[:16]  # 2 epochs x 2 steps: losses read after steps 3 and 4 (a last, partial block)
    ref_w, ref_ev, ref_info = _run(images, _cfg(), "ref", tmp_path)
    fast_w, fast_ev, fast_info = _run(images, _cfg(data_on_device=True, sync_every_steps=3), "fast", tmp_path)
    progress = lambda ev: [(e.step, e.metrics["loss"]) for e in ev if e.kind == "progress"]  # noqa: E731
    assert progress(fast_ev) == progress(ref_ev)  # every step reported, in order, with the same loss
    assert [e.step for e in fast_ev if e.kind == "metrics"] == [e.step for e in ref_ev if e.kind == "metrics"]
    assert fast_w.keys() == ref_w.keys() and all(torch.equal(fast_w[k], ref_w[k]) for k in ref_w)
    assert fast_info["loss"]["curve"] == ref_info["loss"]["curve"]
    # both settings leave the resume key alone: a run may switch them when it resumes
    assert {"data_on_device", "sync_every_steps"} <= set(fast_info["config"])


def test_a_late_caught_nan_stops_the_run_and_keeps_the_last_checked_state(images, tmp_path, monkeypatch):
    real, calls = MoCoV2.forward, {"n": 0}

    def poisoned(self, *views):
        loss, metrics = real(self, *views)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 6 else loss), metrics

    monkeypatch.setattr(MoCoV2, "forward", poisoned)
    cfg = _cfg(sync_every_steps=3, save_every_steps=4, monitor_every_steps=0)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 6/6 .*stopped at step 6 \(losses are read "
                                                 r"every 3 steps.*last good state \(step 4\)"):
        pretrain_images(images, cfg, "nan", "cpu", tmp_path / "run")
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert [r["step"] for r in state["history"]] == [1, 2, 3, 4]


def test_warm_start_continues_a_checkpoint_and_records_its_lineage(images, tmp_path):
    ck = tmp_path / "ck"
    _w, _ev, first = _run(images, _cfg(max_steps=2), "first", tmp_path, checkpoint_dir=ck)
    start, _meta = load_backbone("first", checkpoint_dir=ck)
    seen = {}

    def peek(self, *views):  # the weights the warm run's first step sees
        seen.setdefault("conv1", self.backbone.conv1.weight.detach().clone())
        return real(self, *views)

    real = MoCoV2.forward
    MoCoV2.forward = peek
    try:
        _w2, _ev2, second = _run(images, _cfg(init="first", max_steps=1), "second", tmp_path, checkpoint_dir=ck)
    finally:
        MoCoV2.forward = real
    assert torch.equal(seen["conv1"], start.conv1.weight)  # began from the checkpoint, not a random network
    w = second["warm_start"]
    assert w["from"] == "first" and w["method"] == "moco_v2" and w["windows_before"] == 1
    assert w["epochs_before"] == pytest.approx(first["epochs"]) and w["images_seen_before"] == 2 * 8
    assert second["epochs_total"] == pytest.approx(first["epochs"] + second["epochs"])
    assert second["images_seen_total"] == (2 + 1) * 8
    # a third window sums over both earlier ones
    _w3, _ev3, third = _run(images, _cfg(init="second", max_steps=1), "third", tmp_path, checkpoint_dir=ck)
    assert third["warm_start"]["windows_before"] == 2 and third["images_seen_total"] == (2 + 1 + 1) * 8


def test_warm_start_refusals(images, tmp_path):
    with pytest.raises(UnknownInitError, match="unknown init 'nothing-here'"):
        pretrain_images(images, _cfg(init="nothing-here"), "x", "cpu", tmp_path / "x")
    _run(images, _cfg(max_steps=1), "r18", tmp_path, checkpoint_dir=tmp_path / "ck")
    with pytest.raises(ValueError, match="cannot warm-start a resnet50 run from 'r18': it is a resnet18"):
        pretrain_images(images, _cfg(init="r18", arch="resnet50"), "y", "cpu", tmp_path / "y",
                        checkpoint_dir=tmp_path / "ck")
    with pytest.raises(ValueError, match="init must be 'random', 'imagenet' or a checkpoint name"):
        _cfg(init="../../etc/passwd")
    with pytest.raises(ValueError, match="sync_every_steps must be >= 1"):
        _cfg(sync_every_steps=0)
