"""Few-shot finetuning: backbone + linear head trained by gradient steps on k-shot images.

Defaults (`FinetuneConfig`) follow few-shot finetuning practice: a fixed, small number of steps and
no validation set (there is none at 1-50 shots; Dhillon et al., "A Baseline for Few-Shot Image
Classification", ICLR 2020), a small backbone learning rate with a 100x larger head learning rate
(discriminative finetuning, Howard & Ruder, ULMFiT 2018), AdamW with a cosine decay, and light
augmentation that respects chest anatomy: a small random resized crop and brightness/contrast
jitter, never flips (laterality matters: the heart is on the left). BatchNorm layers keep their
pretrained statistics (eval mode): with 2-32 images per batch, batch statistics are noise.

Modes: `full` (every backbone weight + head), `last_stage` (the last convolutional stage, `layer4`
or `features.denseblock4` + `norm5`, + head), `last_layer` (the head only, trained by gradient
steps on augmented views; the frozen-feature convex version of this is the probe).

`finetune_many` trains several trials (same init, same number of images) *at once*: the trials'
weights are stacked along a new leading dim and the forward is `torch.func.vmap` over
`torch.func.functional_call`. AdamW is elementwise, so one optimizer over the stacked tensors is
exactly T independent optimizers, and every trial draws its batches and augmentations from its own
seeded generator in the same order as when run alone -- batched and sequential runs give the same
models up to floating-point rounding. `double_finetune` first finetunes on an intermediate dataset,
then on the target with a fresh head.

The augmentation lives in `engine.fewshot.augment` and the Classifier's cached last-stage finetune in
`engine.fewshot.fast_finetune`; their names are re-exported here.
"""
from __future__ import annotations

import copy
import math
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vmap

from engine.device import amp_dtype
from engine.events import OnEvent, check_stop, emit
from engine.fewshot.augment import apply_augment, draw_augment
from engine.fewshot.fast_finetune import _Frozen  # noqa: F401  (re-exported: tests import it from here)
from engine.fewshot.fast_finetune import (ActivationCache, FastFinetune, LastStage, assemble_backbone,
                                          build_activation_cache, cached_features, finetune_cached, step_costs)
from engine.models.backbones import DEFAULT_LAYER, prepare_batch
from engine.models.registry import BackboneMeta, load_backbone

__all__ = ["MODES", "ActivationCache", "Backbone", "FastFinetune", "FinetuneConfig", "LastStage", "apply_augment",
           "assemble_backbone", "build_activation_cache", "cached_features", "double_finetune", "draw_augment",
           "finetune", "finetune_cached", "finetune_many", "intermediate_backbone", "predict_logits", "step_costs",
           "trainable"]

MODES = ("full", "last_stage", "last_layer")
Backbone = tuple[nn.Module, BackboneMeta]


@dataclass(frozen=True)
class FinetuneConfig:
    mode: str = "full"  # "full" | "last_stage" | "last_layer" (see module docstring)
    steps: int = 50  # fixed step budget, no early stopping (Dhillon et al. 2020: no validation data)
    batch_size: int = 16  # images per step; all of them when the trial has fewer
    lr_backbone: float = 1e-4  # small: keep pretrained features (Howard & Ruder 2018; Kumar et al. 2022)
    lr_head: float = 1e-2  # 100x the backbone's: the head starts from zero
    weight_decay: float = 1e-4  # AdamW, decoupled
    crop_scale: tuple[float, float] = (0.8, 1.0)  # random resized crop: area fraction kept
    crop_ratio: tuple[float, float] = (0.9, 1.1)  # and aspect ratio (near square: radiographs)
    brightness: float = 0.1  # additive jitter in [0, 1] intensity units
    contrast: float = 0.1  # multiplicative jitter around the image mean
    intermediate_steps: int = 200  # double finetune: steps of the intermediate stage

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"finetune mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("finetune steps and batch_size must be at least 1")


def trainable(name: str, arch: str, mode: str) -> bool:
    """Whether backbone parameter `name` is trained in `mode`."""
    if mode == "full":
        return True
    if mode == "last_layer":
        return False
    last = DEFAULT_LAYER[arch]
    return name.startswith(last + ".") or (arch == "densenet121" and name.startswith("features.norm5."))


