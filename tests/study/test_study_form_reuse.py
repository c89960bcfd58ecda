"""The Benchmark page's study form evaluates existing backbones (the app's `--reuse`), e.g. the shipped one."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


@pytest.fixture(autouse=True)
def _no_autopretrain(monkeypatch):
    monkeypatch.setenv("SCARCE_CXR_NO_AUTOPRETRAIN", "1")


def test_study_form_reuses_an_existing_backbone_instead_of_pretraining(tmp_path):
    import torch

    from engine.data.phantom import generate
    from engine.models import build_backbone, save_backbone
    from ui.services import services

    torch.manual_seed(2)
    save_backbone(build_backbone("resnet18"), "mine-moco", {"method": "moco_v2", "arch": "resnet18"})
    save_backbone(build_backbone("resnet18"), "mine-moco-2", {"method": "moco_v2", "arch": "resnet18"})
    services().store.import_manifest(generate(tmp_path / "ph", n=24, size=64, seed=3, findings=("nodule",),
                                              prevalence=0.5))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("app_pages/benchmark.py").run()
    assert set(at.multiselect(key="st_reuse").options) >= {"mine-moco (MoCo v2)", "mine-moco-2 (MoCo v2)"}
    at.multiselect(key="st_methods").set_value([])
    at.multiselect(key="st_reuse").set_value(["mine-moco", "mine-moco-2"])
    (button,) = [b for b in at.form_submit_button if b.label == "Run the study"]
    button.click().run()
    runner = services().runner
    assert "one existing backbone per method (moco_v2 twice)" in "\n".join(e.value for e in at.error)
    assert not runner.jobs()
    at.multiselect(key="st_reuse").set_value(["mine-moco"])
    (button,) = [b for b in at.form_submit_button if b.label == "Run the study"]
    button.click().run()
    (job,) = runner.jobs()
    try:
        assert job.kind == "study" and job.params["reuse"] == ["moco_v2=mine-moco"] and job.params["methods"] == []
        assert "mine-moco" in job.params["title"]
    finally:
        runner.cancel(job.id)
        runner.wait(job.id, timeout=120)
