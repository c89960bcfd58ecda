"""MoCo v2 with a VICReg variance term, as the seed study ran it.

He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning" (CVPR);
Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning" (arXiv:2003.04297, MLP head,
cosine schedule, stronger augmentation); Bardes et al. 2022, "VICReg" (ICLR) for the variance term.

Notation (MoCo paper): query encoder f_q (backbone + MLP head g_q), key encoder f_k updated as
theta_k <- m theta_k + (1 - m) theta_q, queue of K negative keys, temperature T:

    q = normalize(g_q(f_q(x_q))),  k = normalize(g_k(f_k(x_k)))
    L_nce = -log exp(q.k+ / T) / (exp(q.k+ / T) + sum_{k- in queue} exp(q.k- / T))
    L_var = mean_j relu(gamma - sqrt(Var(z_j) + 1e-4))   on the unnormalized projections z = g_q(f_q(x_q))
    L_dec = 1/d sum_{i != j} corr_batch(z)_ij^2          (feature decorrelation, Hua et al. 2021)
    L = L_nce + var_weight * L_var + decorr_weight * L_dec

Shuffling BN (MoCo Sec. 3.3): with plain BN the positive key shares batch statistics with its query,
a shortcut the model exploits. As in the official single-GPU demo, every BatchNorm computes its
statistics over up to `bn_splits` sub-batches of at least 16 images and the keys are shuffled
before the key encoder and unshuffled after, so a query and its key are normalized with different
sub-batches. Per-rank batches under 32 images get plain BN (smaller groups destroy the signal).
This is per rank, so it needs no cross-GPU shuffle under DDP. Keys of all ranks enter the queue.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.ssl.augment import AugmentConfig, xray_view
from engine.ssl.common import (
    OptimRecipe, SSLMethod, concat_all_gather, ema_update_, frozen_copy, gather_with_grad, l2n, mlp,
)


@dataclass(frozen=True)
class MoCoConfig:
    m: float = 0.999  # key-encoder momentum (MoCo, He et al. 2020)
    queue: int = 65536  # K negatives (MoCo / MoCo v2 default)
    T: float = 0.07  # InfoNCE temperature: the study's (MoCo v1: 0.07; MoCo v2 paper: 0.2)
    proj_hidden: int | None = None  # MoCo v2 MLP head D -> D -> 128 (None = backbone feature dim D)
    proj_dim: int = 128  # MoCo v2
    var_weight: float = 1.0  # VICReg variance term weight (study)
    gamma: float = 1.0  # VICReg target std (Bardes et al. 2022)
    # Feature decorrelation (Hua et al. 2021, "On Feature Decorrelation in Self-Supervised Learning", ICCV;
    # the within-view redundancy reduction of Barlow Twins): 0 = off (the study's MoCo). The adaptive
    # collapse controller adjusts this weight: it acts on dimensionality directly, where the variance
    # hinge can be met by a low-rank spread (measured: raising var_weight lowered the effective rank).
    decorr_weight: float = 0.0
    bn_splits: int = 8  # shuffling-BN sub-batches, at most (official MoCo CIFAR demo: 8 of 64); 1 = plain BN
    head_bn: bool = False  # BatchNorm in the head's hidden layer (SimCLR / MoCo v3 heads; MoCo v2: none)
    head_out_bn: bool = False  # non-affine BatchNorm on the 128-d output (MoCo v3), centring the embeddings


# MoCo v2: SGD lr 0.03 per 256 images, momentum 0.9, weight decay 1e-4 on all weights, cosine, no warmup.
RECIPE = OptimRecipe("sgd", base_lr=0.03, weight_decay=1e-4, warmup_epochs=0.0, exclude_bias_bn=False)


def moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
    """Cosine logits with the positive at index 0: q, k (B, d) unit rows, queue (K, d) -> (B, 1 + K)."""
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
    l_neg = q @ queue.t()  # (B, K)
    return torch.cat([l_pos, l_neg], dim=1)  # (B, 1 + K)


def info_nce(logits: torch.Tensor, T: float) -> torch.Tensor:
    """Cross entropy of logits / T against class 0 (the positive key)."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # (B,)
    return F.cross_entropy(logits / T, labels)


