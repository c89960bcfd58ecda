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
"""
from __future__ import annotations

import copy
import math
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vmap

from engine.device import amp_dtype
from engine.events import OnEvent, check_stop, emit
from engine.models.backbones import DEFAULT_LAYER
from engine.models.registry import BackboneMeta, load_backbone

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


def _resolve(init: str | Backbone, device: torch.device) -> Backbone:
    if isinstance(init, str):
        return load_backbone(init, device)
    model, meta = init
    return model.to(device), meta


# --------------------------------------------------------------------------------------- augmentation

def draw_augment(gen: torch.Generator, b: int, cfg: FinetuneConfig) -> torch.Tensor:
    """(b, 6) per-image augmentation parameters: crop w, h, centre x, y (normalized), contrast, brightness."""
    u = torch.rand(b, 6, generator=gen, dtype=torch.float64)  # (b, 6)
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
    """x float (N, 1, S, S) in [0, 1], p (N, 6) from `draw_augment` -> augmented (N, 1, S, S)."""
    n = x.shape[0]
    p = p.to(x.device)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)  # (N, 2, 3) crop as an affine map
    theta[:, 0, 0], theta[:, 1, 1] = p[:, 0], p[:, 1]
    theta[:, 0, 2], theta[:, 1, 2] = p[:, 2], p[:, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, S, S, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    m = x.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    x = (x - m) * p[:, 4].view(n, 1, 1, 1) + m + p[:, 5].view(n, 1, 1, 1)
    return x.clamp_(0.0, 1.0)


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, 1, S, S) in [0, 1] -> (N, 3, S, S) normalized."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x.expand(-1, 3, -1, -1) - m) / s


# --------------------------------------------------------------------------------------- training

def _draw_batch(gen: torch.Generator, n: int, bs: int, cfg: FinetuneConfig) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.arange(n) if n <= bs else torch.randperm(n, generator=gen)[:bs]
    return idx, draw_augment(gen, idx.numel(), cfg)


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
) -> list[tuple[nn.Module, nn.Linear]]:
    """Finetune one trial per (images[t] uint8 (n, S, S), ys[t] (n,) 0/1, seeds[t]); all from `init`.

    `batched=True` trains all trials in one vmapped pass (they must have the same n and S);
    otherwise one after the other. Returns [(backbone in eval mode, head nn.Linear(D, 1))] on `device`.
    Raises Cancelled when `stop` is set (between steps; unfinished trials are discarded).
    """
    device = torch.device(device)
    if not (len(images) == len(ys) == len(seeds)) or not images:
        raise ValueError("finetune_many needs one label array and one seed per image array (and at least one trial)")
    base, meta = _resolve(init, device)
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
) -> tuple[nn.Module, nn.Linear]:
    """Finetune `init` (a registry name or a loaded (model, meta)) on uint8 (n, S, S) images, labels y (n,)."""
    return finetune_many(init, [images], [y], cfg, device, [seed], on_event, stop, batched=False)[0]


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
) -> tuple[nn.Module, nn.Linear]:
    """Finetune on an intermediate dataset (cfg.intermediate_steps, full mode), then on the target
    with a fresh head (cfg as given). Returns (backbone, head) of the second stage."""
    device = torch.device(device)
    model, meta = intermediate_backbone(init, intermediate_images, intermediate_y, cfg, device, seed, on_event, stop)
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
) -> Backbone:
    """Stage one of a double finetune: the whole backbone trained on the intermediate task."""
    device = torch.device(device)
    base, meta = _resolve(init, device)
    stage1 = FinetuneConfig(**{**cfg.__dict__, "mode": "full", "steps": cfg.intermediate_steps})
    model, _ = finetune((base, meta), images, y, stage1, device, seed, on_event, stop)
    return model, meta


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
    T = len(images)
    x_all = torch.stack([torch.as_tensor(np.asarray(a, dtype=np.uint8)) for a in images]).to(device)  # (T, n, S, S)
    y_all = torch.stack([torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in ys]).to(device)  # (T, n)
    if x_all.ndim != 4 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"images must be (n, S, S) uint8 with n labels; got {tuple(x_all.shape[1:])}, {y_all.shape[1]} labels")
    for v in ys:
        if not np.isin(np.asarray(v), (0, 1)).all() or len(np.unique(v)) < 2:
            raise ValueError("finetuning needs 0/1 labels with both classes present")
    n = x_all.shape[1]
    bs = min(cfg.batch_size, n)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]

    template = copy.deepcopy(base).to(device).eval()  # BN keeps pretrained statistics
    names = [k for k, _ in template.named_parameters()]
    train_mask = {k: trainable(k, meta.arch, cfg.mode) for k in names}
    params = {
        k: v.detach().unsqueeze(0).repeat(T, *([1] * v.ndim)).requires_grad_(train_mask[k])  # (T, ...)
        for k, v in template.named_parameters()
    }
    buffers = {k: v.detach().unsqueeze(0).repeat(T, *([1] * v.ndim)) for k, v in template.named_buffers()}
    D = meta.feat_dim
    head_w = torch.zeros(T, D, device=device, requires_grad=True)  # (T, D)
    head_b = torch.zeros(T, device=device, requires_grad=True)  # (T,)

    groups = [{"params": [head_w, head_b], "lr": cfg.lr_head}]
    bb = [p for k, p in params.items() if train_mask[k]]
    if bb:
        groups.append({"params": bb, "lr": cfg.lr_backbone})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / cfg.steps)))

    def features(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(template, (p, b), (x,))  # (B, 3, S, S) -> (B, D)

    cuda = device.type == "cuda"
    dtype = amp_dtype(device)
    autocast = torch.autocast("cuda", dtype=dtype) if cuda and dtype is not None else nullcontext()
    scaler = torch.amp.GradScaler("cuda") if cuda and dtype == torch.float16 else None
    for step in range(cfg.steps):
        check_stop(stop)
        draws = [_draw_batch(g, n, bs, cfg) for g in gens]
        idx = torch.stack([d[0] for d in draws]).to(device)  # (T, B)
        aug = torch.cat([d[1] for d in draws])  # (T*B, 6)
        xb = torch.gather(x_all, 1, idx[:, :, None, None].expand(-1, -1, *x_all.shape[2:]))  # (T, B, S, S)
        yb = torch.gather(y_all, 1, idx)  # (T, B)
        xb = apply_augment(xb.reshape(T * bs, 1, *x_all.shape[2:]).float().div_(255.0), aug)  # (T*B, 1, S, S)
        xb = _normalize(xb, meta.mean, meta.std).reshape(T, bs, 3, *x_all.shape[2:])  # (T, B, 3, S, S)
        with autocast:
            if vectorize:
                f = vmap(features)(params, buffers, xb)  # (T, B, D)
            else:
                f = features({k: v[0] for k, v in params.items()}, {k: v[0] for k, v in buffers.items()}, xb[0])[None]
            logits = torch.einsum("tbd,td->tb", f.float(), head_w) + head_b[:, None]  # (T, B)
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

    out = []
    for t in range(T):
        model = copy.deepcopy(template)
        model.load_state_dict({**{k: v[t].detach() for k, v in params.items()},
                               **{k: v[t] for k, v in buffers.items()}})
        model.requires_grad_(False)
        head = nn.Linear(D, 1).to(device)
        with torch.no_grad():
            head.weight.copy_(head_w[t].detach()[None])
            head.bias.copy_(head_b[t].detach().reshape(1))
        out.append((model.eval(), head.requires_grad_(False)))
    return out


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


# --------------------------------------------------------------------------------------- cached last stage
#
# The classifier's finetune (`FastFinetune`): the frozen stages (stem .. layer3, or DenseNet's features up
# to transition3) see every image only V+1 times -- the clean view and V augmented views, drawn once with
# the same `draw_augment` as above -- and their activations are kept in memory (float16). Training then
# runs only the last stage + head on those activations: on a CPU that removes the forward *and* backward
# of three quarters of a ResNet's compute per step, and the cache is shared by every cross-validation
# fold (a fold trains on its own rows only). BatchNorm stays in eval mode as above, so the last stage
# computes exactly what it would on the whole network's forward: `last_stage_model(...)` on a clean view
# equals the backbone's feature (tested).


@dataclass(frozen=True)
class FastFinetune:
    """Settings of the cached last-stage finetune used by the Classifier (see the section comment)."""

    steps: int = 50  # as FinetuneConfig: fixed budget, no validation set (Dhillon et al. 2020)
    batch_size: int = 16
    lr_backbone: float = 1e-4  # the last stage, as FinetuneConfig.lr_backbone
    lr_head: float = 1e-2
    weight_decay: float = 1e-4
    views: int = 4  # augmented views per image cached besides the clean one; a step picks one per image
    crop_scale: tuple[float, float] = (0.8, 1.0)  # the augmentation of FinetuneConfig
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.1
    contrast: float = 0.1

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.views < 0:
            raise ValueError("fast finetune needs steps >= 1, batch_size >= 1 and views >= 0")


class _Frozen(nn.Module):
    """The frozen stages of a backbone: (B, 3, S, S) normalized -> the last stage's input activations."""

    def __init__(self, model: nn.Module, arch: str):
        super().__init__()
        self.model, self.arch = model, arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.arch.startswith("resnet"):
            x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            return m.layer3(m.layer2(m.layer1(x)))  # (B, C3, S/16, S/16)
        f = m.features
        for name, mod in f.named_children():
            if name == "denseblock4":
                break
            x = mod(x)
        return x  # (B, C, S/32, S/32)


