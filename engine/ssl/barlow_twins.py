"""Barlow Twins: redundancy reduction between two views.

Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction" (ICML).

Notation (paper): shared encoder f (backbone + projector), embeddings Z^A, Z^B (N x D) of two views,
each dimension standardized over the batch, cross-correlation

    C_ij = sum_b z^A_bi z^B_bj / N
    L_BT = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2

Under DDP the embeddings of all ranks are gathered with gradient (`gather_with_grad`), so the
standardization and C are computed over the global batch exactly as on one device (the paper
all-reduces C and uses SyncBN in the projector; on CUDA the projector BN is synced too).

Memory: gradient checkpointing over layer1..4 (on by default for resnet50) recomputes those stages
in backward, which lets ResNet-18 train at batch 512 x 224 px on a ~22 GB GPU. The recompute does not
update BatchNorm running statistics a second time (engine.ssl.common.resnet_features).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from engine.ssl.augment import AugmentConfig, xray_view
from engine.ssl.common import OptimRecipe, SSLMethod, gather_with_grad, mlp, resnet_features


@dataclass(frozen=True)
class BarlowConfig:
    proj_dim: int = 2048  # projector width (paper: 8192; the study: 2048 to fit small GPUs)
    lambd: float = 0.005  # off-diagonal weight (paper: 5e-3)
    grad_checkpointing: bool | None = None  # None = on for resnet50, off for resnet18
    eps: float = 1e-5  # standardization epsilon (BatchNorm1d's, as the paper's code uses BN(affine=False))


# Barlow Twins: LARS, lr 0.2 (weights) / 0.0048 (biases, BN) per 256 images, weight decay 1.5e-6,
# biases and BN excluded from weight decay and LARS adaptation, 10 warmup epochs, cosine to 0.001x.
RECIPE = OptimRecipe("lars", base_lr=0.2, weight_decay=1.5e-6, warmup_epochs=10.0, exclude_bias_bn=True,
                     bias_lr_scale=0.0048 / 0.2, final_lr_ratio=0.001)


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-dimension batch standardization (BatchNorm1d(affine=False) in training mode): (N, D) -> (N, D)."""
    mu = z.mean(dim=0, keepdim=True)  # (1, D)
    var = z.var(dim=0, unbiased=False, keepdim=True)  # (1, D) biased, as BN
    return (z - mu) / torch.sqrt(var + eps)


def cross_correlation(z_a: torch.Tensor, z_b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """C = standardize(Z^A)^T standardize(Z^B) / N: (N, D) x (N, D) -> (D, D)."""
    n = z_a.shape[0]
    return standardize(z_a, eps).t() @ standardize(z_b, eps) / n  # (D, D)


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float = 0.005,
                      eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_BT, on-diagonal term, off-diagonal term) for embeddings (N, D) of two views."""
    c = cross_correlation(z_a.float(), z_b.float(), eps)  # (D, D)
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag, on_diag, off_diag


class BarlowTwins(SSLMethod):
    """Shared backbone + 3-layer projector (Linear-BN-ReLU x2, Linear), 2048-d by default."""

    name = "barlow_twins"  # registered in engine/ssl/registry.py (collapse control adjusts `lambd`)
    sync_bn = True

    def __init__(self, backbone: nn.Module, cfg: BarlowConfig, aug: AugmentConfig, image_size: int) -> None:
        super().__init__(backbone)
        self.cfg, self.aug, self.size = cfg, aug, image_size
        self.lambd = float(cfg.lambd)  # the weight in use; the collapse controller may change it
        gc = cfg.grad_checkpointing
        self.grad_checkpointing = (backbone.arch == "resnet50") if gc is None else gc
        self.projector = mlp([backbone.feat_dim, cfg.proj_dim, cfg.proj_dim, cfg.proj_dim], bn=True)

    def views(self, x01: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        return [self.normalize(xray_view(x01, self.size, self.aug, g)) for _ in range(2)]  # 2 x (B,3,S,S)

    def forward(self, y_a: torch.Tensor, y_b: torch.Tensor):  # type: ignore[override]
        z_a = self.projector(resnet_features(self.backbone, y_a, self.grad_checkpointing))  # (B, D)
        z_b = self.projector(resnet_features(self.backbone, y_b, self.grad_checkpointing))  # (B, D)
        z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)  # (W*B, D) global batch
        loss, on, off = barlow_twins_loss(z_a, z_b, self.lambd, self.cfg.eps)
        return loss, {"on_diag": on.detach(), "off_diag": off.detach()}

    def backbone_work(self, views: list[torch.Tensor]) -> list[tuple[torch.Tensor, bool]]:
        return [(views[0], True), (views[1], True)]  # both views through the one backbone

    def head_embedding(self, f: torch.Tensor) -> torch.Tensor:
        return self.projector(f)  # (B, D) the space C is computed in