def variance_loss(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg variance hinge: mean_j relu(gamma - sqrt(Var_batch(z_j) + eps)); z (N, d) -> scalar."""
    std = torch.sqrt(z.var(dim=0) + eps)  # (d,) unbiased, as VICReg's code
    return F.relu(gamma - std).mean()


def decorrelation_loss(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Sum of squared off-diagonal correlations of z (N, d) over the batch, divided by d -> scalar.

    Scale-invariant (features are standardized first), so it cannot be met by shrinking z; it is 0 when
    the d dimensions are uncorrelated, d - 1 when all are one. VICReg's covariance term (Bardes et al.
    2022) on standardized features, as in Hua et al. 2021's decorrelation.
    """
    zc = z - z.mean(dim=0)
    zc = zc / torch.sqrt(zc.var(dim=0) + eps)  # (N, d) standardized
    c = (zc.t() @ zc) / max(1, z.shape[0] - 1)  # (d, d) correlation matrix
    off = c - torch.diag(torch.diagonal(c))
    return off.pow(2).sum() / z.shape[1]


@torch.no_grad()
def enqueue_(queue: torch.Tensor, ptr: int, keys: torch.Tensor) -> int:
    """Write keys (n, d) into the ring buffer queue (K, d) at ptr, wrapping around; returns the new ptr."""
    K, n = queue.shape[0], keys.shape[0]
    if n > K:  # more keys than slots: only the newest K survive
        ptr, keys = (ptr + n - K) % K, keys[-K:]
        n = K
    idx = (ptr + torch.arange(n, device=queue.device)) % K  # (n,) distinct slots
    queue[idx] = keys.to(queue.dtype)
    return (ptr + n) % K


# Smallest sub-batch BN statistics are computed over. BatchNorm degrades quickly below ~16 samples
# (Wu & He 2018, Group Normalization, Fig. 1); with 2-4 samples per group it erases the signal and
# MoCo stops learning (measured: InfoNCE stuck at chance with 8 groups of 2, learning with 1 group).
BN_MIN_GROUP = 16


def n_splits(n: int, max_splits: int, min_group: int = BN_MIN_GROUP) -> int:
    """Largest s <= max_splits dividing n with >= min_group samples per sub-batch (1 = plain BN)."""
    for s in range(min(max_splits, n // min_group), 1, -1):
        if n % s == 0:
            return s
    return 1


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed per sub-batch (same state_dict keys as BN)."""

    def __init__(self, num_features: int, max_splits: int, **kw) -> None:
        super().__init__(num_features, **kw)
        self.max_splits = max_splits

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected 2D or 4D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # a head's BatchNorm1d: (N, C) as (N, C, 1, 1)
            return self.forward(x[:, :, None, None])[:, :, 0, 0]
        s = n_splits(x.shape[0], self.max_splits)
        if not self.training or s == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        rm, rv = self.running_mean.repeat(s), self.running_var.repeat(s)  # (s*C,)
        # (N, C, H, W) -> (N/s, s*C, H, W): channel block i holds samples i, i+s, i+2s, ...
        w_, b_ = (self.weight.repeat(s), self.bias.repeat(s)) if self.affine else (None, None)
        y = F.batch_norm(x.reshape(n // s, c * s, h, w), rm, rv, w_, b_,
                         True, self.momentum, self.eps).reshape(n, c, h, w)
        with torch.no_grad():
            self.running_mean.copy_(rm.view(s, c).mean(0))
            self.running_var.copy_(rv.view(s, c).mean(0))
            self.num_batches_tracked.add_(1)
        return y


def convert_split_bn(module: nn.Module, max_splits: int) -> nn.Module:
    """Replace every BatchNorm2d / BatchNorm1d in `module` (in place) by a SplitBatchNorm with the same state."""
    for name, child in module.named_children():
        if type(child) in (nn.BatchNorm2d, nn.BatchNorm1d):
            new = SplitBatchNorm(child.num_features, max_splits, eps=child.eps, momentum=child.momentum,
                                 affine=child.affine)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new.to(child.running_mean.device))
        else:
            convert_split_bn(child, max_splits)
    return module


class MoCoV2(SSLMethod):
    """Query encoder (backbone + head), momentum key encoder, negative queue."""

    name = "moco_v2"  # registered in engine/ssl/registry.py (collapse control adjusts `decorr_weight`)

    def __init__(self, backbone: nn.Module, cfg: MoCoConfig, aug: AugmentConfig, image_size: int) -> None:
        super().__init__(backbone)
        self.cfg, self.aug, self.size = cfg, aug, image_size
        self.var_weight = float(cfg.var_weight)
        self.decorr_weight = float(cfg.decorr_weight)  # the weight in use; the collapse controller may change it
        d = backbone.feat_dim
        self.head = mlp([d, cfg.proj_hidden or d, cfg.proj_dim], bn=cfg.head_bn, last_bn=cfg.head_out_bn)  # g_q: D -> D -> 128
        if cfg.bn_splits > 1:  # the head's BN too: one full-batch BN would leak the key's batch again
            convert_split_bn(self.backbone, cfg.bn_splits)
            convert_split_bn(self.head, cfg.bn_splits)
        self.backbone_k, self.head_k = frozen_copy(self.backbone), frozen_copy(self.head)  # f_k, g_k
        self.register_buffer("queue", l2n(torch.randn(cfg.queue, cfg.proj_dim)))  # (K, d) random unit keys
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._keys: torch.Tensor | None = None  # this step's keys, enqueued in after_step

    def views(self, x01: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        x_q = self.normalize(xray_view(x01, self.size, self.aug, g))  # (B, 3, S, S)
        x_k = self.normalize(xray_view(x01, self.size, self.aug, g))  # (B, 3, S, S)
        perm = torch.randperm(x01.shape[0], generator=g, device=g.device)  # (B,) key shuffle for BN
        return [x_q, x_k, perm]

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor, perm: torch.Tensor):  # type: ignore[override]
        z = self.head(self.backbone(x_q)).float()  # (B, d) unnormalized query projections
        q = l2n(z)  # (B, d)
        with torch.no_grad():
            k = l2n(self.head_k(self.backbone_k(x_k[perm])).float())  # (B, d) keys of the shuffled batch
            k = k[torch.argsort(perm)]  # (B, d) back in query order
        logits = moco_logits(q, k, self.queue)  # (B, 1 + K)
        l_nce = info_nce(logits, self.cfg.T)
        z_all = gather_with_grad(z)  # over the global batch
        l_var = variance_loss(z_all, self.cfg.gamma)
        self._keys = k
        metrics = {"nce": l_nce.detach(), "var": l_var.detach(), "pos_sim": logits[:, 0].mean().detach(),
                   "neg_sim": logits[:, 1:].mean().detach()}
        return l_nce + self.var_weight * l_var + self.decorrelation(z_all, metrics), metrics

    def decorrelation(self, z: torch.Tensor, metrics: dict) -> torch.Tensor:
        """decorr_weight * L_dec of the projections z (N, d), recorded in metrics; 0 (no work) when off."""
        if self.decorr_weight <= 0:
            return z.new_zeros(())
        l_dec = decorrelation_loss(z)
        metrics["decorr"] = l_dec.detach()
        return self.decorr_weight * l_dec

    @torch.no_grad()
    def after_step(self, step: int, total: int) -> None:
        ema_update_(self.backbone_k, self.backbone, self.cfg.m)  # theta_k <- m theta_k + (1-m) theta_q
        ema_update_(self.head_k, self.head, self.cfg.m)
        if self._keys is not None:
            keys = concat_all_gather(self._keys)  # (W*B, d) keys of every rank
            self.queue_ptr.fill_(enqueue_(self.queue, int(self.queue_ptr), keys))
            self._keys = None

    def backbone_work(self, views: list[torch.Tensor]) -> list[tuple[torch.Tensor, bool]]:
        return [(views[0], True), (views[1], False)]  # query encoder f+b, key encoder forward

    def head_embedding(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)  # (B, d) the space L_var acts on

    def ddp_ignored(self) -> list[str]:
        return ["queue", "queue_ptr"]