class LastStage(nn.Module):
    """The trainable part: last-stage input activations -> pooled features (B, D), as in the backbone."""

    def __init__(self, model: nn.Module, arch: str):
        super().__init__()
        self.arch = arch
        if arch.startswith("resnet"):
            self.stage = model.layer4
            self.norm = None
        else:
            self.stage = model.features.denseblock4
            self.norm = model.features.norm5

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.stage(z)
        if self.norm is not None:
            z = F.relu(self.norm(z))
        return torch.flatten(F.adaptive_avg_pool2d(z, 1), 1)  # (B, D)


@dataclass
class ActivationCache:
    """Frozen-stage activations: `clean` (N, C, h, w) and `views` (V, N, C, h, w), float16 on the CPU."""

    clean: torch.Tensor
    views: torch.Tensor
    seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.clean.numel() + self.views.numel()) * self.clean.element_size()


@torch.inference_mode()
def build_activation_cache(
    backbone: Backbone, images: np.ndarray, cfg: FastFinetune, device: torch.device | str, seed: int = 0,
    batch_size: int = 32, on_event: OnEvent | None = None, stop: threading.Event | None = None,
) -> ActivationCache:
    """Run the frozen stages once per image and view. images uint8 (N, S, S); returns an ActivationCache
    (float16, CPU). View v of image i uses augmentation parameters drawn from `seed` (reproducible).
    Raises Cancelled when `stop` is set."""
    import time as _time

    t0 = _time.perf_counter()
    device = torch.device(device)
    model, meta = backbone
    frozen = _Frozen(model.to(device).eval(), meta.arch)
    x_all = torch.as_tensor(np.asarray(images, dtype=np.uint8))  # (N, S, S)
    n = x_all.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    aug = draw_augment(gen, n * cfg.views, FinetuneConfig(crop_scale=cfg.crop_scale, crop_ratio=cfg.crop_ratio,
                                                          brightness=cfg.brightness, contrast=cfg.contrast))
    aug = aug.view(cfg.views, n, 6) if cfg.views else aug.view(0, n, 6)  # (V, N, 6)
    clean, views = [], [[] for _ in range(cfg.views)]
    total = n * (cfg.views + 1)
    done = 0
    for s in range(0, n, batch_size):
        check_stop(stop)
        xb = x_all[s : s + batch_size].to(device).float().div_(255.0)[:, None]  # (B, 1, S, S)
        clean.append(frozen(_normalize(xb, meta.mean, meta.std)).half().cpu())
        for v in range(cfg.views):
            xa = apply_augment(xb, aug[v, s : s + batch_size])
            views[v].append(frozen(_normalize(xa, meta.mean, meta.std)).half().cpu())
        done += xb.shape[0] * (cfg.views + 1)
        emit(on_event, step=done, total=total, kind="log",
             message=f"frozen stages: {done} of {total} image views ({cfg.views} augmented + 1 clean per image)")
    c = torch.cat(clean)  # (N, C, h, w)
    vv = torch.stack([torch.cat(v) for v in views]) if cfg.views else c.new_zeros((0, *c.shape))
    return ActivationCache(c, vv, _time.perf_counter() - t0)


