"""engine.tasks (job adapters, demo start, model card) and ui.labels (pure labeling helpers)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine import tasks
from ui.labels import LabelCSVError, editor_rows, label_changes, labels_from_csv


class FakeRunner:
    def __init__(self, device: str = "cpu"):
        import torch

        self.device = torch.device(device)
        self.registered: dict[str, bool] = {}
        self.submitted: list[tuple[str, dict]] = []

    def register(self, kind, fn, uses_gpu, on_submit=None, params_type=None):
        self.registered[kind] = uses_gpu

    def submit(self, kind, params):
        self.submitted.append((kind, params.to_json()))  # what JobRunner.submit stores
        return len(self.submitted)


def test_register_all_keeps_short_jobs_off_the_pretraining_slot_on_cpu():
    r = FakeRunner("cpu")
    tasks.register_all(r)
    assert r.registered == {"import": False, "pretrain": True, "classify": False, "sweep": False, "gradcam": False,
                            "gradcam_image": False, "similarity": False, "study": True,  # a study pretrains
                            "score_images": False, "label_advice": False}


def test_demo_pretraining_starts_once_per_demo_workspace(monkeypatch, tmp_path):
    from engine.store import Store

    store = Store(tmp_path / "ws")
    r = FakeRunner()
    assert tasks.start_demo_pretraining(store, r) == []  # not the demo workspace: nothing
    monkeypatch.setenv(tasks.DEMO_ENV, "1")
    ids = tasks.start_demo_pretraining(store, r)
    assert len(ids) == 3 and [p["method"] for _, p in r.submitted] == ["moco_v2", "barlow_twins", "spark"]
    assert all(p["arch"] == "resnet18" and p["image_size"] <= 96 for _, p in r.submitted)
    assert tasks.start_demo_pretraining(store, r) == []  # remembered in the store


def test_demo_needs_no_pretraining_when_a_backbone_ships(monkeypatch, tmp_path):
    from engine.store import Store
    from tests.conftest import SHIPPED_DIR

    if not any(SHIPPED_DIR.glob("*.safetensors")):
        pytest.skip("no shipped backbone in the checkout")
    monkeypatch.setenv("SCARCE_CXR_SHIPPED", str(SHIPPED_DIR))
    monkeypatch.setenv(tasks.DEMO_ENV, "1")
    store, r = Store(tmp_path / "ws"), FakeRunner()
    assert tasks.start_demo_pretraining(store, r) == [] and not r.submitted  # useful at once
    monkeypatch.setenv(tasks.DEMO_PRETRAIN_ENV, "1")  # asked for explicitly: the phantom jobs still start
    assert len(tasks.start_demo_pretraining(store, r)) == 3
    assert len(r.submitted) == 3
    monkeypatch.setenv(tasks.AUTOPRETRAIN_OFF_ENV, "1")
    assert not tasks.autopretrain_enabled()


def test_pretrain_config_scales_monitoring_to_the_run_and_refuses_too_few_images():
    cfg = tasks.pretrain_config({"method": "spark", "epochs": 10, "batch_size": 64, "image_size": 64}, 40)
    assert cfg.batch_size == 40  # capped at the number of images
    assert cfg.monitor_every_steps == 1 and cfg.save_every_steps == 1  # 10 steps in all
    cfg = tasks.pretrain_config({"method": "moco_v2", "epochs": 100, "batch_size": 32, "image_size": 96}, 3200)
    assert cfg.monitor_every_steps == 400 and cfg.save_every_steps == 1000  # 10,000 steps
    with pytest.raises(ValueError, match="at least 2 images"):
        tasks.pretrain_config({"method": "moco_v2"}, 1)


def test_model_card_states_data_init_estimate_date_and_limits():
    meta = {"finding": "pleural_effusion", "init": "moco_v2-resnet18-demo", "arch": "resnet18", "mode": "probe",
            "image_size": 64, "threshold": 0.42, "counts": {"positive": 10, "negative": 13},
            "created": "2025-01-02T03:04:05",
            "estimate": {"auc": 0.81, "ci_low": 0.62, "ci_high": 0.95, "repeats": 10, "folds": 5,
                         "sentence": "Estimated AUC 0.81.", "warnings": ["Only 10 images with it."]}}
    card = tasks.model_card(meta, {"method": "moco_v2", "n_images": 120, "image_size": 64, "steps": 36}, 23)
    for needle in ("pleural effusion", "10 images with pleural effusion, 13 without (23 in total)",
                   "`moco_v2-resnet18-demo`", "0.810 (95% interval 0.620 to 0.950)", "2025-01-02 03:04:05",
                   "Not a medical device", "Only 10 images with it."):
        assert needle in card, needle


def _images() -> pd.DataFrame:
    return pd.DataFrame({"id": [1, 2, 3, 4], "name": ["a.png", "dir/b.png", "c.dcm", "d.png"],
                         "nodule": [1.0, 0.0, np.nan, np.nan]})


def test_label_csv_matches_file_names_and_reports_unknown_rows_and_values():
    csv = b"path,nodule,mass\n/x/y/a.png,0,1\nb.png,1,\nzzz.png,1,0\n"
    labels, unmatched = labels_from_csv(csv, _images())
    assert labels == {"nodule": {1: 0, 2: 1}, "mass": {1: 1, 2: None}}
    assert unmatched == ["zzz.png"]
    with pytest.raises(LabelCSVError, match="unknown label value"):
        labels_from_csv(b"name,nodule\na.png,maybe\n", _images())
    with pytest.raises(LabelCSVError, match="no finding columns"):
        labels_from_csv(b"name,split\na.png,train\n", _images())


def test_editor_changes_only_touch_edited_rows_and_reject_double_ticks():
    before = editor_rows(_images(), "nodule")
    assert before[["Present", "Absent"]].values.tolist() == [[True, False], [False, True], [False, False], [False, False]]
    after = before.copy()
    after.loc[2, "Present"] = True  # c.dcm: present
    after.loc[0, "Present"] = False  # a.png: present -> unlabeled
    after.loc[3, ["Present", "Absent"]] = True  # d.png: both ticked
    changes, both = label_changes(before, after)
    assert changes == {3: 1, 1: None} and both == ["d.png"]
