"""Masked-contrastive hybrid: MoCo v2 between a patch-masked query view and an unmasked momentum key.

The seed study's proposed extension: a contrastive loss on representations of partially masked
views, so the network must both infer the hidden regions and stay augmentation-invariant.

- Masking as SparK (Tian et al. 2023, "Designing BERT for Convolutional Networks", ICLR): the query
  view is cut into P x P patches and a fraction r of them, chosen per image, is set to 0 (the dataset
  mean after normalization), at the input (as engine/ssl/spark.py).
- Objective as MoCo v2 (He et al. 2020; Chen et al. 2020) with the study's VICReg variance term
  (Bardes et al. 2022), on the masked query and the *unmasked* key of another augmented view:

    q = normalize(g_q(f_q(mask(x_q)))),  k = normalize(g_k(f_k(x_k)))          (f_k, g_k: momentum encoder)
    L_nce = -log exp(q.k+ / T) / (exp(q.k+ / T) + sum_{k- in queue} exp(q.k- / T))
    L_var = mean_j relu(gamma - sqrt(Var(z_j) + 1e-4)),  z = g_q(f_q(mask(x_q)))
    L = L_nce + var_weight * L_var + decorr_weight * L_dec + recon_weight * L_rec

- Optional reconstruction (recon_weight > 0): SparK's densify + light decoder on the masked query's
  feature maps f_1..f_4, L_rec = SparK's per-patch-normalized MSE on the masked patches of x_q
  (`engine.ssl.spark.spark_loss`). It needs P a multiple of 32 (the mask must be whole cells of f_4).

Everything else (shuffling / split BN, queue, key momentum, optimizer recipe, the collapse
controller's `decorr_weight` knob) is MoCo v2's (`engine.ssl.moco_v2.MoCoV2`, which this subclasses).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.models import resnet_stages, stage_channels
from engine.ssl import moco_v2
from engine.ssl.augment import AugmentConfig
from engine.ssl.common import gather_with_grad, l2n
from engine.ssl.moco_v2 import MoCoConfig, MoCoV2, info_nce, moco_logits, variance_loss
from engine.ssl.spark import _up_block, random_patch_mask, spark_loss


@dataclass(frozen=True)
class MaskedContrastiveConfig(MoCoConfig):
    """MoCo v2's settings (inherited, same defaults) plus the masking and the optional reconstruction."""

    patch: int = 32  # mask patch size in pixels (SparK: the ResNet's total stride, 32)
    mask_ratio: float = 0.6  # fraction of the query's patches masked (SparK: 0.6)
    recon_weight: float = 0.0  # weight of SparK's reconstruction loss (0 = contrastive only)
    decoder_width: int = 256  # SparK light-decoder width at stride 32 (used only when recon_weight > 0)

    def __post_init__(self) -> None:
        if self.patch < 1 or not (0.0 < self.mask_ratio < 1.0) or self.recon_weight < 0:
            raise ValueError(f"masked_contrastive needs patch >= 1, 0 < mask_ratio < 1 and recon_weight >= 0 "
                             f"(got patch {self.patch}, mask_ratio {self.mask_ratio}, recon_weight {self.recon_weight})")
        if self.recon_weight > 0 and self.patch % 32:
            raise ValueError(f"masked_contrastive's reconstruction needs a patch that is a multiple of 32 (the "
                             f"ResNet's stride; got {self.patch}): use --opt patch=32, or --opt recon_weight=0")


RECIPE = moco_v2.RECIPE  # MoCo v2's SGD: the contrastive objective drives the run


