"""Batched X-ray augmentations and the collapse metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.ssl.augment import (
    AugmentConfig, brightness_contrast, crop_params, crop_resize, gaussian_noise, multi_crop, xray_view,
)
from engine.ssl.monitor import CollapseMonitor, collapse_metrics, effective_rank, mean_pairwise_cosine



def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_boxes_lie_inside_the_image_with_area_in_scale():
    boxes = crop_params(4000, (0.08, 1.0), (3 / 4, 4 / 3), _g(0))
    cx, cy, w, h = boxes.unbind(1)
    assert ((cx - w / 2) >= -1e-6).all() and ((cx + w / 2) <= 1 + 1e-6).all()
    assert ((cy - h / 2) >= -1e-6).all() and ((cy + h / 2) <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6
    # same area distribution as torchvision's RandomResizedCrop (large areas with extreme aspect are rejected)
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    img = torch.zeros(1, 200, 200)
    tv = [np.prod(RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])[2:]) / 200**2 for _ in range(4000)]
    assert area.mean().item() == pytest.approx(float(np.mean(tv)), abs=0.02)
    r = w / h
    assert r.min() >= 3 / 4 - 1e-5 and r.max() <= 4 / 3 + 1e-5


def test_crop_resize_keeps_orientation_and_identity():
    x = torch.zeros(2, 1, 16, 16)
    x[..., 8:] = 1.0  # right half bright (patient's left)
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 2)
    torch.testing.assert_close(crop_resize(x, full, 16), x)  # the whole-image box is the identity
    left = crop_resize(x, torch.tensor([[0.25, 0.5, 0.5, 1.0]] * 2), 8)
    right = crop_resize(x, torch.tensor([[0.75, 0.5, 0.5, 1.0]] * 2), 8)
    assert left.max() < 1e-6 and right.min() > 1 - 1e-6  # no flip anywhere
    top = torch.zeros(1, 1, 16, 16)
    top[..., :8, :] = 1.0
    assert crop_resize(top, torch.tensor([[0.5, 0.25, 1.0, 0.5]]), 8).min() > 1 - 1e-6


def test_views_are_batched_seeded_per_sample_and_in_range():
    x = torch.rand(6, 1, 40, 40, generator=_g(0))
    cfg = AugmentConfig()
    a, b = xray_view(x, 32, cfg, _g(1)), xray_view(x, 32, cfg, _g(1))
    c = xray_view(x, 32, cfg, _g(2))
    assert a.shape == (6, 1, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a[0], a[1])  # different samples get different parameters
    crops = multi_crop(x, _g(3), cfg, 32, 16, 3, (0.4, 1.0), (0.05, 0.4))
    assert [tuple(t.shape) for t in crops] == [(6, 1, 32, 32)] * 2 + [(6, 1, 16, 16)] * 3


def test_jitter_and_noise_strengths():
    x = torch.full((200, 1, 8, 8), 0.5)
    torch.testing.assert_close(brightness_contrast(x, 0.8, 0.0, _g(0)), x)  # p = 0: unchanged
    y = brightness_contrast(x, 0.8, 1.0, _g(0))
    factors = y[:, 0, 0, 0] / 0.5  # flat image: only brightness acts
    assert factors.min() >= 0.2 - 1e-5 and factors.max() <= 1.8 + 1e-5 and factors.std() > 0.3
    n = gaussian_noise(x, 0.1, _g(0)) - x
    assert n.std().item() == pytest.approx(0.1, rel=0.05)


def test_collapse_metrics_tell_collapsed_from_healthy():
    g = _g(0)
    healthy = torch.randn(256, 64, generator=g)
    same = torch.randn(1, 64, generator=g).repeat(256, 1)  # every image maps to one point
    rank1 = torch.rand(256, 1, generator=g) * torch.randn(1, 64, generator=g)  # a line through 0
    h, s, r = collapse_metrics(healthy), collapse_metrics(same), collapse_metrics(rank1)
    assert h["std"] > 0.9 and abs(h["cos"]) < 0.05 and h["erank"] > 40
    for bad in (s, r):
        assert bad["std"] < 1e-3 and bad["cos"] > 0.999 and bad["erank"] == pytest.approx(1.0, abs=1e-3)
    # the O(N D) pairwise cosine equals the explicit mean over the N x N matrix
    zn = torch.nn.functional.normalize(healthy.double(), dim=1)
    sim = (zn @ zn.t()).numpy()
    assert mean_pairwise_cosine(healthy) == pytest.approx((sim.sum() - np.trace(sim)) / (256 * 255), abs=1e-9)
    # effective rank: d equal singular values -> d
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    monitor = CollapseMonitor(np.zeros((2, 8, 8), np.uint8), every=10)
    assert monitor.warnings(h) == []
    assert len(monitor.warnings(s)) == 2 and "collapse" in monitor.warnings(s)[0]
    assert monitor.warnings(s, step=0) == []  # the untrained baseline is not a collapse
    assert monitor.due(10, 100) and monitor.due(100, 100) and not monitor.due(11, 100)
    with pytest.raises(ValueError, match="N >= 2"):
        collapse_metrics(torch.randn(1, 4))


def test_gaussian_blur_is_per_sample_seeded_mean_preserving_and_off_by_default():
    from engine.ssl.augment import AugmentConfig, gaussian_blur, xray_view

    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gaussian_blur(x, 0.0, (0.5, 2.0), torch.Generator().manual_seed(1)), x)
    y1 = gaussian_blur(x, 1.0, (0.5, 2.0), torch.Generator().manual_seed(1))
    y2 = gaussian_blur(x, 1.0, (0.5, 2.0), torch.Generator().manual_seed(1))
    assert torch.equal(y1, y2) and y1.shape == x.shape
    assert (y1.std(dim=(1, 2, 3)) < 0.6 * x.std(dim=(1, 2, 3))).all()  # white noise gets smoother
    torch.testing.assert_close(y1.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.02, rtol=0)
    flat = torch.full((2, 1, 16, 16), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 1.0, (1.0, 2.0), torch.Generator().manual_seed(0)), flat)
    weak = gaussian_blur(x, 1.0, (0.3, 0.3), torch.Generator().manual_seed(2))
    strong = gaussian_blur(x, 1.0, (2.0, 2.0), torch.Generator().manual_seed(2))
    assert (strong.std(dim=(1, 2, 3)) < weak.std(dim=(1, 2, 3))).all()
    assert AugmentConfig().blur_p == 0.0  # the study's recipe has no blur
    g = torch.Generator().manual_seed(3)
    v = xray_view(x, 24, AugmentConfig(blur_p=1.0, noise_std=0.0), g)
    assert v.shape == (6, 1, 24, 24) and float(v.min()) >= 0 and float(v.max()) <= 1
