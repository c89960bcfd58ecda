"""Few-shot finetuning's light augmentation, as explicit per-image parameters.

A small random resized crop (area 0.8-1, aspect 0.9-1.1: radiographs stay near square) and a
brightness/contrast jitter (additive brightness, contrast around the image mean), never flips
(laterality matters: the heart is on the left). Parameters are drawn first (`draw_augment`, from a CPU
generator, one row per image) and applied after (`apply_augment`), so the fast finetune can cache the
views of a fixed draw and batched trials draw from their own generators.

The crop is `engine.ssl.augment.crop_resize`, the same batched affine-grid crop the SSL views use.
The photometric step stays here: the SSL recipe's `brightness_contrast` draws its own factors inside
(multiplicative brightness, applied with a probability), while finetuning needs given factors and
the additive brightness its tested recipe uses.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch

from engine.ssl.augment import crop_resize

N_PARAMS = 6  # crop w, h, centre x, y (in [-1, 1] image coordinates), contrast factor, brightness offset


class AugmentStrengths(Protocol):
    """What `draw_augment` reads (FinetuneConfig and FastFinetune both have these fields)."""

    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    brightness: float
    contrast: float


def draw_augment(gen: torch.Generator, b: int, cfg: AugmentStrengths) -> torch.Tensor:
    """(b, 6) per-image augmentation parameters: crop w, h, centre x, y (normalized), contrast, brightness.

    w, h: fractions of the image side (area in cfg.crop_scale, aspect in cfg.crop_ratio, at most 1);
    centre: in [-(1 - w), 1 - w] (image coordinates in [-1, 1]) so the crop stays inside the image;
    contrast ~ U[1 - c, 1 + c]; brightness ~ U[-b, b] in [0, 1] intensity units. Drawn in float64."""
    u = torch.rand(b, N_PARAMS, generator=gen, dtype=torch.float64)  # (b, 6)
    area = cfg.crop_scale[0] + (cfg.crop_scale[1] - cfg.crop_scale[0]) * u[:, 0]
    lr0, lr1 = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    ratio = torch.exp(lr0 + (lr1 - lr0) * u[:, 1])
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1.0 - w) * (2.0 * u[:, 2] - 1.0)
    cy = (1.0 - h) * (2.0 * u[:, 3] - 1.0)
    c = 1.0 + cfg.contrast * (2.0 * u[:, 4] - 1.0)
    br = cfg.brightness * (2.0 * u[:, 5] - 1.0)
    return torch.stack([w, h, cx, cy, c, br], dim=1).float()


def apply_augment(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """x float (N, 1, S, S) in [0, 1], p (N, 6) from `draw_augment` -> augmented (N, 1, S, S) in [0, 1].

    Crop (bilinear, border padding) with `engine.ssl.augment.crop_resize`, then contrast around each
    image's mean and additive brightness, clamped to [0, 1]."""
    n = x.shape[0]
    p = p.to(x.device)
    boxes = torch.stack([(p[:, 2] + 1.0) / 2.0, (p[:, 3] + 1.0) / 2.0, p[:, 0], p[:, 1]], dim=1)  # (N, 4) cx cy w h
    x = crop_resize(x, boxes, x.shape[-1])
    m = x.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    x = (x - m) * p[:, 4].view(n, 1, 1, 1) + m + p[:, 5].view(n, 1, 1, 1)
    return x.clamp_(0.0, 1.0)