def _resolve(init: str | Backbone, device: torch.device, checkpoint_dir: Path | None = None) -> Backbone:
    """A loaded (model on `device`, meta) from a registry name (looked up in `checkpoint_dir`) or a pair."""
    if isinstance(init, str):
        return load_backbone(init, device, checkpoint_dir=checkpoint_dir)
    model, meta = init
    return model.to(device), meta


# --------------------------------------------------------------------------------------- training

def _draw_batch(gen: torch.Generator, n: int, bs: int, cfg: FinetuneConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (B,), augmentation parameters (B, 6)) of one step of one trial: all rows when n <= bs."""
    idx = torch.arange(n) if n <= bs else torch.randperm(n, generator=gen)[:bs]
    return idx, draw_augment(gen, idx.numel(), cfg)


def _stack_trials(images: Sequence[np.ndarray], ys: Sequence[np.ndarray], device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (T, n, S, S), float labels (T, n)) on `device`; ValueError for bad shapes or labels."""
    x_all = torch.stack([torch.as_tensor(np.asarray(a, dtype=np.uint8)) for a in images]).to(device)  # (T, n, S, S)
    y_all = torch.stack([torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in ys]).to(device)  # (T, n)
    if x_all.ndim != 4 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"images must be (n, S, S) uint8 with n labels; got {tuple(x_all.shape[1:])}, {y_all.shape[1]} labels")
    for v in ys:
        if not np.isin(np.asarray(v), (0, 1)).all() or len(np.unique(v)) < 2:
            raise ValueError("finetuning needs 0/1 labels with both classes present")
    return x_all, y_all


@dataclass
class _Stacked:
    """T trials' weights stacked on a new leading dim, over one template module (BN in eval mode)."""

    template: nn.Module
    params: dict[str, torch.Tensor]  # name -> (T, ...), requires_grad where trained
    buffers: dict[str, torch.Tensor]  # name -> (T, ...)
    head_w: torch.Tensor  # (T, D), from zero
    head_b: torch.Tensor  # (T,)

    @classmethod
    def create(cls, base: nn.Module, meta: BackboneMeta, mode: str, T: int, device: torch.device) -> "_Stacked":
        template = copy.deepcopy(base).to(device).eval()  # BN keeps pretrained statistics
        params = {k: v.detach().unsqueeze(0).repeat(T, *([1] * v.ndim)).requires_grad_(trainable(k, meta.arch, mode))
                  for k, v in template.named_parameters()}
        buffers = {k: v.detach().unsqueeze(0).repeat(T, *([1] * v.ndim)) for k, v in template.named_buffers()}
        D = meta.feat_dim
        return cls(template, params, buffers, torch.zeros(T, D, device=device, requires_grad=True),
                   torch.zeros(T, device=device, requires_grad=True))

    def optimizer(self, cfg: FinetuneConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """AdamW (head lr, backbone lr for the trained weights) with a cosine decay over cfg.steps."""
        groups = [{"params": [self.head_w, self.head_b], "lr": cfg.lr_head}]
        bb = [p for p in self.params.values() if p.requires_grad]
        if bb:
            groups.append({"params": bb, "lr": cfg.lr_backbone})
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / cfg.steps)))
        return opt, sched

    def logits(self, xb: torch.Tensor, vectorize: bool) -> torch.Tensor:
        """Normalized views (T, B, 3, S, S) -> logits (T, B): vmapped over trials, or trial 0 alone."""
        def features(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, (p, b), (x,))  # (B, 3, S, S) -> (B, D)

        if vectorize:
            f = vmap(features)(self.params, self.buffers, xb)  # (T, B, D)
        else:
            f = features({k: v[0] for k, v in self.params.items()}, {k: v[0] for k, v in self.buffers.items()},
                         xb[0])[None]
        return torch.einsum("tbd,td->tb", f.float(), self.head_w) + self.head_b[:, None]  # (T, B)

    def unstack(self, D: int, device: torch.device) -> list[tuple[nn.Module, nn.Linear]]:
        """One (backbone in eval mode, head nn.Linear(D, 1)) per trial, gradients off."""
        out = []
        for t in range(self.head_w.shape[0]):
            model = copy.deepcopy(self.template)
            model.load_state_dict({**{k: v[t].detach() for k, v in self.params.items()},
                                   **{k: v[t] for k, v in self.buffers.items()}})
            model.requires_grad_(False)
            head = nn.Linear(D, 1).to(device)
            with torch.no_grad():
                head.weight.copy_(self.head_w[t].detach()[None])
                head.bias.copy_(self.head_b[t].detach().reshape(1))
            out.append((model.eval(), head.requires_grad_(False)))
        return out


