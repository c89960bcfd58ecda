"""Finetuning: batched (vmap) trials equal sequential ones; modes train what they say; augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.fewshot.finetune import (
    FinetuneConfig, apply_augment, double_finetune, draw_augment, finetune, finetune_many, predict_logits,
)
from engine.models import load_backbone
from engine.models.registry import BackboneMeta


S = 32


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("random", "cpu")


def _trial(seed: int, n: int = 4):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, S, S), dtype=np.uint8), np.r_[np.ones(n // 2), np.zeros(n - n // 2)]


def _changed(a: torch.nn.Module, b: torch.nn.Module) -> set[str]:
    sa, sb = a.state_dict(), b.state_dict()
    return {k.split(".")[0] for k in sa if not torch.equal(sa[k], sb[k])}


def _tiny() -> tuple[torch.nn.Module, BackboneMeta]:
    """A small conv net with BatchNorm (buffers) standing in for a backbone: same code path, 100x cheaper."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    )
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval(), BackboneMeta(name="tiny", arch="resnet18", feat_dim=16, method="test")


def test_batched_trials_equal_sequential_trials():
    tiny = _tiny()
    model, meta = tiny
    cfg = FinetuneConfig(mode="full", steps=4, batch_size=3)
    trials = [_trial(s) for s in (1, 2, 3)]
    xs, ys = [t[0] for t in trials], [t[1] for t in trials]
    batched = finetune_many(tiny, xs, ys, cfg, "cpu", seeds=[11, 12, 13], batched=True)
    sequential = finetune_many(tiny, xs, ys, cfg, "cpu", seeds=[11, 12, 13], batched=False)
    test = _trial(4, 6)[0]
    logits = []
    for (bb_a, head_a), (bb_b, head_b) in zip(batched, sequential):
        la = predict_logits(bb_a, head_a, test, "cpu", meta.mean, meta.std)
        lb = predict_logits(bb_b, head_b, test, "cpu", meta.mean, meta.std)
        np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-5)
        for k, v in bb_a.state_dict().items():
            torch.testing.assert_close(v, bb_b.state_dict()[k], rtol=1e-4, atol=1e-5)
        assert _changed(model, bb_a) == {"0", "1", "3", "4"}  # every conv and BN affine weight trained
        torch.testing.assert_close(bb_a[1].running_mean, model[1].running_mean)  # BN statistics kept
        logits.append(la)
    assert not np.allclose(logits[0], logits[1])  # different trials, different models
    again = finetune(tiny, xs[0], ys[0], cfg, "cpu", seed=11)
    np.testing.assert_allclose(predict_logits(*again, test, "cpu", meta.mean, meta.std), logits[0], rtol=1e-4,
                               atol=1e-5)
    assert model.training is False and all(p.requires_grad for p in model.parameters())  # input untouched


def test_modes_train_what_they_say(backbone):
    model, _ = backbone
    x, y = _trial(4)
    bb, head = finetune(backbone, x, y, FinetuneConfig(mode="last_layer", steps=2, batch_size=4), "cpu", seed=0)
    assert _changed(model, bb) == set() and head.weight.abs().sum() > 0
    bb, _ = finetune(backbone, x, y, FinetuneConfig(mode="last_stage", steps=2, batch_size=4), "cpu", seed=0)
    assert _changed(model, bb) == {"layer4"}
    with pytest.raises(ValueError, match="mode"):
        FinetuneConfig(mode="everything")
    with pytest.raises(ValueError, match="both classes"):
        finetune(backbone, x, np.ones(4), FinetuneConfig(steps=1), "cpu", seed=0)


def test_augmentation_is_light_seeded_and_never_flips():
    cfg = FinetuneConfig()
    p1 = draw_augment(torch.Generator().manual_seed(0), 64, cfg)
    p2 = draw_augment(torch.Generator().manual_seed(0), 64, cfg)
    assert torch.equal(p1, p2)
    w, h = p1[:, 0], p1[:, 1]
    assert (w > 0).all() and (h > 0).all() and (w * h >= cfg.crop_scale[0] * 0.99).all()  # positive scales: no flips
    x = torch.zeros(64, 1, S, S)
    x[..., : S // 2] = 0.9  # bright left half
    out = apply_augment(x, p1)
    assert (out[..., : S // 4].mean(dim=(1, 2, 3)) > out[..., -S // 4 :].mean(dim=(1, 2, 3)) + 0.5).all()
    ident = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]]).repeat(2, 1)
    img = torch.rand(2, 1, S, S)
    torch.testing.assert_close(apply_augment(img.clone(), ident), img, atol=1e-5, rtol=0)


def test_double_finetune_runs_two_stages(backbone):
    model, meta = backbone
    xi, yi = _trial(5, 6)
    x, y = _trial(6)
    cfg = FinetuneConfig(mode="last_layer", steps=1, batch_size=4, intermediate_steps=2)
    bb, head = double_finetune(backbone, xi, yi, x, y, cfg, "cpu", seed=0)
    assert "conv1" in _changed(model, bb)  # stage one trained the whole backbone (the head is 0 at step one)
    assert predict_logits(bb, head, x, "cpu", meta.mean, meta.std).shape == (4,)