class SparKDecoder(nn.Module):
    """SparK's mask tokens, densify projections and light hierarchical decoder (as engine/ssl/spark.py)."""

    def __init__(self, arch: str, width: int) -> None:
        super().__init__()
        enc = stage_channels(arch)  # channels of f_1..f_4
        w = [max(width >> i, 8) for i in range(6)]  # widths at strides 32, 16, 8, 4, 2, 1
        self.mask_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in enc])
        for t in self.mask_tokens:
            nn.init.trunc_normal_(t, std=0.02)
        self.densify = nn.ModuleList([nn.Conv2d(c, w[3 - i], 1) for i, c in enumerate(enc)])
        self.blocks = nn.ModuleList([_up_block(w[i], w[i + 1]) for i in range(5)])
        self.head = nn.Conv2d(w[5], 1, 1)

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """feats [f_1..f_4] of the masked input, mask (B, h, w) bool (True = masked) -> prediction (B, 1, S, S)."""
        dense = []
        for i, f in enumerate(feats):
            m_i = F.interpolate(mask[:, None].float(), size=f.shape[-2:], mode="nearest").bool()  # (B,1,h_i,w_i)
            dense.append(self.densify[i](torch.where(m_i, self.mask_tokens[i].to(f.dtype), f)))
        d = dense[3]  # stride 32
        for i, block in enumerate(self.blocks):
            d = block(d)  # x2 upsampling
            if i < 3:
                d = d + dense[2 - i]  # strides 16, 8, 4
        return self.head(d)  # (B, 1, S, S)


class MaskedContrastive(MoCoV2):
    """MoCo v2 (query encoder, momentum key encoder, queue) whose query view is patch-masked."""

    name = "masked_contrastive"

    def __init__(self, backbone: nn.Module, cfg: MaskedContrastiveConfig, aug: AugmentConfig, image_size: int) -> None:
        if image_size % cfg.patch:
            raise ValueError(f"masked_contrastive needs an image size divisible by the mask patch {cfg.patch} "
                             f"(got {image_size}); use e.g. {max(cfg.patch, image_size // cfg.patch * cfg.patch)}")
        super().__init__(backbone, cfg, aug, image_size)
        self.decoder = SparKDecoder(backbone.arch, cfg.decoder_width) if cfg.recon_weight > 0 else None

    def views(self, x01: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        x_q, x_k, perm = super().views(x01, g)  # (B,3,S,S) x 2, (B,) key shuffle
        grid = self.size // self.cfg.patch
        mask = random_patch_mask(x01.shape[0], grid, self.cfg.mask_ratio, g)  # (B, grid, grid) True = masked
        return [x_q, x_k, perm, mask]

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor, perm: torch.Tensor,  # type: ignore[override]
                mask: torch.Tensor):
        p = self.cfg.patch
        m_pix = mask.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None]  # (B, 1, S, S) True = masked
        x_m = x_q.masked_fill(m_pix, 0.0)  # (B, 3, S, S) masked query view
        if self.decoder is not None:
            feats = resnet_stages(self.backbone, x_m)  # [f_1 .. f_4]
            f = torch.flatten(self.backbone.avgpool(feats[-1]), 1)  # (B, D) = backbone(x_m)
        else:
            f = self.backbone(x_m)  # (B, D)
        z = self.head(f).float()  # (B, d) unnormalized query projections
        q = l2n(z)
        with torch.no_grad():
            k = l2n(self.head_k(self.backbone_k(x_k[perm])).float())  # (B, d) keys of the unmasked, shuffled views
            k = k[torch.argsort(perm)]  # (B, d) back in query order
        logits = moco_logits(q, k, self.queue)  # (B, 1 + K)
        l_nce = info_nce(logits, self.cfg.T)
        z_all = gather_with_grad(z)
        l_var = variance_loss(z_all, self.cfg.gamma)
        self._keys = k
        metrics = {"nce": l_nce.detach(), "var": l_var.detach(), "pos_sim": logits[:, 0].mean().detach(),
                   "neg_sim": logits[:, 1:].mean().detach(), "masked_frac": mask.float().mean().detach()}
        loss = l_nce + self.var_weight * l_var + self.decorrelation(z_all, metrics)
        if self.decoder is not None:
            pred = self.decoder(feats, mask)  # (B, 1, S, S)
            l_rec = spark_loss(pred, x_q[:, :1], mask, p)  # target: the unmasked query view, one gray channel
            loss = loss + self.cfg.recon_weight * l_rec
            metrics["rec"] = l_rec.detach()
        return loss, metrics

    def backbone_work(self, views: list[torch.Tensor]) -> list[tuple[torch.Tensor, bool]]:
        return [(views[0], True), (views[1], False)]  # masked query f+b, unmasked key forward