def _augmented_batch(gens: list[torch.Generator], x_all: torch.Tensor, y_all: torch.Tensor, bs: int,
                     cfg: FinetuneConfig, meta: BackboneMeta) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's batch of every trial, each from its own generator: (views (T, B, 3, S, S), labels (T, B))."""
    T, n, S = x_all.shape[0], x_all.shape[1], x_all.shape[2:]
    draws = [_draw_batch(g, n, bs, cfg) for g in gens]
    idx = torch.stack([d[0] for d in draws]).to(x_all.device)  # (T, B)
    aug = torch.cat([d[1] for d in draws])  # (T*B, 6)
    xb = torch.gather(x_all, 1, idx[:, :, None, None].expand(-1, -1, *S))  # (T, B, S, S)
    yb = torch.gather(y_all, 1, idx)  # (T, B)
    xb = apply_augment(xb.reshape(T * bs, 1, *S).float().div_(255.0), aug)  # (T*B, 1, S, S)
    xb = prepare_batch(xb, x_all.device, meta.mean, meta.std, channels_last=False)  # (T*B, 3, S, S)
    return xb.reshape(T, bs, 3, *S), yb


def _train(
    base: nn.Module,
    meta: BackboneMeta,
    images: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    cfg: FinetuneConfig,
    device: torch.device,
    seeds: Sequence[int],
    on_event: OnEvent | None,
    stop: threading.Event | None,
    vectorize: bool,
) -> list[tuple[nn.Module, nn.Linear]]:
    """Train T trials (stacked weights, one AdamW over them = T independent AdamWs) for cfg.steps steps."""
    x_all, y_all = _stack_trials(images, ys, device)
    bs = min(cfg.batch_size, x_all.shape[1])
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    w = _Stacked.create(base, meta, cfg.mode, len(images), device)
    opt, sched = w.optimizer(cfg)
    cuda = device.type == "cuda"
    dtype = amp_dtype(device)
    autocast = torch.autocast("cuda", dtype=dtype) if cuda and dtype is not None else nullcontext()
    scaler = torch.amp.GradScaler("cuda") if cuda and dtype == torch.float16 else None
    for step in range(cfg.steps):
        check_stop(stop)
        xb, yb = _augmented_batch(gens, x_all, y_all, bs, cfg, meta)
        with autocast:
            logits = w.logits(xb, vectorize)  # (T, B)
        per_trial = F.binary_cross_entropy_with_logits(logits, yb, reduction="none").mean(dim=1)  # (T,)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(per_trial.sum()).backward()
            scaler.step(opt)
            scaler.update()
        else:
            per_trial.sum().backward()
            opt.step()
        sched.step()
        emit(on_event, step=step + 1, total=cfg.steps, kind="metrics",
             metrics={"loss": float(per_trial.detach().mean())}, message=f"finetune step {step + 1}/{cfg.steps}")
    return w.unstack(meta.feat_dim, device)


