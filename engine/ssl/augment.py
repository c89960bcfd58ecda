"""Batched on-device augmentations for grayscale chest X-rays.

Every function takes a (B, 1, S, S) float tensor in [0, 1] on the training device plus a
`torch.Generator` on that device, and draws per-sample random parameters from it, so one call
augments the whole batch on the GPU (a 2-core host never starves it) and a given generator seed
reproduces the exact views (resumable training relies on this).

The recipe is the seed study's, after SimCLR (Chen et al. 2020) / MoCo v2 (Chen et al. 2020,
arXiv:2003.04297) with the colour parts removed:

- random resized crop, area scale 0.08-1.0, aspect 3/4-4/3 (Szegedy et al. 2015; MoCo v2),
- brightness and contrast jitter with strength 0.8, applied with p = 0.8 (SimCLR's
  `RandomApply(ColorJitter(0.8 s, 0.8 s, ...), p=0.8)` with s = 1, brightness/contrast only):
  physically, exposure (mAs/kVp) and display windowing differ between scanners and sites,
- additive Gaussian noise, std 0.1 in [0, 1] intensity units: quantum (photon) noise of the detector.

Deliberately absent:
- colour jitter / grayscale conversion: radiographs have one channel, hue and saturation do not exist.
- horizontal flips: the heart sits on the left (situs solitus); a flipped chest is anatomically a
  dextrocardia and makes laterality-dependent findings (cardiomegaly, left/right effusions,
  hemidiaphragm elevation, hiatal hernia) ambiguous, so the study left them out.
- solarization (BYOL, DINO): no physical counterpart in a radiograph.

Optional, off unless set (issue 20's X-ray recipe ablation, bench/xray_recipe.py), each drawing random
numbers only when on, so runs without them keep their exact views:
- small rotations, U[-rotate_deg, rotate_deg] degrees about the crop's centre, folded into the crop's
  affine grid (one interpolation; zeros outside the image): patient positioning (MoCo-CXR, Sowrirajan et
  al. 2021, used +-10 deg with no colour jitter),
- histogram equalization with probability `hist_eq_p` (per image, 256 bins; Lightly's X-ray recipe
  equalizes): removes the exposure/windowing differences jitter simulates, by normalizing them away,
- gamma, x ** gamma with log gamma ~ U[-log(1 + gamma), log(1 + gamma)]: the display / detector
  response curve (a non-linear counterpart of the linear brightness/contrast jitter).

Optional (off in the study recipe, `blur_p` > 0 turns it on):
- Gaussian blur with sigma 0.1-2.0 px at 224 px, scaled to the view size (MoCo v2's GaussianBlur,
  p = 0.5). Physically: focal-spot penumbra, patient motion and detector MTF / processing kernels
  differ between acquisitions, so fine texture is not a property of the patient. It also removes a
  shortcut: two views of one file share its exact quantum-noise and fine-detail pattern, which an
  instance-discrimination method (MoCo) can match instead of learning anatomy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths (seed study; SimCLR / MoCo v2 without colour, see the module docstring)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction (MoCo v2: 0.2-1; study: 0.08-1)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range (torchvision default)
    jitter: float = 0.8  # brightness and contrast factors ~ U[1 - jitter, 1 + jitter]
    jitter_p: float = 0.8  # probability of applying the jitter (SimCLR RandomApply p=0.8)
    noise_std: float = 0.1  # additive Gaussian noise std in [0, 1] intensity units
    blur_p: float = 0.0  # probability of a Gaussian blur (study: 0; MoCo v2: 0.5), see the module docstring
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur sigma range in pixels at 224 px (MoCo v2), scaled to the view
    rotate_deg: float = 0.0  # rotation U[-deg, deg] about the crop centre (MoCo-CXR: 10); 0 = off
    hist_eq_p: float = 0.0  # probability of histogram equalization per image; 0 = off
    gamma: float = 0.0  # log gamma ~ U[-log(1+gamma), log(1+gamma)]; 0 = off


def _uniform(shape: tuple[int, ...], lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=g.device) * (hi - lo) + lo


def crop_params(
    batch: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator, tries: int = 10
) -> torch.Tensor:
    """Per-sample crop boxes (B, 4) = (cx, cy, w, h) as fractions of the (square) image side.

    torchvision's RandomResizedCrop sampling, vectorized: draw `tries` (area, log-aspect) pairs per
    sample and keep the first that fits inside the image; if none fits, take the whole image.
    """
    area = _uniform((batch, tries), scale[0], scale[1], g)  # (B, T)
    log_r = _uniform((batch, tries), math.log(ratio[0]), math.log(ratio[1]), g)  # (B, T)
    r = torch.exp(log_r)
    w, h = torch.sqrt(area * r), torch.sqrt(area / r)  # (B, T) fractions of the side
    ok = (w <= 1.0) & (h <= 1.0)  # (B, T)
    first = ok.float().argmax(dim=1, keepdim=True)  # (B, 1) index of the first fitting try
    any_ok = ok.any(dim=1)  # (B,)
    w = torch.where(any_ok, w.gather(1, first)[:, 0], torch.ones_like(any_ok, dtype=w.dtype))  # (B,)
    h = torch.where(any_ok, h.gather(1, first)[:, 0], torch.ones_like(any_ok, dtype=h.dtype))  # (B,)
    cx = w / 2 + _uniform((batch,), 0.0, 1.0, g) * (1 - w)  # (B,) centre in [w/2, 1 - w/2]
    cy = h / 2 + _uniform((batch,), 0.0, 1.0, g) * (1 - h)
    return torch.stack([cx, cy, w, h], dim=1)  # (B, 4)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int, angles: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each sample's box and resize it to size x size in one batched grid_sample call.

    x: (B, C, H, W); boxes: (B, 4) (cx, cy, w, h) in [0, 1] fractions -> (B, C, size, size).
    angles: (B,) radians to rotate each box about its centre (None = no rotation: border padding, as
    before; with rotation the corners outside the image are zeros, as a rotated film would show).
    """
    b = x.shape[0]
    cx, cy, w, h = boxes.to(x.dtype).unbind(1)  # (B,) each
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)  # output [-1,1] -> input [-1,1]
    if angles is None:
        theta[:, 0, 0], theta[:, 1, 1] = w, h
    else:  # [[w cos, -h sin], [w sin, h cos]]: the box's axes rotated by the angle (a square image)
        cos, sin = torch.cos(angles).to(x.dtype), torch.sin(angles).to(x.dtype)
        theta[:, 0, 0], theta[:, 0, 1] = w * cos, -h * sin
        theta[:, 1, 0], theta[:, 1, 1] = w * sin, h * cos
    theta[:, 0, 2], theta[:, 1, 2] = 2 * cx - 1, 2 * cy - 1
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)  # (B, size, size, 2)
    pad = "border" if angles is None else "zeros"
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=pad, align_corners=False)


