"""The Classifier's fast finetune: the last stage + head trained on cached frozen-stage activations.

`FastFinetune`: the frozen stages (stem .. layer3, or DenseNet's features up to transition3) see every
image only V+1 times -- the clean view and V augmented views, drawn once with the same `draw_augment` as
`engine.fewshot.finetune` -- and their activations are kept in memory (float16). Training then runs only
the last stage + head on those activations: on a CPU that removes the forward *and* backward of three
quarters of a ResNet's compute per step, and the cache is shared by every cross-validation fold (a fold
trains on its own rows only). BatchNorm stays in eval mode as in `engine.fewshot.finetune`, so the last
stage computes exactly what it would on the whole network's forward: `LastStage(frozen(x))` on a clean
view equals the backbone's feature (tested).
"""
from __future__ import annotations

import copy
import functools
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.events import OnEvent, check_stop, emit
from engine.fewshot.augment import apply_augment, draw_augment
from engine.models.backbones import prepare_batch
from engine.models.registry import BackboneMeta

Backbone = tuple[nn.Module, BackboneMeta]


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
    aug = draw_augment(gen, n * cfg.views, cfg)  # the same strengths as FinetuneConfig's (same field names)
    aug = aug.view(cfg.views, n, 6) if cfg.views else aug.view(0, n, 6)  # (V, N, 6)
    clean, views = [], [[] for _ in range(cfg.views)]
    total = n * (cfg.views + 1)
    done = 0
    for s in range(0, n, batch_size):
        check_stop(stop)
        xb = x_all[s : s + batch_size].to(device).float().div_(255.0)[:, None]  # (B, 1, S, S)
        clean.append(frozen(prepare_batch(xb, device, meta.mean, meta.std, channels_last=False)).half().cpu())
        for v in range(cfg.views):
            xa = apply_augment(xb, aug[v, s : s + batch_size])
            views[v].append(frozen(prepare_batch(xa, device, meta.mean, meta.std, channels_last=False)).half().cpu())
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


def step_costs(arch: str, image_size: int, batch_size: int, device: torch.device | str = "cpu"
               ) -> tuple[float, float, float]:
    """Measured seconds on this machine (random weights, same shapes): (frozen stages per image,
    one cached last-stage training step at `batch_size`, one full-backbone training step at `batch_size`).
    Memoized per (arch, size, batch, device, torch threads) for the process (`_measure_costs`); the first
    call takes about 1-3 s at 224 px on a 2-core CPU."""
    return _measure_costs(arch, int(image_size), int(batch_size), str(torch.device(device)), torch.get_num_threads())


@functools.lru_cache(maxsize=64)
def _measure_costs(arch: str, image_size: int, batch_size: int, device_name: str, threads: int
                   ) -> tuple[float, float, float]:
    """step_costs' measurement; `threads` only keys the cache (a different thread count is measured again)."""
    import time as _time

    from engine.models.backbones import ARCHS, build_backbone

    del threads
    device = torch.device(device_name)
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
    return t_frozen, t_last, t_full
