"""A killed pretraining loses at most `save_every_seconds` of training, also before its first periodic
save (issue 22, Build 6): the state is saved on wall clock too, and a resume continues from it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.ssl import MoCoConfig, PretrainConfig, pretrain_images


class Killed(Exception):
    """Stands in for kill -9: leaves the loop without any save."""


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(16, 32, 32), dtype=np.uint8)


class FakeClock:
    """time.monotonic for engine.ssl.loop: each training step takes 100 s."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _cfg(**kw) -> PretrainConfig:
    base = dict(method="moco_v2", epochs=4, batch_size=8, image_size=32, lr=0.01, monitor_every_steps=0,
                save_every_steps=1000,  # a long run's 10%: never reached before the kill
                method_config=MoCoConfig(queue=16, proj_hidden=32, proj_dim=16))
    return PretrainConfig(**{**base, **kw})


def _run_until_killed(images, cfg, run_dir, clock, kill_at: int):
    def on_event(ev):
        if ev.kind == "progress":
            clock.now += 100.0  # the step took 100 s of wall clock
            if ev.step == kill_at:
                raise Killed

    with pytest.raises(Killed):
        pretrain_images(images, cfg, "k", "cpu", run_dir, on_event=on_event)


@pytest.mark.parametrize("every, saved", [(300.0, 6), (0.0, None)])
def test_a_kill_before_the_first_periodic_save_keeps_the_last_minutes(images, tmp_path, monkeypatch, every, saved):
    import engine.ssl.loop as loop

    clock = FakeClock()
    monkeypatch.setattr(loop.time, "monotonic", clock)
    cfg = _cfg(save_every_seconds=every)
    _run_until_killed(images, cfg, tmp_path / "run", clock, kill_at=7)
    state = tmp_path / "run" / "state.pt"
    if saved is None:  # the clock off: the old behaviour, the kill loses every step
        assert not state.exists()
        return
    # saves after steps 3 and 6 (300 s each), the kill at step 7 loses one step (100 s)
    assert torch.load(state, weights_only=True)["step"] == saved
    steps = []
    pretrain_images(images, cfg, "k", "cpu", tmp_path / "run", resume=True,
                    on_event=lambda e: e.kind == "progress" and steps.append(e.step))
    assert steps[0] == saved + 1 and steps[-1] == 8  # resumed from the saved step, not from 0


def test_save_every_seconds_is_checked_and_free_on_resume():
    from engine.ssl.config import RESUME_FREE

    with pytest.raises(ValueError, match="save_every_seconds must be >= 0"):
        _cfg(save_every_seconds=-1)
    assert "save_every_seconds" in RESUME_FREE and PretrainConfig.save_every_seconds == 300.0
