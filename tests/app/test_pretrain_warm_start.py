"""The Pretrain page starts a run from random weights, ImageNet's or an existing backbone (a warm start,
issue 20: how GPU windows add up, reachable from the app too); a warm start of another network is refused."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.ssl import MoCoConfig, PretrainConfig, pretrain_images
from engine.store import Store

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(autouse=True)
def _no_autopretrain(monkeypatch):
    monkeypatch.setenv("SCARCE_CXR_NO_AUTOPRETRAIN", "1")


def _page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/pretrain.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_warm_start_from_the_pretrain_page_continues_a_backbone(tmp_path):
    from engine.data.phantom import generate

    images = np.random.default_rng(0).integers(0, 256, size=(16, 32, 32), dtype=np.uint8)
    cfg = PretrainConfig(method="moco_v2", epochs=1, batch_size=8, image_size=32, lr=0.01, max_steps=1,
                         monitor_every_steps=0, method_config=MoCoConfig(queue=16, proj_hidden=32, proj_dim=16))
    pretrain_images(images, cfg, "first-run", "cpu", tmp_path / "first")
    ws = Path(os.environ["SCARCE_CXR_WORKSPACE"])
    ws.mkdir(parents=True, exist_ok=True)
    with Store(ws) as store:
        store.import_manifest(generate(tmp_path / "ph", n=20, size=64, seed=3))

    at = _page()
    opts = at.selectbox(key="pt_start").options  # the shown labels
    assert opts[:2] == ["Random weights", "ImageNet weights (needs the offline file)"], opts
    assert any("first-run" in o and "warm start" in o for o in opts), opts
    at.selectbox(key="pt_start").set_value("first-run")
    at.selectbox(key="pt_arch").set_value("resnet50")
    (go,) = [b for b in at.form_submit_button if b.label == "Start pretraining"]
    at = go.click().run()
    assert any("'first-run' is a resnet18" in e.value for e in at.error), [e.value for e in at.error]

    at.selectbox(key="pt_arch").set_value("resnet18")
    at.selectbox(key="pt_method").set_value("moco_v2")
    at.radio(key="pt_preset").set_value("quick")
    at.number_input(key="pt_epochs").set_value(1)
    at.selectbox(key="pt_batch").set_value(8)
    at.selectbox(key="pt_size").set_value(64)
    (go,) = [b for b in at.form_submit_button if b.label == "Start pretraining"]
    at = go.click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    from ui.services import services

    runner = services().runner
    (job,) = runner.jobs()
    snap = runner.wait(job.id, timeout=300)
    assert snap.state == "done", snap.error
    from engine.models import load_backbone

    _, meta = load_backbone(snap.result["checkpoint"])
    assert meta.info["warm_start"]["from"] == "first-run" and meta.info["config"]["init"] == "first-run"
    assert meta.info["images_seen_total"] == 8 + meta.info["images_seen"]
