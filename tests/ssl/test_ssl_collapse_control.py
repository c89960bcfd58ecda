"""Adaptive collapse control (issue 16 item 1): the rule, real collapsing runs, resume, refusals, CLI."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from engine.events import Cancelled
from engine.ssl import BarlowConfig, MoCoConfig, PretrainConfig, pretrain_images
from engine.ssl.monitor import CollapseControl, CollapseController, parse_collapse_control


@pytest.fixture(scope="module")
def phantom(phantom_set) -> np.ndarray:
    """24 phantom radiographs at 32 px as the (N, S, S) uint8 array the loop trains on."""
    from PIL import Image

    out = phantom_set(24, 32, 0)
    paths = sorted((out.parent / "images").glob("*.png"))
    return np.stack([np.asarray(Image.open(p).convert("L").resize((32, 32))) for p in paths]).astype(np.uint8)


def _moco(control, **kw) -> PretrainConfig:
    # collapse-prone: plain head, no variance term, slow key encoder
    mc = MoCoConfig(queue=40, proj_hidden=64, proj_dim=32, var_weight=0.0, m=0.999)
    base = dict(method="moco_v2", epochs=2, batch_size=8, image_size=32, lr=0.01, monitor_every_steps=1,
                monitor_images=16, save_every_steps=100, method_config=mc, collapse_control=control)
    return PretrainConfig(**{**base, **kw})


def test_the_rule_raises_below_target_lowers_when_healthy_holds_between_and_stays_in_bounds():
    c = CollapseController(CollapseControl(target=8.0), "var_weight", w0=1.0, ref=1.0)
    assert (c.lo, c.hi) == (0.125, 16.0)
    assert c.update(0, {"erank": 1.0}) is None and c.weight == 1.0  # the step-0 baseline is not acted on
    weights = []
    for step in range(1, 8):  # collapsed: x2 per reading up to the bound, then no more records
        c.update(step, {"erank": 1.5})
        weights.append(c.weight)
    assert weights == [2, 4, 8, 16, 16, 16, 16] and len(c.history) == 4
    assert c.update(8, {"erank": 9.0}) is None  # 8 <= 9 < 1.25 x 8: hold
    rec = c.update(9, {"erank": 10.0})  # healthy: x0.5
    assert rec == {"step": 9, "knob": "var_weight", "metric": "erank", "value": 10.0, "target": 8.0,
                   "action": "lower", "old": 16.0, "new": 8.0}
    for step in range(10, 20):
        c.update(step, {"erank": 30.0})
    assert c.weight == 0.125  # down to the lower bound, never below
    assert "lower var_weight" in c.message(rec) and "bounds 0.125-16" in c.message(rec)
    # a weight that starts at 0: bounds from the method's reference, first raise lands on the lower bound
    z = CollapseController(CollapseControl(target=4.0), "var_weight", w0=0.0, ref=1.0)
    assert z.update(1, {"erank": 9.0}) is None and z.weight == 0.0  # healthy: stays off
    assert z.update(2, {"erank": 2.0})["new"] == 0.125 and z.update(3, {"erank": 2.0})["new"] == 0.25
    # the centred rank can be the controlled metric
    cc = CollapseController(parse_collapse_control("centred_erank:5"), "lambd", w0=0.005, ref=0.005)
    assert cc.update(1, {"erank": 100.0, "centred_erank": 2.0})["new"] == 0.01


def test_spec_parsing_and_clear_errors():
    assert parse_collapse_control("erank:12") == CollapseControl(metric="erank", target=12.0)
    assert parse_collapse_control({"metric": "erank", "target": 3}) == CollapseControl(target=3)
    assert parse_collapse_control("off") is None and parse_collapse_control(None) is None
    for bad, msg in (("rank", "METRIC"), ("erank:abc", "METRIC:TARGET"), ("std:3", "not one of"),
                     ("erank:-1", "positive")):
        with pytest.raises(ValueError, match=msg):
            parse_collapse_control(bad)
    with pytest.raises(ValueError, match="up > 1"):
        CollapseControl(up=0.5)
    with pytest.raises(ValueError, match="spark has no regularization term to adjust"):
        PretrainConfig(method="spark", image_size=64, collapse_control="erank:8")
    with pytest.raises(ValueError, match="dino has no variance-regularization weight"):
        PretrainConfig(method="dino", collapse_control="erank:8")
    with pytest.raises(ValueError, match="monitor is off"):
        PretrainConfig(method="moco_v2", monitor_every_steps=0, collapse_control="erank:8")
    cfg = PretrainConfig(method="barlow_twins", collapse_control="erank:8")
    again = PretrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.collapse_control == CollapseControl(target=8.0)


@pytest.fixture(scope="module")
def collapsing_run(phantom, tmp_path_factory):
    """(path, events, run_dir): one whole controlled moco run (2 epochs x 3 steps), shared by the two tests below.
    Its target is far above what this tiny run reaches: every reading after step 0 is "collapsed"."""
    base = tmp_path_factory.mktemp("collapsing-run")
    events: list = []
    path = pretrain_images(phantom, _moco("erank:64"), "ctl", "cpu", base / "run", on_event=events.append,
                           checkpoint_dir=base / "ck")
    return path, events, base / "run"


def test_a_collapsing_moco_run_triggers_adjustments_within_bounds_recorded_everywhere(collapsing_run):
    path, events, run_dir = collapsing_run
    logs = [e for e in events if e.kind == "log" and e.message.startswith("collapse control")]
    metrics = [e for e in events if e.kind == "metrics"]
    assert len(metrics) == 7 and len(logs) == 6  # readings at steps 0..6; one raise per reading after step 0
    weights = [e.metrics["collapse_control_weight"] for e in metrics]
    assert weights == [0.0, 0.0125, 0.025, 0.05, 0.1, 0.2, 0.4]  # from 0 to the lower bound, then x2
    assert all(0.0125 <= w <= 1.6 for w in weights[1:])
    assert all(e.metrics["collapse_control_target"] == 64 for e in metrics)
    info = json.loads(path.with_suffix(".json").read_text())
    ctl = info["collapse_control"]
    assert ctl["knob"] == "decorr_weight" and ctl["bounds"] == [0.0125, 1.6] and ctl["final_weight"] == 0.4
    assert [a["new"] for a in ctl["adjustments"]] == weights[1:] and all(a["action"] == "raise" for a in ctl["adjustments"])
    assert [h["control_weight"] for h in info["collapse"]["history"]] == weights
    assert info["config"]["collapse_control"]["target"] == 64
    hist = json.loads((run_dir / "history.json").read_text())
    assert hist["collapse_control"]["adjustments"] == ctl["adjustments"]
    state = torch.load(run_dir / "state.pt", weights_only=True)
    assert state["collapse_control"] == {"weight": 0.4, "history": ctl["adjustments"], "target": 64.0}
    # a fresh method starts from the configured weight; the controller's weight is set by the loop
    from engine.ssl.pretrain import build_method

    assert build_method(_moco("erank:64")).decorr_weight == 0.0


def test_barlow_lambda_is_lowered_when_healthy(phantom, tmp_path):
    cfg = PretrainConfig(method="barlow_twins", epochs=1, batch_size=8, image_size=32, lr=0.01, max_steps=3,
                         monitor_every_steps=1, monitor_images=16, method_config=BarlowConfig(proj_dim=64),
                         collapse_control="erank:1.01")  # any spread counts as healthy
    events = []
    pretrain_images(phantom, cfg, "ctl-bt", "cpu", tmp_path / "bt", on_event=events.append)
    weights = [e.metrics["collapse_control_weight"] for e in events if e.kind == "metrics"]
    assert weights == [0.005, 0.0025, 0.00125, 0.000625]  # x0.5 per reading down to 0.005/8


def test_a_stopped_controlled_run_resumes_exactly(phantom, collapsing_run, tmp_path):
    cfg = _moco("erank:64")  # 2 epochs x 3 steps, an adjustment at every step: the collapsing run's settings
    _, events_a, run_a = collapsing_run  # the whole run, uninterrupted
    losses_a = [e.metrics["loss"] for e in events_a if e.kind == "progress"]
    stop, losses_b = threading.Event(), []

    def on_b(e):
        if e.kind == "progress":
            losses_b.append(e.metrics["loss"])
            if e.step == 3:
                stop.set()

    with pytest.raises(Cancelled):
        pretrain_images(phantom, cfg, "b", "cpu", tmp_path / "b", on_event=on_b, stop=stop)
    mid = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert mid["step"] == 3 and mid["collapse_control"]["weight"] == 0.05
    pretrain_images(phantom, cfg, "b", "cpu", tmp_path / "b", resume=True,
             on_event=lambda e: e.kind == "progress" and losses_b.append(e.metrics["loss"]))
    assert len(losses_b) == 6
    np.testing.assert_allclose(losses_b, losses_a, rtol=1e-5)
    sa = torch.load(run_a / "state.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert sa["collapse_control"] == sb["collapse_control"] and sb["collapse_control"]["weight"] == 0.4
    # resuming without the controller (or with another target) is another run: refused
    with pytest.raises(ValueError, match="collapse_control"):
        pretrain_images(phantom, _moco(None), "b", "cpu", tmp_path / "b", resume=True)


def test_cli_and_job_params_take_the_option(tmp_path):
    from engine.cli import build_parser
    from engine.ssl.commands import _resume_command
    from engine.tasks import pretrain_config

    args = build_parser().parse_args(["pretrain", "--data", "d.csv", "--out", "x", "--collapse-control", "erank:6"])
    assert args.collapse_control == "erank:6" and "--collapse-control erank:6" in _resume_command(args)
    cfg = pretrain_config({"method": "moco_v2", "preset": "quick", "collapse_control": "erank:6", "epochs": 1}, 64)
    assert cfg.collapse_control == CollapseControl(target=6.0)
    assert pretrain_config({"method": "spark", "preset": "quick", "epochs": 1}, 64).collapse_control is None


def test_decorrelation_loss_is_zero_for_uncorrelated_features_and_d_minus_1_for_one_direction():
    from engine.ssl.moco_v2 import decorrelation_loss

    g = torch.Generator().manual_seed(0)
    white = torch.randn(4096, 8, generator=g)
    assert float(decorrelation_loss(white)) < 0.02  # sum of 56 squared correlations ~ 1/N each, / 8
    one = torch.randn(256, 1, generator=g) * torch.linspace(0.5, 2.0, 8)  # (256, 8): every dim the same direction
    assert float(decorrelation_loss(one)) == pytest.approx(7.0, rel=1e-3)  # d - 1
    assert float(decorrelation_loss(100 * one)) == pytest.approx(7.0, rel=1e-3)  # scale-invariant
    # by hand on 3 rows x 2 dims: corr of (1,2,3) and (1,3,2) is 0.5 -> 2 * 0.25 / 2
    z = torch.tensor([[1.0, 1.0], [2.0, 3.0], [3.0, 2.0]])
    assert float(decorrelation_loss(z, eps=0.0)) == pytest.approx(0.25, rel=1e-6)


def test_decorrelation_term_is_added_with_its_weight_and_off_costs_nothing(phantom):
    from engine.ssl.pretrain import build_method

    m = build_method(_moco(None, method_config=MoCoConfig(queue=40, proj_hidden=64, proj_dim=32, decorr_weight=0.5)))
    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(phantom[:8]).float().div(255)[:, None]
    views = m.views(x, g)
    loss, metrics = m(*views)
    assert "decorr" in metrics
    torch.testing.assert_close(loss.detach(), metrics["nce"] + m.var_weight * metrics["var"] + 0.5 * metrics["decorr"])
    m.decorr_weight = 0.0
    loss0, metrics0 = m(*views)
    assert "decorr" not in metrics0
    torch.testing.assert_close(loss0.detach(), metrics0["nce"] + m.var_weight * metrics0["var"])