def finetune_many(
    init: str | Backbone,
    images: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    cfg: FinetuneConfig,
    device: torch.device | str,
    seeds: Sequence[int],
    on_event: OnEvent | None = None,
    stop: threading.Event | None = None,
    batched: bool = True,
    checkpoint_dir: Path | None = None,
) -> list[tuple[nn.Module, nn.Linear]]:
    """Finetune one trial per (images[t] uint8 (n, S, S), ys[t] (n,) 0/1, seeds[t]); all from `init`.

    `batched=True` trains all trials in one vmapped pass (they must have the same n and S);
    otherwise one after the other. Returns [(backbone in eval mode, head nn.Linear(D, 1))] on `device`.
    Raises Cancelled when `stop` is set (between steps; unfinished trials are discarded).
    """
    device = torch.device(device)
    if not (len(images) == len(ys) == len(seeds)) or not images:
        raise ValueError("finetune_many needs one label array and one seed per image array (and at least one trial)")
    base, meta = _resolve(init, device, checkpoint_dir)
    if batched and len(images) > 1:
        shapes = {tuple(np.asarray(a).shape) for a in images}
        if len(shapes) == 1:
            return _train(base, meta, images, ys, cfg, device, seeds, on_event, stop, vectorize=True)
    out = []
    for t in range(len(images)):
        out += _train(base, meta, images[t : t + 1], ys[t : t + 1], cfg, device, seeds[t : t + 1], on_event, stop,
                      vectorize=False)
    return out


def finetune(
    init: str | Backbone,
    images: np.ndarray,
    y: np.ndarray,
    cfg: FinetuneConfig,
    device: torch.device | str,
    seed: int,
    on_event: OnEvent | None = None,
    stop: threading.Event | None = None,
    checkpoint_dir: Path | None = None,
) -> tuple[nn.Module, nn.Linear]:
    """Finetune `init` (a registry name, looked up in `checkpoint_dir`, or a loaded (model, meta)) on uint8
    (n, S, S) images, labels y (n,). Returns (backbone in eval mode, head nn.Linear(D, 1))."""
    return finetune_many(init, [images], [y], cfg, device, [seed], on_event, stop, batched=False,
                         checkpoint_dir=checkpoint_dir)[0]


def double_finetune(
    init: str | Backbone,
    intermediate_images: np.ndarray,
    intermediate_y: np.ndarray,
    images: np.ndarray,
    y: np.ndarray,
    cfg: FinetuneConfig,
    device: torch.device | str,
    seed: int,
    on_event: OnEvent | None = None,
    stop: threading.Event | None = None,
    checkpoint_dir: Path | None = None,
) -> tuple[nn.Module, nn.Linear]:
    """Finetune on an intermediate dataset (cfg.intermediate_steps, full mode), then on the target
    with a fresh head (cfg as given). Returns (backbone, head) of the second stage."""
    device = torch.device(device)
    model, meta = intermediate_backbone(init, intermediate_images, intermediate_y, cfg, device, seed, on_event, stop,
                                        checkpoint_dir)
    return finetune((model, meta), images, y, cfg, device, seed, on_event, stop)


def intermediate_backbone(
    init: str | Backbone,
    images: np.ndarray,
    y: np.ndarray,
    cfg: FinetuneConfig,
    device: torch.device | str,
    seed: int,
    on_event: OnEvent | None = None,
    stop: threading.Event | None = None,
    checkpoint_dir: Path | None = None,
) -> Backbone:
    """Stage one of a double finetune: the whole backbone trained on the intermediate task."""
    device = torch.device(device)
    base, meta = _resolve(init, device, checkpoint_dir)
    stage1 = FinetuneConfig(**{**cfg.__dict__, "mode": "full", "steps": cfg.intermediate_steps})
    model, _ = finetune((base, meta), images, y, stage1, device, seed, on_event, stop)
    return model, meta


@torch.inference_mode()
def predict_logits(
    backbone: nn.Module, head: nn.Linear, array: np.ndarray, device: torch.device | str,
    mean: Sequence[float], std: Sequence[float], batch_size: int = 64, rows: np.ndarray | None = None,
) -> np.ndarray:
    """Logits (N,) of backbone + head on uint8 (N, S, S) images (or `array[rows]`)."""
    from engine.fewshot.features import forward_features

    device = torch.device(device)
    out = [head(torch.from_numpy(f).to(device)).float().cpu().numpy()[:, 0]
           for _, f in forward_features(backbone, array, device, tuple(mean), tuple(std), batch_size, rows)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
