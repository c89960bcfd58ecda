"""One SSL pretraining loop for every method: resumable, AMP, channels_last, DDP under torchrun.

    pretrain(images, cfg, out_name, device, run_dir, on_event=None, stop=None, resume=False,
             checkpoint_dir=None, data_fingerprint="") -> Path   # checkpoints/<out_name>.safetensors
    pretrain_from_data(data, cfg, out_name, ...)                  # manifest CSV or folder -> uint8 cache

Design decisions (docs/design.md, "SSL pretraining"):

- Data: `images` is the (N, S, S) uint8 resolution cache (a memmap). Each step reads its batch in a
  prefetch thread, moves uint8 to the device and augments there (engine.ssl.augment).
- Batch: `cfg.batch_size` is the *global* batch; under torchrun each of W ranks takes batch/W images
  of a shared seeded permutation per epoch, so the run means the same on 1 or 8 GPUs. Steps per epoch
  = N // batch (last partial batch dropped). lr = cfg.lr or recipe.base_lr * batch / 256.
- Randomness is stateless: the epoch order is a function of (seed, epoch), the augmentation
  generator of (seed, step, rank). A resume therefore continues exactly; the state still records the
  current order and torch's RNG states.
- State: `run_dir/state.pt` (torch.save, read back with weights_only=True) holds model (incl. queue,
  centre, momentum encoders), optimizer, scaler, step, RNG, order, loss and collapse history. It is
  written atomically every `save_every_steps`, when stopped and at the end; only rank 0 writes.
- A non-finite loss stops the run before the optimizer step with NonFiniteLossError; state.pt keeps
  the last periodic (good) state.
- Events (rank 0): every step kind="progress" with metrics loss, lr, epoch and the method's own; every
  `monitor_every_steps` kind="metrics" with collapse_* metrics; kind="warning" on collapse.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from engine.device import amp_dtype, describe, resolve_device
from engine.diskspace import DiskFullError
from engine.events import Cancelled, OnEvent, emit
from engine.models import build_backbone, load_backbone, save_backbone
from engine.ssl import barlow_twins, dino, masked_contrastive, moco_v2, spark
from engine.ssl.augment import AugmentConfig
from engine.ssl.common import (
    DistInfo, OptimRecipe, SSLMethod, atomic_torch_save, build_optimizer, clip_grad_per_param_, cosine_lr,
    init_distributed, param_hash, step_generator,
)
from engine.ssl.monitor import (
    ERANK_MIN, STD_MIN, CollapseControl, CollapseController, CollapseMonitor, metric_definitions,
    parse_collapse_control, sample_indices,
)

# name -> (method config class, module class, optimizer recipe)
METHODS: dict[str, tuple[type, type[SSLMethod], OptimRecipe]] = {
    "moco_v2": (moco_v2.MoCoConfig, moco_v2.MoCoV2, moco_v2.RECIPE),
    "barlow_twins": (barlow_twins.BarlowConfig, barlow_twins.BarlowTwins, barlow_twins.RECIPE),
    "spark": (spark.SparKConfig, spark.SparK, spark.RECIPE),
    "dino": (dino.DINOConfig, dino.DINO, dino.RECIPE),
    "masked_contrastive": (masked_contrastive.MaskedContrastiveConfig, masked_contrastive.MaskedContrastive,
                           masked_contrastive.RECIPE),
}
SSL_ARCHS = ("resnet18", "resnet50")
# Config fields a resume may change (they do not alter the trajectory).
_RESUME_FREE = {"save_every_steps", "monitor_every_steps", "monitor_images", "collapse_std_min", "collapse_erank_min"}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the step and where the last good state is."""


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run. Method defaults follow each paper (see engine/ssl/<method>.py)."""

    method: str = "moco_v2"
    arch: str = "resnet18"
    epochs: int = 100
    batch_size: int = 256  # global batch over all ranks
    image_size: int = 224
    lr: float | None = None  # peak lr; None = recipe base_lr * batch_size / 256
    weight_decay: float | None = None  # None = recipe's
    warmup_epochs: float | None = None  # None = recipe's (capped at 10% of a short run)
    seed: int = 0
    max_steps: int | None = None  # cap on total steps (the cosine schedule spans the capped run)
    save_every_steps: int = 500
    monitor_every_steps: int = 100
    monitor_images: int = 256
    collapse_std_min: float = STD_MIN  # collapse warning below this normalized std (engine.ssl.monitor)
    collapse_erank_min: float = ERANK_MIN  # collapse warning below this effective rank
    amp: bool | None = None  # None = on for CUDA (bf16, else fp16 + GradScaler), off on CPU
    channels_last: bool | None = None  # None = on for CUDA
    init: str = "random"  # "random" | "imagenet" (MoCo-transfer: start SSL from ImageNet weights)
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    method_config: Any = None  # MoCoConfig | BarlowConfig | SparKConfig | DINOConfig | ...; None = defaults
    # Adaptive collapse control (engine.ssl.monitor.CollapseControl; "erank:TARGET" or a dict also
    # accepted): None = off. Acts at every collapse-monitor reading.
    collapse_control: CollapseControl | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown SSL method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.arch not in SSL_ARCHS:
            raise ValueError(f"SSL pretraining supports {', '.join(SSL_ARCHS)}, not {self.arch!r}")
        if self.init not in ("random", "imagenet"):
            raise ValueError(f"init must be 'random' or 'imagenet', not {self.init!r}")
        for name, lo in (("epochs", 1), ("batch_size", 2), ("image_size", 32), ("save_every_steps", 1),
                         ("monitor_every_steps", 0), ("monitor_images", 2)):
            if getattr(self, name) < lo:
                raise ValueError(f"{name} must be >= {lo} (got {getattr(self, name)})")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (got {self.max_steps})")
        cls = METHODS[self.method][0]
        if self.method_config is None:
            object.__setattr__(self, "method_config", cls())
        elif isinstance(self.method_config, dict):
            object.__setattr__(self, "method_config", _from_dict(cls, self.method_config))
        elif type(self.method_config) is not cls:
            raise ValueError(f"method_config for {self.method} must be a {cls.__name__}, "
                             f"not {type(self.method_config).__name__}")
        if isinstance(self.aug, dict):
            object.__setattr__(self, "aug", _from_dict(AugmentConfig, self.aug))
        patch = getattr(self.method_config, "patch", None)
        if patch and self.image_size % patch:
            raise ValueError(f"{self.method} needs image_size divisible by its patch {patch} "
                             f"(got {self.image_size}); use e.g. --image-size {max(1, self.image_size // patch) * patch}")
        object.__setattr__(self, "collapse_control", parse_collapse_control(self.collapse_control))
        if self.collapse_control is not None:
            module_cls = METHODS[self.method][1]
            if getattr(module_cls, "control_knob", None) is None:
                raise ValueError("--collapse-control: " + getattr(
                    module_cls, "control_refusal", f"{self.method} has no regularization weight to adjust"))
            if self.monitor_every_steps < 1:
                raise ValueError("--collapse-control acts on the collapse monitor's readings, but the monitor is off "
                                 "(monitor_every_steps 0); set --monitor-every N (e.g. 25)")

    @property
    def recipe(self) -> OptimRecipe:
        return METHODS[self.method][2]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        """From `to_dict()` output or JSON job params (lists become tuples, nested configs dicts)."""
        return _from_dict(cls, d)


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; valid: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _check_name(name: str) -> None:
    """The one name validator (engine.names, kind "checkpoint"); raises InvalidNameError (a ValueError)."""
    from engine.names import InvalidNameError, check_name

    try:
        if check_name(name, "checkpoint") != name:
            raise InvalidNameError("surrounding spaces")
    except InvalidNameError as e:
        raise InvalidNameError(f"invalid output name {name!r}: {e}") from None


def data_fingerprint(keys: list[str], size: int) -> str:
    """Content hash of an image set at a resolution (from the cache's per-image keys)."""
    return hashlib.sha256(("|".join(keys) + f"@{size}").encode()).hexdigest()[:16]


def build_method(cfg: PretrainConfig, backbone: nn.Module | None = None) -> SSLMethod:
    """The method module (backbone + heads), seeded by cfg.seed; `backbone` overrides a random one."""
    _, module_cls, _ = METHODS[cfg.method]
    torch.manual_seed(cfg.seed)
    backbone = backbone if backbone is not None else build_backbone(cfg.arch)
    return module_cls(backbone, cfg.method_config, cfg.aug, cfg.image_size)


def forward_backward(method: SSLMethod, model: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     xb: torch.Tensor, g: torch.Generator, amp: torch.dtype | None) -> tuple[torch.Tensor, dict]:
    """Augment a uint8 batch (B, S, S) on the device, forward through `model` (the method or its DDP
    wrapper) under autocast, backward. Returns (loss, metrics); the update is `apply_update`."""
    x01 = xb.to(g.device, non_blocking=True)[:, None].float().div_(255.0)  # (B, 1, S, S)
    views = method.views(x01, g)
    with torch.autocast(g.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        loss, metrics = model(*views)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return loss, metrics


def apply_update(method: SSLMethod, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 params: list[nn.Parameter], step: int, total: int) -> None:
    """(Clip,) optimizer step through the scaler, then the method's momentum / queue / centre updates."""
    method.before_update(step, total)
    if method.grad_clip is not None:
        scaler.unscale_(opt)
        clip_grad_per_param_(params, method.grad_clip)
    scaler.step(opt)
    scaler.update()
    method.after_step(step, total)


class _Run:
    """The state of one pretraining run on one rank."""

    def __init__(self, images: np.ndarray, cfg: PretrainConfig, out_name: str, device: torch.device,
                 dinfo: DistInfo, run_dir: Path, on_event: OnEvent | None, checkpoint_dir: Path | None,
                 data_fingerprint: str) -> None:
        self.images, self.cfg, self.out_name, self.device, self.d = images, cfg, out_name, device, dinfo
        self.run_dir, self.checkpoint_dir, self.fingerprint = run_dir, checkpoint_dir, data_fingerprint
        self.on_event = on_event if dinfo.main else None
        n = len(images)
        if cfg.batch_size % dinfo.world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {dinfo.world}")
        if n < cfg.batch_size:
            raise ValueError(f"{n} images are fewer than one batch ({cfg.batch_size}); lower --batch-size or add images")
        self.local_batch = cfg.batch_size // dinfo.world
        self.steps_per_epoch = n // cfg.batch_size
        self.total = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total = min(self.total, cfg.max_steps)
        warm_ep = cfg.recipe.warmup_epochs if cfg.warmup_epochs is None else cfg.warmup_epochs
        self.warmup = round(warm_ep * self.steps_per_epoch)
        if self.warmup >= self.total // 2 and cfg.warmup_epochs is None:  # recipe warmup longer than a short run
            self.warmup = self.total // 10
        self.peak_lr = cfg.lr if cfg.lr is not None else cfg.recipe.base_lr * cfg.batch_size / 256
        self.wd = cfg.recipe.weight_decay if cfg.weight_decay is None else cfg.weight_decay
        self.amp = amp_dtype(device) if device.type == "cuda" else torch.bfloat16
        if not (cfg.amp if cfg.amp is not None else device.type == "cuda"):
            self.amp = None
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
        self.state_path = run_dir / "state.pt"
        self.step, self.saved_step = 0, -1
        self._train_s0, self._t_start = 0.0, None  # training seconds of earlier sessions; this session's start
        self.history: list[dict[str, float]] = []
        self._order_cache: tuple[int, np.ndarray] | None = None
        mon_idx = sample_indices(n, cfg.monitor_images, cfg.seed)
        self.monitor = CollapseMonitor(np.asarray(images[mon_idx]), cfg.monitor_every_steps,
                                       std_min=cfg.collapse_std_min, erank_min=cfg.collapse_erank_min)
        self.control: CollapseController | None = None
        if cfg.collapse_control is not None:
            module_cls = METHODS[cfg.method][1]
            knob = module_cls.control_knob
            self.control = CollapseController(cfg.collapse_control, knob, float(getattr(cfg.method_config, knob)),
                                              float(module_cls.control_ref))

    # --- model ---------------------------------------------------------------------------------
    def build(self, state: dict[str, Any] | None) -> None:
        cfg = self.cfg
        backbone = None
        if cfg.init == "imagenet" and state is None:  # raises InitUnavailableError offline
            backbone = load_backbone("imagenet", "cpu", arch=cfg.arch)[0].train()
        self.method = build_method(cfg, backbone)
        m = self.method
        m.channels_last = self.channels_last
        m.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        if self.d.enabled and self.device.type == "cuda" and m.sync_bn:
            m = nn.SyncBatchNorm.convert_sync_batchnorm(m)
            self.method = m
        self.opt = build_optimizer(m, cfg.recipe, self.peak_lr, self.wd)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        if state is not None:
            m.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.step = self.saved_step = int(state["step"])
            self._train_s0 = float(state.get("train_seconds", 0.0))
            self.history = list(state["history"])
            self.monitor.history = list(state["collapse"])
            if self.control is not None:
                self.control.load_state_dict(state["collapse_control"])
            self._order_cache = (int(state["epoch"]), state["order"].cpu().numpy())  # exact data order
            torch.set_rng_state(state["rng"]["torch"])
            if self.device.type == "cuda" and state["rng"].get("cuda"):
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if self.control is not None:
            setattr(m, self.control.knob, self.control.weight)  # the weight in use (restored on resume)
        self.model: nn.Module = m
        if self.d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            DDP._set_params_and_buffers_to_ignore_for_model(m, m.ddp_ignored())
            self.model = DDP(m, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # --- data ----------------------------------------------------------------------------------
    def order(self, epoch: int) -> np.ndarray:
        """The shared permutation of image indices for `epoch` (same on every rank)."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.images)))
        return self._order_cache[1]

    def batch_indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        start = i * self.cfg.batch_size + self.d.rank * self.local_batch
        return np.sort(self.order(epoch)[start : start + self.local_batch])  # sorted: memmap locality

    def _load(self, step: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.images[self.batch_indices(step)]))  # (B, S, S) uint8
        return x.pin_memory() if self.device.type == "cuda" else x

    def batches(self, start: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(step, uint8 batch) from `start`, the next batch read in a background thread."""
        with ThreadPoolExecutor(1, thread_name_prefix="ssl-data") as pool:
            fut = pool.submit(self._load, start) if start < self.total else None
            for step in range(start, self.total):
                x = fut.result()
                if step + 1 < self.total:
                    fut = pool.submit(self._load, step + 1)
                yield step, x

    # --- state ---------------------------------------------------------------------------------
    def save(self) -> None:
        if self.d.main:
            epoch = min(self.step, self.total - 1) // self.steps_per_epoch
            state = {
                "version": 1, "step": self.step, "total": self.total, "config": self.cfg.to_dict(),
                "data_fingerprint": self.fingerprint, "n_images": len(self.images), "world": self.d.world,
                "model": self.method.state_dict(), "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
                "order": torch.from_numpy(self.order(epoch)), "epoch": epoch,
                "history": self.history, "collapse": self.monitor.history, "train_seconds": self.train_seconds,
                "collapse_control": self.control.state_dict() if self.control is not None else None,
            }
            try:
                atomic_torch_save(state, self.state_path, what=f"the training state at step {self.step}")
                _atomic_json(self.run_dir / "history.json",
                             {"step": self.step, "total": self.total, "loss": self.history,
                              "collapse": self.monitor.history,
                              "collapse_control": self.control.summary() if self.control is not None else None})
            except DiskFullError as e:
                kept = (f"the last saved state (step {self.saved_step}) in {self.state_path} is kept; resume continues "
                        "from it" if self.saved_step >= 0 else "no state had been saved yet; the run restarts")
                raise DiskFullError(e.folder, e.needed, e.free, e.what, kept) from e
        self.saved_step = self.step
        if self.d.enabled:
            dist.barrier()

    def check_resumable(self, state: dict[str, Any]) -> None:
        # through from_dict: settings added since the state was written compare at their defaults
        old, new = PretrainConfig.from_dict(state["config"]).to_dict(), self.cfg.to_dict()
        diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if k not in _RESUME_FREE and old.get(k) != new[k]]
        if diff:
            raise ValueError(f"cannot resume {self.state_path}: it was written with different settings ({'; '.join(diff)}). "
                             f"Resume with the same settings, or start a new run under another --out name")
        if state["data_fingerprint"] != self.fingerprint or state["n_images"] != len(self.images):
            raise ValueError(f"cannot resume {self.state_path}: it was trained on different images "
                             f"({state['n_images']} images, fingerprint {state['data_fingerprint']!r}); use the same data")

    # --- loop ----------------------------------------------------------------------------------
    def _flag(self, value: bool) -> bool:
        """True if `value` is true on any rank (one tiny all_reduce under DDP)."""
        if not self.d.enabled:
            return value
        t = torch.tensor([float(value)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _monitor(self) -> None:
        """Collapse-monitor reading (rank 0), then the collapse controller's decision (shared by all ranks)."""
        rec = None
        if self.d.main:
            metrics = self.monitor.measure(self.method, self.device, self.cfg.image_size, self.step, self.amp)
            extra: dict[str, float] = {}
            if self.control is not None:
                rec = self.control.update(self.step, metrics)
                extra = {"control_weight": self.control.weight, "control_target": self.control.spec.target}
                self.monitor.history[-1].update(extra)  # the weight in use from here on, beside the reading
            emit(self.on_event, step=self.step, total=self.total, kind="metrics",
                 metrics={f"collapse_{k}": v for k, v in {**metrics, **extra}.items()}, message="collapse monitor")
            for w in self.monitor.warnings(metrics, self.step):
                emit(self.on_event, step=self.step, total=self.total, kind="warning", level="warning", message=w)
            if rec is not None:
                emit(self.on_event, step=self.step, total=self.total, kind="log", message=self.control.message(rec))
        if self.control is not None:
            w = self.control.weight
            if self.d.enabled:  # rank 0 decided; every rank uses its weight
                t = torch.tensor([w], dtype=torch.float64, device=self.device)
                dist.broadcast(t, 0)
                w = self.control.weight = float(t.item())
            setattr(self.method, self.control.knob, w)

    @property
    def train_seconds(self) -> float:
        """Wall-clock seconds spent in the training loop, summed over every resumed session."""
        return self._train_s0 + (time.perf_counter() - self._t_start if self._t_start is not None else 0.0)

    def train(self, stop: threading.Event | None) -> None:
        cfg, m, params = self.cfg, self.method, [p for p in self.method.parameters() if p.requires_grad]
        m.train()
        self._t_start = time.perf_counter()
        if self.step == 0 and cfg.monitor_every_steps > 0:
            self._monitor()  # baseline at step 0
        for step, xb in self.batches(self.step):
            if self._flag(stop is not None and stop.is_set()):
                self.save()
                msg = f"stopped at step {self.step}/{self.total}; state saved to {self.state_path}"
                emit(self.on_event, step=self.step, total=self.total, kind="log", message=msg)
                raise Cancelled(msg)
            lr = cosine_lr(step, self.total, self.warmup, self.peak_lr, self.peak_lr * cfg.recipe.final_lr_ratio)
            for g in self.opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            g = step_generator(self.device, cfg.seed, step, self.d.rank)
            m.before_step(step, self.total)
            loss, metrics = forward_backward(m, self.model, self.opt, self.scaler, xb, g, self.amp)
            vals = torch.stack([loss.detach().float(), *(v.float() for v in metrics.values())]).tolist()
            if self._flag(not np.isfinite(vals[0])):
                self._fail(step, vals[0], lr)
            apply_update(m, self.opt, self.scaler, params, step, self.total)
            self.step = step + 1
            rec = {"step": self.step, "loss": vals[0], "lr": lr, "epoch": self.step / self.steps_per_epoch,
                   **dict(zip(metrics, vals[1:]))}
            self.history.append(rec)
            emit(self.on_event, step=self.step, total=self.total, metrics={k: v for k, v in rec.items() if k != "step"})
            if self.monitor.due(self.step, self.total):
                self._monitor()
            if self.step % cfg.save_every_steps == 0 and self.step < self.total:
                self.save()

    def _fail(self, step: int, value: float, lr: float) -> None:
        where = (f"the last good state (step {self.saved_step}) is kept in {self.state_path}; resume from it"
                 if self.saved_step >= 0 else "no state had been saved yet; restart")
        msg = (f"{self.cfg.method} loss became {value} at step {step + 1}/{self.total} (lr {lr:.3g}); training "
               f"stopped before applying it. {where} with a lower --lr (e.g. half) or another --seed")
        emit(self.on_event, step=step, total=self.total, kind="log", level="error", message=msg)
        raise NonFiniteLossError(msg)

    def export(self) -> Path:
        """Check the ranks agree, write the deliverable (rank 0) and return its path."""
        h = param_hash(self.method)
        info_sync: dict[str, Any] = {}
        if self.d.enabled:
            (self.run_dir / f"params-rank{self.d.rank}.sha256").write_text(h + "\n")
            hashes: list[Any] = [None] * self.d.world
            dist.all_gather_object(hashes, h)
            if len(set(hashes)) != 1:
                raise RuntimeError(f"DDP ranks diverged: parameter hashes {hashes}")
            info_sync = {"ranks_in_sync": True}
        path = (self.checkpoint_dir or _checkpoints_dir()) / f"{self.out_name}.safetensors"
        if self.d.main:
            path = save_backbone(self.method.backbone, self.out_name, self.info(h, info_sync), self.checkpoint_dir)
            emit(self.on_event, step=self.step, total=self.total, kind="result", message=str(path))
        if self.d.enabled:
            dist.barrier()
        return path

    def info(self, h: str, extra: dict[str, Any]) -> dict[str, Any]:
        losses = [r["loss"] for r in self.history]
        stride = max(1, len(self.history) // 200)
        collapse = self.monitor.history
        return {
            "method": self.cfg.method, "arch": self.cfg.arch, "init": self.cfg.init, "config": self.cfg.to_dict(),
            "steps": self.step, "total_steps": self.total, "epochs": self.step / self.steps_per_epoch,
            "images_seen": self.step * self.cfg.batch_size, "data_fingerprint": self.fingerprint,
            "n_images": len(self.images), "image_size": self.cfg.image_size, "world_size": self.d.world,
            "device": describe(self.device), "run_dir": str(self.run_dir), "param_hash": h, **extra,
            "train_seconds": round(self.train_seconds, 1), "torch": torch.__version__,
            "collapse": {"final": ({k: v for k, v in collapse[-1].items() if k != "step"} if collapse else {}),
                         "history": collapse, **metric_definitions()},  # sets + labels of both metric sets
            "collapse_control": self.control.summary() if self.control is not None else None,
            "loss": ({"first": losses[0], "last": losses[-1], "min": min(losses),
                      "last_mean": float(np.mean(losses[-max(1, len(losses) // 10):])),
                      "curve": [[r["step"], r["loss"]] for r in self.history[::stride]]} if losses else {}),
        }


def _checkpoints_dir() -> Path:
    from engine.paths import checkpoints_dir

    return checkpoints_dir()


def _atomic_json(path: Path, obj: Any) -> None:
    from engine.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(obj, default=float))  # DiskFullError on a full disk


def pretrain(
    images: np.ndarray, cfg: PretrainConfig, out_name: str, device: torch.device | str, run_dir: Path,
    on_event: OnEvent | None = None, stop: threading.Event | None = None, resume: bool = False,
    checkpoint_dir: Path | None = None, data_fingerprint: str = "",
) -> Path:
    """Pretrain `cfg.method` on uint8 images (N, S, S); export checkpoints/<out_name>.safetensors (+ .json).

    Under torchrun every rank calls this with the same arguments. With `resume=True` it continues
    from run_dir/state.pt (exactly: same data order, augmentations, optimizer and queue state);
    without a state it starts at step 0. Raises Cancelled after saving state when `stop` is set,
    NonFiniteLossError on a NaN/inf loss, InitUnavailableError for init="imagenet" offline.
    """
    _check_name(out_name)
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 3
            and images.shape[1] == images.shape[2]):
        raise ValueError("images must be a (N, S, S) uint8 array (the resolution cache), got "
                         f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dinfo, device, created = init_distributed(resolve_device(device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
    try:
        run = _Run(images, cfg, out_name, device, dinfo, run_dir, on_event, checkpoint_dir, data_fingerprint)
        state = None
        if resume and run.state_path.exists():
            state = torch.load(run.state_path, map_location=device, weights_only=True)
            run.check_resumable(state)
        elif resume:
            emit(run.on_event, kind="log", message=f"no state in {run_dir}; starting at step 0")
        run.build(state)
        emit(run.on_event, step=run.step, total=run.total, kind="log",
             message=f"{cfg.method} {cfg.arch}: {len(images)} images, {run.steps_per_epoch} steps/epoch, "
                     f"{run.total} steps (warmup {run.warmup}), lr {run.peak_lr:.3g}, {dinfo.world} process(es) "
                     f"on {describe(device)}"
                     + (f", resuming at step {run.step}" if state is not None else ""))
        run.train(stop)
        if run.saved_step != run.step:
            run.save()
        return run.export()
    finally:
        if created:
            dist.destroy_process_group()


def resolve_image_paths(data: str | Path, include_test: bool = False) -> list[str]:
    """Image paths of a manifest CSV (rows with split == 'test' left out unless include_test) or a folder.

    A folder is listed by content with `engine.data.listing.list_images` (PNG/JPEG/TIFF/DICOM at any
    depth, whatever the file names; DICOMDIR and non-image files skipped, their count and first names
    logged as a warning). Raises FileNotFoundError / ValueError when nothing usable is there.
    """
    p = Path(data).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"--data {p} does not exist; give a manifest CSV or a folder of images")
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise ValueError(f"--data {p} is a file but not a manifest CSV; give a manifest .csv or a folder of images")
        from engine.data.manifest import load_manifest

        df = load_manifest(p).df
        if not include_test and "split" in df:
            # the few-shot test images must stay unseen, also without labels
            df = df[df["split"].astype(str) != "test"]
        paths = [str(x) for x in df["path"]]
    else:  # by content, any depth and name (CD trees' extension-less DICOMs); skips reported
        from engine.data.listing import list_images

        listing = list_images(p)
        paths = listing.files
        if listing.skipped:
            import logging

            logging.getLogger(__name__).warning("--data %s: %s", p, listing.skipped_summary())
    if not paths:
        raise ValueError(f"no images found in {p} (PNG, JPEG, TIFF or DICOM, recognised by content)"
                         + (f" ({listing.skipped_summary()})" if p.is_dir() and listing.skipped else ""))
    return paths


def pretrain_from_data(
    data: str | Path, cfg: PretrainConfig, out_name: str, device: torch.device | str = "auto",
    run_dir: Path | None = None, on_event: OnEvent | None = None, stop: threading.Event | None = None,
    resume: bool = False, checkpoint_dir: Path | None = None, cache_dir: Path | None = None,
    include_test: bool = False,
) -> Path:
    """Resolve a manifest CSV / image folder, build (or reuse) the uint8 cache at cfg.image_size, pretrain.

    run_dir defaults to <workspace>/runs/<out_name>.
    """
    from engine.data.cache import ImageCache
    from engine.paths import sub

    _check_name(out_name)
    paths = resolve_image_paths(data, include_test)
    cache = ImageCache.build(paths, size=cfg.image_size, cache_dir=cache_dir, on_event=on_event, stop=stop)
    run_dir = Path(run_dir) if run_dir is not None else sub(None, "runs") / out_name
    return pretrain(cache.array, cfg, out_name, device, run_dir, on_event=on_event, stop=stop, resume=resume,
                    checkpoint_dir=checkpoint_dir, data_fingerprint=data_fingerprint(list(cache.keys), cfg.image_size))
