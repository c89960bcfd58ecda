"""Pieces every SSL method shares: the method base class, heads, EMA, optimizers, distributed helpers.

An `SSLMethod` is an `nn.Module` that owns a backbone (`.backbone`, a `engine.models.build_backbone`
model whose state_dict is the deliverable) and its method-specific heads. The training loop
(`engine.ssl.loop`) only talks to this interface:

    views = method.views(x01, g)          # x01 (B,1,S,S) float [0,1] on the device -> model inputs
    loss, metrics = ddp_or_method(*views) # forward = the training step's loss (goes through DDP)
    method.after_step(step, total)        # momentum encoders, queues, centres (after optimizer.step)
    z = method.head_embedding(f)          # f = backbone(x): the head space the collapse monitor watches

State that must survive a resume (queues, centres, momentum encoders) lives in registered buffers or
parameters, so `state_dict()` carries it.
"""
from __future__ import annotations

import hashlib
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------------------------
# Method interface


class SSLMethod(nn.Module, ABC):
    """Base class: backbone + heads; see the module docstring for the loop's protocol."""

    name: str = ""
    grad_clip: float | None = None  # per-parameter max grad norm (DINO), None = no clipping
    sync_bn: bool = False  # convert BN to SyncBatchNorm under multi-GPU DDP (the paper's setting)

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.channels_last = False  # set by the loop (CUDA)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """(B,1,S,S) [0,1] -> (B,3,S,S) normalized like every init (engine.models.prepare_batch)."""
        from engine.models import prepare_batch  # (torchvision) only when a model runs

        return prepare_batch(x01, x01.device, channels_last=self.channels_last)

    @abstractmethod
    def views(self, x01: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        """Augmented model inputs for one step, from a (B,1,S,S) [0,1] batch and a device generator."""

    @abstractmethod
    def forward(self, *views: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss scalar, metrics of 0-d tensors). Must not mutate persistent state (see after_step)."""

    def before_step(self, step: int, total: int) -> None:
        """Schedules that the forward of 0-based `step` reads (DINO's teacher temperature)."""

    def before_update(self, step: int, total: int) -> None:
        """Gradient edits between backward and optimizer.step() (DINO freezes its last layer early)."""

    def after_step(self, step: int, total: int) -> None:
        """Updates after optimizer.step() of 0-based `step` (momentum encoders, queue, centre)."""

    @abstractmethod
    def backbone_work(self, views: list[torch.Tensor]) -> list[tuple[torch.Tensor, bool]]:
        """The backbone passes one step of this method cannot avoid: (input (N, 3, s, s), with gradient?).

        bench/pretrain_throughput.py times a plain backbone forward (+ backward where True) on exactly
        these inputs as the 'bare' baseline, so its ratio measures everything else a step costs
        (augmentation, heads, loss, optimizer, momentum updates, data loading, monitor, checkpoints)."""

    def head_embedding(self, f: torch.Tensor) -> torch.Tensor | None:
        """The head-space embedding (B, D') of pooled backbone features f (B, D) that the loss acts on,
        watched by the collapse monitor besides f itself; None for methods without a projection head."""
        return None

    def ddp_ignored(self) -> list[str]:
        """Buffer names DDP must not broadcast every step (large, and updated identically per rank)."""
        return []


def mlp(dims: list[int], bn: bool = False, act: type[nn.Module] = nn.ReLU, last_bn: bool = False) -> nn.Sequential:
    """Linear layers dims[0] -> ... -> dims[-1] with (BN and) act between them; with BN no biases.

    last_bn adds a BatchNorm1d without affine parameters after the last layer (MoCo v3's heads): the
    outputs are centred over the batch, so the component every image shares does not dominate them.
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b, bias=not (bn or (last_bn and i == len(dims) - 2))))
        if i < len(dims) - 2:
            layers += ([nn.BatchNorm1d(b)] if bn else []) + [act()]
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=False))
    return nn.Sequential(*layers)


class _RecomputeWithoutBNUpdate:
    """A stage for `checkpoint` whose second call (the backward recompute) leaves BN running stats alone.

    In training mode BatchNorm normalizes with the batch's own statistics, so the recompute yields the
    same activations whatever the running buffers hold; only the buffer update would repeat, moving
    the running mean/var two momentum steps per optimizer step instead of one (and counting every
    batch twice). The recompute runs with momentum 0 (buffers kept) and num_batches_tracked restored.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.layer, self.calls = layer, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            return self.layer(x)
        bns = [m for m in self.layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               and m.training and m.track_running_stats]
        saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
        for m in bns:
            m.momentum = 0.0  # running <- (1 - 0) running + 0 * batch: unchanged
        try:
            return self.layer(x)
        finally:
            for m, (mom, nbt) in zip(bns, saved):
                m.momentum = mom
                m.num_batches_tracked.copy_(nbt)


def resnet_features(backbone: nn.Module, x: torch.Tensor, grad_checkpointing: bool = False) -> torch.Tensor:
    """Pooled ResNet features (B, D), optionally recomputing layer1..4 in backward to save memory.

    Checkpointing re-runs each stage's forward during backward; the re-run does not update BatchNorm
    running statistics again (`_RecomputeWithoutBNUpdate`), so they match a run without checkpointing.
    """
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(backbone, name)
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(_RecomputeWithoutBNUpdate(layer), x, use_reentrant=False)
        else:
            x = layer(x)
    return torch.flatten(backbone.avgpool(x), 1)


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, m: float) -> None:
    """target <- m * target + (1 - m) * source over parameters (MoCo's momentum encoder, DINO's teacher)."""
    t = [p.data for p in target.parameters()]
    s = [p.data for p in source.parameters()]
    torch._foreach_lerp_(t, s, 1.0 - m)  # t + (1-m)(s - t) in one fused kernel per dtype/device group


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters take no gradient (momentum / teacher encoders)."""
    import copy

    c = copy.deepcopy(module)
    for p in c.parameters():
        p.requires_grad_(False)
    return c


# ----------------------------------------------------------------------------------------------
# Optimizers


@dataclass(frozen=True)
class OptimRecipe:
    """A method's optimizer as its paper ran it; lr = base_lr * global_batch / 256 (Goyal et al. 2017)."""

    optimizer: str  # "sgd" | "lars" | "adamw"
    base_lr: float
    weight_decay: float
    warmup_epochs: float
    exclude_bias_bn: bool  # no weight decay (and no LARS adaptation) for biases and norm parameters
    bias_lr_scale: float = 1.0  # lr multiplier for biases / norm parameters (Barlow Twins: 0.0048 / 0.2)
    final_lr_ratio: float = 0.0  # cosine ends at base * this
    momentum: float = 0.9


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as in the Barlow Twins code: per-group `lars` flag turns off adaptation."""

    def __init__(self, params: Iterable[Any], lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 eta: float = 0.001) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad.add(p, alpha=g["weight_decay"]) if g["weight_decay"] else p.grad
                if g["lars"]:
                    pn, un = torch.norm(p), torch.norm(dp)
                    q = torch.where(pn > 0, torch.where(un > 0, g["eta"] * pn / un, torch.ones_like(pn)), torch.ones_like(pn))
                    dp = dp.mul(q)
                st = self.state[p]
                if "mu" not in st:
                    st["mu"] = torch.zeros_like(p)
                mu = st["mu"].mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


@torch.no_grad()
def clip_grad_per_param_(params: Iterable[nn.Parameter], max_norm: float) -> None:
    """DINO's clip_gradients: scale each parameter's gradient to norm <= max_norm (not the global norm)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)  # one norm per parameter
    scales = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)


