"""SparK-style masked image modelling for CNNs, as the seed study ran it.

Tian et al. 2023, "Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked
Modeling" (ICLR). The study kept SparK's recipe but masked at the input instead of using sparse
convolutions (simpler, runs on every backend):

- mask: the image is cut into P x P patches (P = 32, the ResNet's total stride); a fraction r = 0.6
  of them, chosen per image, is set to 0 (the dataset mean after normalization);
- encoder: the backbone's feature maps f_1..f_4 (strides 4, 8, 16, 32);
- "densify" (SparK Sec. 3.3): at every scale, masked positions are replaced by a learned mask
  token m_i, then projected to the decoder width of that scale;
- light hierarchical decoder (SparK's LightDecoder / UNet-like): five x2 upsampling blocks
  (ConvTranspose 2x2 then conv3x3-BN-ReLU twice), width halving each time, adding the densified
  features at strides 16, 8, 4; a 1x1 conv predicts the gray image;
- loss: per-patch normalized targets (each patch standardized by its own mean and variance, as
  MAE's norm_pix_loss / SparK), mean squared error on masked patches only:

    L = sum_p M_p * mean_pixels((y_p - (x_p - mu_p) / sqrt(var_p + 1e-6))^2) / sum_p M_p
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.models import resnet_stages, stage_channels
from engine.ssl.augment import AugmentConfig, xray_view
from engine.ssl.common import OptimRecipe, SSLMethod


@dataclass(frozen=True)
class SparKConfig:
    patch: int = 32  # mask patch size in pixels = the ResNet's downsampling ratio (SparK)
    mask_ratio: float = 0.6  # fraction of patches masked (SparK: 0.6)
    decoder_width: int = 512  # width at stride 32, halved at each of the 5 upsamplings (SparK's light decoder)
    crop_scale: tuple[float, float] = (0.67, 1.0)  # SparK pretraining crop: RandomResizedCrop(scale=(0.67, 1))


# SparK: LAMB, lr 2e-4 per 256 images, weight decay 0.04, 40 warmup epochs, cosine. We use AdamW
# (betas 0.9/0.95, the usual LAMB substitute at small batch) with the same lr and decay.
RECIPE = OptimRecipe("adamw", base_lr=2e-4, weight_decay=0.04, warmup_epochs=40.0, exclude_bias_bn=True)


def random_patch_mask(batch: int, grid: int, ratio: float, g: torch.Generator) -> torch.Tensor:
    """(B, grid, grid) bool, True = masked; exactly round(ratio * grid^2) masked patches per image."""
    n = grid * grid
    n_mask = min(n, max(1, round(ratio * n)))
    noise = torch.rand(batch, n, generator=g, device=g.device)  # (B, L)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, L) rank of each patch's noise
    return (ranks < n_mask).view(batch, grid, grid)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, C*p*p) with L = (H/p)(W/p), patches in row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)  # (B, C, h, p, w, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def spark_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, p: int) -> torch.Tensor:
    """MSE against per-patch normalized targets over masked patches only.

    pred, target: (B, 1, H, W); mask: (B, H/p, W/p) bool (True = masked) -> scalar.
    """
    t = patchify(target.float(), p)  # (B, L, p*p)
    t = (t - t.mean(dim=-1, keepdim=True)) / torch.sqrt(t.var(dim=-1, keepdim=True) + 1e-6)
    err = (patchify(pred.float(), p) - t).pow(2).mean(dim=-1)  # (B, L) per-patch MSE
    m = mask.reshape(mask.shape[0], -1).to(err.dtype)  # (B, L)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def _up_block(cin: int, cout: int) -> nn.Sequential:
    """x2 upsampling: ConvTranspose 2x2 stride 2, then (conv3x3-BN-ReLU) x 2 (SparK's UNetBlock)."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cin, 2, stride=2),
        nn.Conv2d(cin, cin, 3, padding=1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SparK(SSLMethod):
    """Backbone encoder + mask tokens + densify projections + light decoder."""

    name = "spark"  # registered in engine/ssl/registry.py (no collapse-control weight: reconstruction only)

    def __init__(self, backbone: nn.Module, cfg: SparKConfig, aug: AugmentConfig, image_size: int) -> None:
        super().__init__(backbone)
        if image_size % cfg.patch:
            raise ValueError(f"SparK needs an image size divisible by the mask patch {cfg.patch} (got {image_size}); "
                             f"use e.g. {max(cfg.patch, image_size // cfg.patch * cfg.patch)}")
        self.cfg, self.aug, self.size = cfg, aug, image_size
        enc = stage_channels(backbone.arch)  # channels of f_1..f_4
        w = [max(cfg.decoder_width >> i, 8) for i in range(6)]  # decoder widths at strides 32,16,8,4,2,1
        self.mask_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in enc])  # m_1..m_4
        for t in self.mask_tokens:
            nn.init.trunc_normal_(t, std=0.02)
        # densify projections: f_4 -> w[0] (stride 32), f_3 -> w[1] (16), f_2 -> w[2] (8), f_1 -> w[3] (4)
        self.densify = nn.ModuleList([nn.Conv2d(c, w[3 - i], 1) for i, c in enumerate(enc)])
        self.blocks = nn.ModuleList([_up_block(w[i], w[i + 1]) for i in range(5)])
        self.head = nn.Conv2d(w[5], 1, 1)  # predicts the (normalized) gray image

    def views(self, x01: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        # No noise: reconstructing detector noise teaches nothing; crop + jitter as SparK crop + study jitter.
        v = self.normalize(xray_view(x01, self.size, self.aug, g, scale=self.cfg.crop_scale, noise=False))
        mask = random_patch_mask(x01.shape[0], self.size // self.cfg.patch, self.cfg.mask_ratio, g)  # (B,h,w)
        return [v, mask]

    def backbone_work(self, views: list[torch.Tensor]) -> list[tuple[torch.Tensor, bool]]:
        return [(views[0], True)]  # one (masked) view through the encoder

    def forward(self, x: torch.Tensor, mask: torch.Tensor):  # type: ignore[override]
        p = self.cfg.patch
        m_pix = mask.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None]  # (B, 1, S, S) True = masked
        feats = resnet_stages(self.backbone, x.masked_fill(m_pix, 0.0))  # [f_1 .. f_4]
        dense = []
        for i, f in enumerate(feats):
            m_i = F.interpolate(mask[:, None].float(), size=f.shape[-2:], mode="nearest").bool()  # (B,1,h_i,w_i)
            f = torch.where(m_i, self.mask_tokens[i].to(f.dtype), f)  # masked positions -> m_i
            dense.append(self.densify[i](f))  # (B, w_i, h_i, w_i)
        d = dense[3]  # stride 32
        for i, block in enumerate(self.blocks):
            d = block(d)  # x2 upsampling
            if i < 3:
                d = d + dense[2 - i]  # strides 16, 8, 4
        pred = self.head(d)  # (B, 1, S, S)
        loss = spark_loss(pred, x[:, :1], mask, p)  # target: the clean (unmasked) view, one gray channel
        return loss, {"masked_frac": mask.float().mean().detach()}