def finetune_cached(
    backbone: Backbone, cache: ActivationCache, rows: np.ndarray, y: np.ndarray, cfg: FastFinetune,
    device: torch.device | str, seed: int, stop: threading.Event | None = None,
) -> tuple[LastStage, nn.Linear]:
    """Train a copy of the last stage + a zero-initialized head on cached activations of `rows` (labels y,
    0/1, both classes). AdamW, cosine decay, BatchNorm in eval mode, each step a batch of `cfg.batch_size`
    rows (all when fewer), each row at a random one of its V+1 views. Returns (LastStage, head) on `device`.
    Raises ValueError for one-class labels, Cancelled when `stop` is set (between steps)."""
    device = torch.device(device)
    model, meta = backbone
    rows = np.asarray(rows, dtype=np.int64)
    y = np.asarray(y, dtype=np.float32).ravel()
    if rows.shape[0] != y.shape[0] or len(np.unique(y)) < 2 or not np.isin(y, (0, 1)).all():
        raise ValueError("finetuning needs one 0/1 label per row with both classes present")
    stage = LastStage(copy.deepcopy(model), meta.arch).to(device).eval()  # BN keeps pretrained statistics
    stage.requires_grad_(True)
    head = nn.Linear(meta.feat_dim, 1).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW([{"params": list(head.parameters()), "lr": cfg.lr_head},
                             {"params": [p for p in stage.parameters()], "lr": cfg.lr_backbone}],
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / cfg.steps)))
    gen = torch.Generator().manual_seed(int(seed))
    n, bs = len(rows), min(cfg.batch_size, len(rows))
    yt = torch.from_numpy(y).to(device)
    rows_t = torch.from_numpy(rows)
    for _ in range(cfg.steps):
        check_stop(stop)
        pick = torch.arange(n) if n <= bs else torch.randperm(n, generator=gen)[:bs]  # (B,)
        view = torch.randint(0, cfg.views + 1, (pick.numel(),), generator=gen)  # 0 = clean, v = views[v-1]
        r = rows_t[pick]
        z = torch.where((view == 0)[:, None, None, None], cache.clean[r],
                        cache.views[(view - 1).clamp(min=0), r] if cfg.views else cache.clean[r])
        logits = head(stage(z.to(device).float()))[:, 0]  # (B,)
        loss = F.binary_cross_entropy_with_logits(logits, yt[pick.to(device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    stage.requires_grad_(False)
    return stage.eval(), head.requires_grad_(False).eval()


@torch.inference_mode()
def cached_features(stage: LastStage, cache: ActivationCache, rows: np.ndarray | None, device: torch.device | str,
                    batch_size: int = 64) -> np.ndarray:
    """Pooled features (len(rows), D) float32 of the clean views of `rows` (all when None) through `stage`."""
    device = torch.device(device)
    rows = np.arange(len(cache)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = [stage(cache.clean[torch.from_numpy(rows[i : i + batch_size])].to(device).float()).float().cpu().numpy()
           for i in range(0, len(rows), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def assemble_backbone(backbone: Backbone, stage: LastStage) -> nn.Module:
    """A full backbone: `backbone`'s frozen stages with the trained last stage (a copy; eval mode)."""
    model, meta = backbone
    out = copy.deepcopy(model).cpu().eval()
    trained = LastStage(out, meta.arch)
    trained.load_state_dict({k: v.detach().cpu() for k, v in stage.state_dict().items()})
    return out.requires_grad_(False)


_COST_CACHE: dict[tuple, tuple[float, float, float]] = {}


def step_costs(arch: str, image_size: int, batch_size: int, device: torch.device | str = "cpu"
               ) -> tuple[float, float, float]:
    """Measured seconds on this machine (random weights, same shapes): (frozen stages per image,
    one cached last-stage training step at `batch_size`, one full-backbone training step at `batch_size`).
    Cached per process; takes about 1-3 s at 224 px on a 2-core CPU."""
    import time as _time

    from engine.models.backbones import ARCHS, build_backbone

    device = torch.device(device)
    key = (arch, int(image_size), int(batch_size), str(device), torch.get_num_threads())
    if key in _COST_CACHE:
        return _COST_CACHE[key]
    torch.manual_seed(0)
    model = build_backbone(arch).to(device).eval()
    frozen, stage = _Frozen(model, arch), LastStage(model, arch)
    head = nn.Linear(ARCHS[arch], 1).to(device)
    x = torch.rand(batch_size, 3, image_size, image_size, device=device)

    def timed(fn) -> float:
        fn()  # warm-up (allocator, kernels)
        t0 = _time.perf_counter()
        fn()
        return _time.perf_counter() - t0

    with torch.inference_mode():
        z = frozen(x[:2]).clone()
        t_frozen = timed(lambda: frozen(x[:2])) / 2
    zb = z.repeat((batch_size + 1) // 2, 1, 1, 1)[:batch_size]

    def last_step() -> None:
        loss = head(stage(zb)).sum()
        loss.backward()

    def full_step() -> None:
        loss = head(model(x)).sum()
        loss.backward()

    t_last = timed(last_step)
    t_full = timed(full_step)
    model.zero_grad(set_to_none=True)
    _COST_CACHE[key] = (t_frozen, t_last, t_full)
    return _COST_CACHE[key]
