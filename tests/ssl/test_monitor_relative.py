"""Issue 23 item 4: the collapse monitor judges a run against its own early readings after a warm-up.

A healthy real (tiny) pretraining run raises no collapse warning in its first readings (its untrained
features are nearly parallel: the old absolute cosine limit flagged them); a truly collapsed model
(constant output) and a run that loses its spread are still flagged."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.ssl import pretrain_images
from engine.ssl.monitor import (COS_MAX, WARMUP_READINGS, CollapseMonitor, collapse_metrics, collapse_status,
                                reference_readings)
from engine.ssl.presets import build_config


@pytest.fixture(scope="module")
def phantom(phantom_set) -> np.ndarray:
    """32 phantom radiographs at 64 px (N, S, S) uint8."""
    from PIL import Image

    out = phantom_set(32, 64, 0)
    paths = sorted((out.parent / "images").glob("*.png"))
    return np.stack([np.asarray(Image.open(p).convert("L").resize((64, 64))) for p in paths]).astype(np.uint8)


def test_a_healthy_real_run_gets_no_collapse_warning_in_its_first_readings(phantom, tmp_path):
    # 4 steps: the step-0 baseline, the 3 warm-up readings and one judged against them (no warning either
    # for cfg seeds 1 and 2)
    cfg = build_config("moco_v2", "quick", epochs=3, batch_size=8, image_size=64, monitor_every_steps=1,
                       monitor_images=32, save_every_steps=100, max_steps=1 + WARMUP_READINGS)
    events = []
    pretrain_images(phantom, cfg, "healthy", "cpu", tmp_path / "run", on_event=events.append)
    readings = [e for e in events if e.kind == "metrics" and "collapse_std" in e.metrics]
    assert len(readings) == 2 + WARMUP_READINGS
    assert [e.message for e in events if e.kind == "warning"] == []
    # the old absolute rule would have called these early readings collapsed: the untrained features are parallel
    assert any(e.metrics["collapse_backbone_cos"] > COS_MAX for e in readings[1:])
    hist = [{"step": e.step, **{k[len("collapse_"):]: v for k, v in e.metrics.items()}} for e in readings]
    levels = [collapse_status(h, h["step"], history=hist)[0] for h in hist]
    assert levels[0] == "baseline" and levels[1:1 + WARMUP_READINGS] == ["warmup"] * WARMUP_READINGS
    assert set(levels[1 + WARMUP_READINGS:]) == {"ok"}


class _Constant(torch.nn.Module):
    """An SSL method whose backbone maps every image to the same vector (a truly collapsed model)."""

    def __init__(self, scale: float = 0.0) -> None:
        super().__init__()
        self.scale, self.w = scale, torch.nn.Parameter(torch.randn(16))
        self.backbone = lambda x: self.w.expand(len(x), -1) + self.scale * x.flatten(1)[:, :16]

    def normalize(self, x):
        return x

    def head_embedding(self, f):
        return None


def test_a_constant_output_model_is_flagged_in_and_after_the_warm_up(phantom):
    mon = CollapseMonitor(phantom[:16], every=1)
    model = _Constant()
    lines = []
    for step in range(6):
        m = mon.measure(model, torch.device("cpu"), 64, step)
        lines.append(mon.warnings(m, step))
    assert lines[0] == []  # the step-0 baseline is never a warning
    assert all(w and "looks collapsed" in w[0] for w in lines[1:])  # outright collapse: flagged in the warm-up too


def test_a_run_that_loses_its_spread_after_the_warm_up_is_flagged():
    g = torch.Generator().manual_seed(0)
    mean, noise = torch.randn(1, 32, generator=g) * 3, torch.randn(64, 32, generator=g)
    hist, levels = [], []
    for step, alpha in enumerate([1.0, 1.0, 1.1, 0.9, 1.0, 0.9, 0.2, 0.05]):  # spread around a mean shrinks late
        m = collapse_metrics(mean + alpha * noise + 0.05 * torch.randn(64, 32, generator=g))
        hist.append({"step": step, **m})
        level, line, problems = collapse_status(m, step, history=hist)
        levels.append(level)
    assert levels[:5] == ["baseline", "warmup", "warmup", "warmup", "ok"]
    assert levels[-1] == "warning" and "early" in line
    ref = reference_readings(hist)
    assert ref["std"] == pytest.approx(float(np.median([h["std"] for h in hist[:4]])))


def test_without_history_only_the_floors_judge_and_cosine_alone_never_flags():
    parallel = {"std": 0.09, "cos": 0.99, "erank": 17.6}
    assert collapse_status(parallel, 12)[0] == "ok"
    level, line, _ = collapse_status(parallel, 12)
    assert "nearly parallel" in line and "collapsed" not in line
    assert collapse_status({"std": 0.001, "cos": 1.0, "erank": 1.0}, 12)[0] == "warning"


def test_the_controller_target_defaults_to_the_runs_first_reading():
    from engine.ssl.monitor import CollapseControl, CollapseController, parse_collapse_control

    assert parse_collapse_control("erank:auto") == parse_collapse_control("erank") == CollapseControl()
    assert CollapseControl().target is None and CollapseControl().spec() == "erank:auto"
    c = CollapseController(CollapseControl(), "decorr_weight", w0=0.1, ref=0.1)
    assert c.update(0, {"erank": 17.6}) is None and c.target == 17.6  # the run's own starting rank
    assert c.update(1, {"erank": 18.0}) is None  # held: no adjustment was needed
    rec = c.update(2, {"erank": 12.0})
    assert rec["action"] == "raise" and rec["target"] == 17.6
    assert c.summary()["target"] == 17.6 and c.summary()["target_auto"] is True
    d = CollapseController(CollapseControl(), "decorr_weight", w0=0.1, ref=0.1)
    d.load_state_dict(c.state_dict())
    assert d.target == 17.6 and d.weight == c.weight


def test_a_real_run_with_auto_control_records_its_first_rank_as_target(phantom, tmp_path):
    import json

    cfg = build_config("moco_v2", "quick", epochs=3, batch_size=8, image_size=64, monitor_every_steps=1,
                       monitor_images=16, save_every_steps=100, max_steps=2, collapse_control="erank:auto")
    events = []
    pretrain_images(phantom, cfg, "auto-ctl", "cpu", tmp_path / "run", on_event=events.append,
                    checkpoint_dir=tmp_path / "ck")
    readings = [e.metrics for e in events if e.kind == "metrics" and "collapse_erank" in e.metrics]
    first = readings[0]["collapse_erank"]
    assert all(r["collapse_control_target"] == pytest.approx(first) for r in readings)
    info = json.loads((tmp_path / "ck" / "auto-ctl.json").read_text())
    assert info["collapse_control"]["target"] == pytest.approx(first) and info["collapse_control"]["target_auto"]
