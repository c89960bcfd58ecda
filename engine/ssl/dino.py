"""DINO: self-distillation with no labels, ResNet recipe.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (ICCV), and the
official repository's ResNet-50 settings (SGD, global crops 0.14-1, local crops 0.05-0.14).

Notation (paper): student g_theta_s and teacher g_theta_t (backbone + projection head), teacher an
EMA of the student, theta_t <- lambda theta_t + (1 - lambda) theta_s, lambda following a cosine from
0.996 to 1. Teacher outputs are centred (c, an EMA of batch means) and sharpened (tau_t < tau_s):

    P_t(x) = softmax((g_t(x) - c) / tau_t),   P_s(x) = softmax(g_s(x) / tau_s)
    L = mean over pairs (x in global crops, x' in all crops, x' != x) of  -P_t(x) . log P_s(x')
    c <- m c + (1 - m) mean_batch g_t(x)

The teacher sees the 2 global crops only; the student sees all crops. On homogeneous X-rays DINO
is prone to collapse (all images -> one output): the teacher entropy metric (near log K = uniform
collapse, near 0 = one-hot collapse) and the collapse monitor make a flatline visible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.ssl.augment import AugmentConfig, multi_crop
from engine.ssl.common import OptimRecipe, SSLMethod, all_reduce_mean, ema_update_, frozen_copy, l2n, mlp


@dataclass(frozen=True)
class DINOConfig:
    out_dim: int = 65536  # K prototypes (DINO default)
    hidden_dim: int = 2048  # head MLP width (DINO)
    bottleneck_dim: int = 256  # head bottleneck before the weight-normalized last layer (DINO)
    teacher_temp: float = 0.04  # tau_t after warmup (DINO default)
    warmup_teacher_temp: float = 0.04  # tau_t at step 0, linear to teacher_temp (DINO default)
    warmup_teacher_temp_frac: float = 0.0  # fraction of the run the tau_t warmup spans (DINO: 0 or 30/100 epochs)
    freeze_last_layer_frac: float = 0.01  # prototypes get no update for this fraction of the run (DINO: 1/100 epochs)
    head_bn: bool = False  # BatchNorm in the head MLP (DINO's use_bn_in_head)
    student_temp: float = 0.1  # tau_s (DINO)
    center_momentum: float = 0.9  # m (DINO)
    momentum_teacher: float = 0.996  # lambda start, cosine to 1 (DINO; 0.996 at batch 1024)
    n_local_crops: int = 8  # DINO multi-crop: 2 global + 8 local
    global_scale: tuple[float, float] = (0.14, 1.0)  # DINO ResNet-50 recipe
    local_scale: tuple[float, float] = (0.05, 0.14)  # DINO ResNet-50 recipe
    local_size_ratio: float = 96 / 224  # local crop side relative to the global one (96 vs 224 px)
    grad_clip: float = 3.0  # DINO clip_grad


# DINO ResNet-50: SGD lr 0.03 per 256 images, momentum 0.9, weight decay 1e-4 (biases and norms
# excluded, DINO's get_params_groups), 10 warmup epochs, cosine.
RECIPE = OptimRecipe("sgd", base_lr=0.03, weight_decay=1e-4, warmup_epochs=10.0, exclude_bias_bn=True)


class DINOHead(nn.Module):
    """MLP D -> 2048 -> 2048 -> 256 (GELU), L2 normalize, weight-normalized Linear 256 -> K without bias.

    The last layer's weight norm g is fixed to 1 (DINO's norm_last_layer=True), i.e. each prototype
    row of V is L2-normalized in the forward pass.
    """

    def __init__(self, in_dim: int, cfg: DINOConfig) -> None:
        super().__init__()
        self.mlp = mlp([in_dim, cfg.hidden_dim, cfg.hidden_dim, cfg.bottleneck_dim], bn=cfg.head_bn, act=nn.GELU)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.v = nn.Parameter(torch.empty(cfg.out_dim, cfg.bottleneck_dim))  # (K, d) prototypes
        nn.init.trunc_normal_(self.v, std=0.02)

    def bottleneck(self, f: torch.Tensor) -> torch.Tensor:
        return l2n(self.mlp(f))  # (B, d)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(f) @ l2n(self.v).t()  # (B, K)


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              tau_s: float, tau_t: float) -> torch.Tensor:
    """Cross entropy between sharpened, centred teacher crops and student crops (x' != x).

    student: one (B, K) per crop (globals first); teacher: one (B, K) per global crop; center (1, K).
    """
    p_t = [F.softmax((t.float() - center) / tau_t, dim=-1).detach() for t in teacher]  # P_t
    log_p_s = [F.log_softmax(s.float() / tau_s, dim=-1) for s in student]  # log P_s
    total, n = 0.0, 0
    for i, pt in enumerate(p_t):
        for j, lps in enumerate(log_p_s):
            if i == j:  # same view for teacher and student
                continue
            total = total + (-pt * lps).sum(dim=-1).mean()
            n += 1
    return total / n


def teacher_temperature(step: int, total: int, cfg: DINOConfig) -> float:
    """tau_t: linear from warmup_teacher_temp to teacher_temp over the warmup fraction, then constant."""
    n = round(cfg.warmup_teacher_temp_frac * total)
    if step >= n:
        return cfg.teacher_temp
    return cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * step / n


def teacher_momentum(step: int, total: int, base: float) -> float:
    """lambda: cosine from `base` at step 0 to 1 at the last step (DINO's momentum schedule)."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(1, total)) + 1) / 2


class DINO(SSLMethod):
    """Student (backbone + head) trained by SGD, teacher = EMA copy, centre buffer."""

    name = "dino"  # registered in engine/ssl/registry.py (no collapse-control weight: centring and sharpening)
    sync_bn = True

    def __init__(self, backbone: nn.Module, cfg: DINOConfig, aug: AugmentConfig, image_size: int) -> None:
        super().__init__(backbone)
        self.cfg, self.aug, self.size = cfg, aug, image_size
        self.grad_clip = cfg.grad_clip
        self.local_size = max(32, round(image_size * cfg.local_size_ratio))
        self.head = DINOHead(backbone.feat_dim, cfg)
        self.teacher_backbone, self.teacher_head = frozen_copy(self.backbone), frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))  # c
        self._batch_center: torch.Tensor | None = None
        self.tau_t = cfg.warmup_teacher_temp  # this step's teacher temperature (set in before_step)

    def before_step(self, step: int, total: int) -> None:
        self.tau_t = teacher_temperature(step, total, self.cfg)

    def before_update(self, step: int, total: int) -> None:
        # DINO's cancel_gradients_last_layer: the prototypes stay put while the rest of the head and
        # the backbone settle, which the paper found avoids an early collapse.
        if step < round(self.cfg.freeze_last_layer_frac * total):
            self.head.v.grad = None

    def views(self, x01: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        crops = multi_crop(x01, g, self.aug, self.size, self.local_size, self.cfg.n_local_crops,
                           self.cfg.global_scale, self.cfg.local_scale)
        return [self.normalize(c) for c in crops]  # 2 x (B,3,S,S), n_local x (B,3,s,s)

    def _student(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run same-resolution crops as one batch each (DINO's MultiCropWrapper)."""
        b = crops[0].shape[0]
        out = self.head(self.backbone(torch.cat(crops[:2])))  # (2B, K)
        outs = list(out.split(b))
        if len(crops) > 2:
            outs += list(self.head(self.backbone(torch.cat(crops[2:]))).split(b))  # n_local x (B, K)
        return outs

    def forward(self, *crops: torch.Tensor):  # type: ignore[override]
        b = crops[0].shape[0]
        with torch.no_grad():
            t = self.teacher_head(self.teacher_backbone(torch.cat(crops[:2]))).float()  # (2B, K)
        s = self._student(list(crops))
        loss = dino_loss(s, list(t.split(b)), self.center, self.cfg.student_temp, self.tau_t)
        self._batch_center = t.mean(dim=0, keepdim=True)  # (1, K), applied in after_step
        p_t = F.softmax((t - self.center) / self.tau_t, dim=-1)  # (2B, K)
        entropy = -(p_t * torch.log(p_t.clamp_min(1e-12))).sum(-1).mean()
        return loss, {"teacher_entropy": entropy.detach(), "teacher_max_prob": p_t.max(-1).values.mean().detach()}

    @torch.no_grad()
    def after_step(self, step: int, total: int) -> None:
        lam = teacher_momentum(step, total, self.cfg.momentum_teacher)
        ema_update_(self.teacher_backbone, self.backbone, lam)
        ema_update_(self.teacher_head, self.head, lam)
        if self._batch_center is not None:  # c <- m c + (1 - m) mean over the global batch
            bc = all_reduce_mean(self._batch_center)
            self.center.mul_(self.cfg.center_momentum).add_(bc, alpha=1 - self.cfg.center_momentum)
            self._batch_center = None

    def backbone_work(self, views: list[torch.Tensor]) -> list[tuple[torch.Tensor, bool]]:
        glob = torch.cat(views[:2])  # (2B, 3, S, S)
        work = [(glob, True)] + ([(torch.cat(views[2:]), True)] if len(views) > 2 else [])  # student
        return work + [(glob, False)]  # teacher on the global crops

    def head_embedding(self, f: torch.Tensor) -> torch.Tensor:
        return self.head.bottleneck(f)  # (B, 256) before the prototypes

    def ddp_ignored(self) -> list[str]:
        return ["center"]