def random_resized_crop(
    x: torch.Tensor, size: int, g: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3), rotate_deg: float = 0.0,
) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size): a random box of area `scale` x image (rotated U[-deg, deg]), resized."""
    boxes = crop_params(x.shape[0], scale, ratio, g)
    angles = None
    if rotate_deg > 0:
        angles = _uniform((x.shape[0],), -math.radians(rotate_deg), math.radians(rotate_deg), g)
    return crop_resize(x, boxes, size, angles)


def equalize(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Histogram equalization (256 bins, per image) with probability p. x: (B, 1, H, W) in [0, 1].

    Each pixel becomes (cdf(v) - cdf_min) / (N - cdf_min), the classic mapping (Gonzalez & Woods, Digital
    Image Processing, sec. 3.3; OpenCV's equalizeHist without its final rounding to 8 bits), batched with
    one scatter_add for all histograms.
    """
    if p <= 0:
        return x
    b = x.shape[0]
    apply = (torch.rand(b, generator=g, device=g.device) < p).view(-1, 1, 1, 1)
    idx = (x.clamp(0, 1) * 255).round().long().view(b, -1)  # (B, HW) bins
    counts = torch.zeros(b, 256, device=x.device, dtype=x.dtype).scatter_add_(1, idx, torch.ones_like(idx, dtype=x.dtype))
    cdf = counts.cumsum(1)
    cdf_min = cdf.gather(1, idx.min(1, keepdim=True).values)  # (B, 1) count of the darkest occupied bin
    lut = ((cdf - cdf_min) / (cdf[:, -1:] - cdf_min).clamp_min(1)).clamp_(0, 1)  # (B, 256)
    y = lut.gather(1, idx).view_as(x)
    return torch.where(apply, y, x)


def random_gamma(x: torch.Tensor, gamma: float, g: torch.Generator) -> torch.Tensor:
    """x ** gamma per image, log gamma ~ U[-log(1 + gamma), log(1 + gamma)]. x: (B, 1, H, W) in [0, 1]."""
    if gamma <= 0:
        return x
    lg = _uniform((x.shape[0],), -math.log1p(gamma), math.log1p(gamma), g).to(x.dtype).view(-1, 1, 1, 1)
    return x.clamp(1e-6, 1).pow(torch.exp(lg))