def build_optimizer(module: nn.Module, recipe: OptimRecipe, lr: float, weight_decay: float,
                    fused: bool = False) -> torch.optim.Optimizer:
    """Param groups (regular / bias+norm) carrying an `lr_scale` the schedule multiplies in.

    `fused`: torch's fused CUDA kernels for SGD / AdamW (one launch for all parameters; the same update
    up to float rounding); LARS has none.
    """
    kw = {"fused": True} if fused else {}
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if recipe.exclude_bias_bn and p.ndim <= 1 else decay).append(p)
    groups = [dict(params=decay, weight_decay=weight_decay, lr_scale=1.0, lars=True)]
    if no_decay:
        groups.append(dict(params=no_decay, weight_decay=0.0, lr_scale=recipe.bias_lr_scale, lars=False))
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, **kw)
    if recipe.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=recipe.momentum)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), **kw)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; choose sgd, lars or adamw")


def cosine_lr(step: int, total: int, warmup: int, peak: float, final: float = 0.0) -> float:
    """Linear warmup over `warmup` steps, then half-cosine from peak to final (Loshchilov & Hutter 2017)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------------------------
# Distributed (torchrun)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device, bool]:
    """Under torchrun (WORLD_SIZE > 1): join the process group (nccl on CUDA, gloo on CPU).

    Returns (info, device for this rank, whether we created the group and must destroy it).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device, False
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), device, created


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of all ranks and returns this rank's slice.

    Every rank computes the same loss on the gathered batch, so after DDP averages the parameter
    gradients the result equals the single-process gradient of that loss (works on gloo: only
    all_gather and all_reduce are used).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)  # (W*B, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) per rank -> (W*B, ...) in rank order, differentiable; identity in one process."""
    return _GatherWithGrad.apply(x) if world_size() > 1 else x


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) per rank -> (W*B, ...), no gradient (MoCo keys for the queue)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


# ----------------------------------------------------------------------------------------------
# Files and seeds


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors inside a (nested) state: what torch.save will write, give or take a little."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def atomic_torch_save(obj: Any, path: Path, what: str = "the training state") -> None:
    """torch.save through engine.atomic.atomic_path (temp file, fsync, os.replace, folder fsync).

    The free space is checked first (tensor bytes + 10% + 1 MiB). Raises
    `engine.diskspace.DiskFullError` naming the folder, the space needed and what to do when the disk
    is (or fills up) full (torch itself only says "file write failed"); the old file at `path` is
    then left untouched.
    """
    from engine.atomic import atomic_path

    with atomic_path(path, int(_tensor_bytes(obj) * 1.1) + 2**20, what) as tmp:
        torch.save(obj, tmp)


def param_hash(module: nn.Module) -> str:
    """sha256 over every parameter's bytes, in order (are two ranks' weights identical?)."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, step, rank, ...): stateless, so resume is exact."""
    h = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def step_generator(device: torch.device, *parts: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(mix_seed(*parts))
    return g


def l2n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
