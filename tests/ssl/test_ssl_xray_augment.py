"""The X-ray recipe's optional augmentations (issue 20 item 2): rotation folded into the crop, histogram
equalization, gamma; each off by default and then drawing no random numbers (old runs keep their views)."""
from __future__ import annotations

import math

import numpy as np
import torch

from engine.ssl.augment import AugmentConfig, crop_resize, equalize, random_gamma, xray_view


def _reference_equalize(img: np.ndarray) -> np.ndarray:
    """(cdf - cdf_min) / (N - cdf_min) over 256 bins, written out per pixel (Gonzalez & Woods 3.3)."""
    q = np.round(np.clip(img, 0, 1) * 255).astype(int)
    hist = np.bincount(q.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    cmin = cdf[q.min()]
    return (cdf[q] - cmin) / max(1, q.size - cmin)


def test_equalize_matches_the_textbook_mapping_per_image():
    x = torch.rand(4, 1, 24, 24, generator=torch.Generator().manual_seed(0)) ** 3  # dark, skewed
    y = equalize(x, 1.0, torch.Generator().manual_seed(1))
    for i in range(4):
        np.testing.assert_allclose(y[i, 0].numpy(), _reference_equalize(x[i, 0].numpy()), atol=1e-6)
    assert abs(float(y.mean()) - 0.5) < 0.1 < abs(float(x.mean()) - 0.5)  # spread over the range
    kept = equalize(x, 0.0, torch.Generator().manual_seed(1))
    assert kept is x


def test_rotation_is_part_of_the_crop():
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    whole = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(2, 1)
    assert torch.allclose(crop_resize(x, whole, 16, torch.zeros(2)), x, atol=1e-5)
    assert torch.allclose(crop_resize(x, whole, 16, torch.full((2,), math.pi / 2)), torch.rot90(x, 1, (2, 3)), atol=1e-5)


def test_gamma_bounds_and_identity():
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.89 + 0.01  # log x away from 0
    y = random_gamma(x, 0.5, torch.Generator().manual_seed(2))
    ratio = torch.log(y) / torch.log(x)  # the gamma each image got
    per_image = ratio.view(64, -1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-4)
    assert float(per_image.min()) >= 1 / 1.5 - 1e-4 and float(per_image.max()) <= 1.5 + 1e-4
    assert random_gamma(x, 0.0, torch.Generator()) is x


def test_options_off_leave_the_old_views_bit_identical():
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg = AugmentConfig(crop_scale=(0.3, 1.0), jitter=0.4, noise_std=0.05)
    a = xray_view(x, 24, cfg, torch.Generator().manual_seed(5))
    b = xray_view(x, 24, AugmentConfig(crop_scale=(0.3, 1.0), jitter=0.4, noise_std=0.05, rotate_deg=0.0,
                                       hist_eq_p=0.0, gamma=0.0), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    on = xray_view(x, 24, AugmentConfig(rotate_deg=10, hist_eq_p=1.0, gamma=0.3), torch.Generator().manual_seed(5))
    assert on.shape == (4, 1, 24, 24) and float(on.min()) >= 0 and float(on.max()) <= 1