def brightness_contrast(x: torch.Tensor, jitter: float, p: float, g: torch.Generator) -> torch.Tensor:
    """torchvision ColorJitter(brightness=jitter, contrast=jitter) applied with probability p, per sample.

    brightness: x * b; contrast: blend with the image mean, (x - mean) * c + mean; clamped to [0, 1]
    after each, as torchvision does. x: (B, 1, H, W) in [0, 1].
    """
    b_sz = x.shape[0]
    apply = (torch.rand(b_sz, generator=g, device=g.device) < p).to(x.dtype).view(-1, 1, 1, 1)  # (B,1,1,1)
    bf = _uniform((b_sz,), 1 - jitter, 1 + jitter, g).to(x.dtype).view(-1, 1, 1, 1)
    cf = _uniform((b_sz,), 1 - jitter, 1 + jitter, g).to(x.dtype).view(-1, 1, 1, 1)
    bf, cf = 1 + apply * (bf - 1), 1 + apply * (cf - 1)  # factor 1 where not applied
    y = (x * bf).clamp_(0, 1)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return ((y - mean) * cf + mean).clamp_(0, 1)


def gaussian_blur(x: torch.Tensor, p: float, sigma: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """Per-sample Gaussian blur with probability p, sigma ~ U[sigma] pixels of x's own grid.

    One grouped separable convolution for the whole batch (reflect padding). x: (B, 1, H, W).
    """
    b, _, h, w = x.shape
    apply = torch.rand(b, generator=g, device=g.device) < p  # (B,)
    sig = _uniform((b,), sigma[0], sigma[1], g)  # (B,)
    if p <= 0 or sigma[1] <= 0 or not bool(apply.any()):
        return x
    r = max(1, min(math.ceil(3 * sigma[1]), (min(h, w) - 1) // 2))  # kernel radius
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)  # (k,)
    ker = torch.exp(-0.5 * (t[None] / sig[:, None].to(x.dtype).clamp_min(1e-3)) ** 2)  # (B, k)
    ker = ker / ker.sum(1, keepdim=True)
    ident = torch.zeros_like(ker)
    ident[:, r] = 1.0
    ker = torch.where(apply[:, None], ker, ident)  # no blur where not applied
    y = F.pad(x.reshape(1, b, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, ker.view(b, 1, 1, -1), groups=b)  # along W
    y = F.conv2d(y, ker.view(b, 1, -1, 1), groups=b)  # along H
    return y.reshape(b, 1, h, w)


def gaussian_noise(x: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    """x + N(0, std^2) per pixel, clamped to [0, 1] (a detector saturates)."""
    if std <= 0:
        return x
    noise = torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype)
    return (x + std * noise).clamp_(0, 1)


def xray_view(
    x: torch.Tensor, size: int, cfg: AugmentConfig, g: torch.Generator,
    scale: tuple[float, float] | None = None, noise: bool = True,
) -> torch.Tensor:
    """One augmented view of a batch: crop (+ rotation) -> (equalize) -> (gamma) -> brightness/contrast -> (blur)
    -> noise. (B,1,H,W) -> (B,1,size,size)."""
    v = random_resized_crop(x, size, g, scale or cfg.crop_scale, cfg.crop_ratio, cfg.rotate_deg)
    v = equalize(v, cfg.hist_eq_p, g)
    v = random_gamma(v, cfg.gamma, g)
    v = brightness_contrast(v, cfg.jitter, cfg.jitter_p, g)
    if cfg.blur_p > 0:
        v = gaussian_blur(v, cfg.blur_p, (cfg.blur_sigma[0] * size / 224, cfg.blur_sigma[1] * size / 224), g)
    return gaussian_noise(v, cfg.noise_std, g) if noise else v


def multi_crop(
    x: torch.Tensor, g: torch.Generator, cfg: AugmentConfig, global_size: int, local_size: int,
    n_local: int, global_scale: tuple[float, float], local_scale: tuple[float, float],
) -> list[torch.Tensor]:
    """DINO multi-crop (Caron et al. 2020, SwAV; 2021, DINO): 2 global views + n_local small views.

    Returns [global_1, global_2, local_1, ..., local_n]: (B,1,global_size,global_size) then
    (B,1,local_size,local_size).
    """
    views = [xray_view(x, global_size, cfg, g, scale=global_scale) for _ in range(2)]
    views += [xray_view(x, local_size, cfg, g, scale=local_scale) for _ in range(n_local)]
    return views
