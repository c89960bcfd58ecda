"""The pretraining loop of every SSL method: `start_run` sets a run up (or resumes it), `train` runs it.

Design decisions (docs/design.md, "SSL pretraining"):

- Data: `images` is the (N, S, S) uint8 resolution cache (a memmap). On CUDA the whole set is copied to
  the device once when it fits (`data_on_device`; 11k images at 224 px are 0.56 GB) and each batch is
  indexed there; otherwise each step reads its batch in a prefetch thread and moves uint8 to the device.
  Either way the augmentation runs on the device (engine.ssl.augment).
- Host syncs: the losses are read back every `sync_every_steps` (CUDA default 20), not every step, so
  the host can queue the next steps' kernels while the device works; events and the loss history are
  then emitted for each step of the block. A non-finite loss found in a block stops the run; every state
  save comes right after such a check, so state.pt always holds finite weights.
- Batch: `cfg.batch_size` is the *global* batch; under torchrun each of W ranks takes batch/W images
  of a shared seeded permutation per epoch, so the run means the same on 1 or 8 GPUs. Steps per epoch
  = N // batch (last partial batch dropped). lr = cfg.lr or recipe.base_lr * batch / 256.
- Randomness is stateless: the epoch order is a function of (seed, epoch), the augmentation
  generator of (seed, step, rank). A resume therefore continues exactly; the state still records the
  current order and torch's RNG states (engine.ssl.checkpointing).
- State is saved every `save_every_steps` and every `save_every_seconds` of wall clock (default 300 s; the
  ranks agree through one all_reduce), so a kill loses at most a few minutes, also before the first periodic save.
- A non-finite loss stops the run before the optimizer step with NonFiniteLossError; state.pt keeps
  the last periodic (good) state.
- Events (rank 0): every step kind="progress" with metrics loss, lr, epoch and the method's own; every
  `monitor_every_steps` kind="metrics" with collapse_* metrics; kind="warning" on collapse.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from engine.device import amp_dtype, describe
from engine.events import Cancelled, OnEvent, emit
from engine.models import build_backbone, load_backbone
from engine.ssl.checkpointing import check_resumable, load_state, restore, save_state
from engine.ssl.common import (
    DistInfo, SSLMethod, build_optimizer, clip_grad_per_param_, cosine_lr, step_generator,
)
from engine.ssl.config import PretrainConfig
from engine.ssl.monitor import CollapseController, CollapseMonitor, sample_indices


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the step and where the last good state is."""


@dataclass(frozen=True)
class Schedule:
    """The numbers fixed for a whole run (see `plan_schedule`)."""

    local_batch: int  # images per rank per step
    steps_per_epoch: int
    total: int  # steps of the run (epochs x steps_per_epoch, capped by max_steps)
    warmup: int  # linear warmup steps of the cosine schedule
    peak_lr: float
    final_lr: float
    weight_decay: float
    amp: torch.dtype | None  # autocast dtype, None = full precision
    channels_last: bool
    sync_every: int = 1  # steps between host reads of the losses (see the module docstring)


def plan_schedule(cfg: PretrainConfig, n_images: int, world: int, device: torch.device) -> Schedule:
    """Steps, warmup, lr, precision of a run; raises ValueError when the batch does not fit."""
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {world}")
    if n_images < cfg.batch_size:
        raise ValueError(f"{n_images} images are fewer than one batch ({cfg.batch_size}); "
                         "lower --batch-size or add images")
    recipe = cfg.recipe
    steps_per_epoch = n_images // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = round((recipe.warmup_epochs if cfg.warmup_epochs is None else cfg.warmup_epochs) * steps_per_epoch)
    if warmup >= total // 2 and cfg.warmup_epochs is None:  # recipe warmup longer than a short run
        warmup = total // 10
    peak_lr = cfg.lr if cfg.lr is not None else recipe.base_lr * cfg.batch_size / 256
    amp = amp_dtype(device) if device.type == "cuda" else torch.bfloat16
    if not (cfg.amp if cfg.amp is not None else device.type == "cuda"):
        amp = None
    return Schedule(
        local_batch=cfg.batch_size // world, steps_per_epoch=steps_per_epoch, total=total, warmup=warmup,
        peak_lr=peak_lr, final_lr=peak_lr * recipe.final_lr_ratio,
        weight_decay=recipe.weight_decay if cfg.weight_decay is None else cfg.weight_decay, amp=amp,
        channels_last=cfg.channels_last if cfg.channels_last is not None else device.type == "cuda",
        sync_every=cfg.sync_every_steps or (20 if device.type == "cuda" else 1),
    )


class EpochOrder:
    """The shared permutation of image indices per epoch (the same on every rank): a function of
    (seed, epoch). The latest is kept; a resumed run restores the one its state recorded."""

    def __init__(self, n_images: int, seed: int) -> None:
        self.n_images, self.seed = n_images, seed
        self.cached: tuple[int, np.ndarray] | None = None

    def __call__(self, epoch: int) -> np.ndarray:
        if self.cached is None or self.cached[0] != epoch:
            self.cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_images))
        return self.cached[1]


@dataclass(eq=False)
class Run:
    """One pretraining run on one rank: settings, data, model, optimizer, monitor and progress."""

    cfg: PretrainConfig
    images: np.ndarray  # (N, S, S) uint8
    device: torch.device
    dist: DistInfo
    run_dir: Path
    sched: Schedule
    fingerprint: str  # of the image set (engine.ssl.pretrain.data_fingerprint)
    on_event: OnEvent | None  # rank 0's callback; None on the other ranks
    method: SSLMethod
    model: nn.Module  # what a step calls: the method, or its DDP wrapper
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    monitor: CollapseMonitor
    control: CollapseController | None
    order: EpochOrder
    step: int = 0  # steps done
    saved_step: int = -1  # step of the last state written (-1: none yet)
    history: list[dict[str, float]] = field(default_factory=list)  # one record per step
    train_s0: float = 0.0  # training seconds of earlier sessions
    t_start: float | None = None  # this session's start (perf_counter)
    saved_at: float = 0.0  # time.monotonic() of the last state save (or of this session's start)
    images_dev: torch.Tensor | None = None  # (N, S, S) uint8 on the device when data_on_device
    warm_start: dict[str, Any] | None = None  # the checkpoint a warm start began from (`lineage`)
    pending: list[tuple[int, float, torch.Tensor, list[str]]] = field(default_factory=list)  # steps not yet read

    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.pt"

    @property
    def train_seconds(self) -> float:
        """Wall-clock seconds spent in the training loop, summed over every resumed session."""
        return self.train_s0 + (time.perf_counter() - self.t_start if self.t_start is not None else 0.0)


# --- setup ---------------------------------------------------------------------------------------
def start_run(images: np.ndarray, cfg: PretrainConfig, device: torch.device, dinfo: DistInfo, run_dir: Path,
              on_event: OnEvent | None, resume: bool, fingerprint: str, checkpoint_dir: Path | None = None) -> Run:
    """A run ready to train: schedule, monitor, model, optimizer; with `resume`, restored from
    run_dir/state.pt when there is one (ValueError if it was written with other settings or data).
    `checkpoint_dir`: where a warm start's checkpoint (cfg.init = its name) is looked up besides the shipped ones."""
    sched = plan_schedule(cfg, len(images), dinfo.world, device)
    monitor, control = _collapse_monitor(images, cfg), _collapse_controller(cfg)
    on_event = on_event if dinfo.main else None
    state, state_path = None, run_dir / "state.pt"
    if resume and state_path.exists():
        state = load_state(state_path, device)
        check_resumable(state, cfg, fingerprint, len(images), state_path)
    elif resume:
        emit(on_event, kind="log", message=f"no state in {run_dir}; starting at step 0")
    start_from = cfg.init if cfg.init != "random" and state is None else None  # a resume restores its own weights
    backbone, warm = initial_backbone(cfg, checkpoint_dir) if start_from is not None else (None, None)
    method, opt, scaler = _build(cfg, sched, device, dinfo, backbone)
    run = Run(cfg=cfg, images=images, device=device, dist=dinfo, run_dir=run_dir, sched=sched,
              fingerprint=fingerprint, on_event=on_event, method=method, model=method, opt=opt, scaler=scaler,
              monitor=monitor, control=control, order=EpochOrder(len(images), cfg.seed), warm_start=warm)
    if state is not None:
        restore(run, state)  # weights, optimizer, progress, data order, RNG
    if run.control is not None:
        setattr(run.method, run.control.knob, run.control.weight)  # the weight in use (restored on resume)
    run.images_dev = device_images(images, cfg, device)
    run.model = _ddp(run)
    s = run.sched
    emit(run.on_event, step=run.step, total=s.total, kind="log",
         message=f"{cfg.method} {cfg.arch}: {len(images)} images, {s.steps_per_epoch} steps/epoch, "
                 f"{s.total} steps (warmup {s.warmup}), lr {s.peak_lr:.3g}, {dinfo.world} process(es) "
                 f"on {describe(device)}" + (", images held on the device" if run.images_dev is not None else "")
                 + (f", resuming at step {run.step}" if state is not None else ""))
    return run


def device_images(images: np.ndarray, cfg: PretrainConfig, device: torch.device) -> torch.Tensor | None:
    """The whole uint8 image set (N, S, S) copied to `device` once, or None to read batches from the host.

    `cfg.data_on_device` None = on for CUDA when the set takes < 1/4 of the free device memory (the
    model, activations and cuDNN workspaces need the rest), off on CPU (the memmap is host memory already).
    """
    want = cfg.data_on_device
    if want is None:
        if device.type != "cuda":
            return None
        free, _total = torch.cuda.mem_get_info(device)
        want = images.nbytes < free / 4
    if not want:
        return None
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    for i in range(0, len(images), 4096):  # in blocks: a memmap is not read whole into host memory
        out[i : i + 4096].copy_(torch.from_numpy(np.array(images[i : i + 4096])))  # a writable host copy
    return out


def _collapse_monitor(images: np.ndarray, cfg: PretrainConfig) -> CollapseMonitor:
    idx = sample_indices(len(images), cfg.monitor_images, cfg.seed)
    online = None
    if cfg.online_eval:
        from engine.ssl.online_eval import load_online_eval

        online = load_online_eval(cfg.online_eval, cfg.image_size, cfg.seed, every=cfg.online_eval_every)
    return CollapseMonitor(np.asarray(images[idx]), cfg.monitor_every_steps,
                           std_min=cfg.collapse_std_min, erank_min=cfg.collapse_erank_min, online=online)


def _collapse_controller(cfg: PretrainConfig) -> CollapseController | None:
    if cfg.collapse_control is None:
        return None
    knob = cfg.spec.collapse_knob  # PretrainConfig refused collapse control for methods without one
    return CollapseController(cfg.collapse_control, knob.weight, float(getattr(cfg.method_config, knob.weight)),
                              float(knob.ref))


def build_method(cfg: PretrainConfig, backbone: nn.Module | None = None) -> SSLMethod:
    """The method module (backbone + heads), seeded by cfg.seed; `backbone` overrides a random one."""
    torch.manual_seed(cfg.seed)
    backbone = backbone if backbone is not None else build_backbone(cfg.arch)
    return cfg.spec.method_cls(backbone, cfg.method_config, cfg.aug, cfg.image_size)


def initial_backbone(cfg: PretrainConfig, checkpoint_dir: Path | None = None) -> tuple[nn.Module, dict | None]:
    """The backbone a run starts from when cfg.init is not "random": ImageNet weights, or a checkpoint's
    (a warm start: e.g. the shipped backbone, continued in a later GPU window), and the warm start's
    `lineage` (None for ImageNet).

    Raises InitUnavailableError (offline ImageNet, a damaged checkpoint), UnknownInitError (no such
    checkpoint), ValueError when the checkpoint's arch is not cfg.arch.
    """
    model, meta = load_backbone(cfg.init, "cpu", arch=cfg.arch, checkpoint_dir=checkpoint_dir)
    if meta.arch != cfg.arch:
        raise ValueError(f"cannot warm-start a {cfg.arch} run from {cfg.init!r}: it is a {meta.arch}; "
                         f"use --arch {meta.arch} or another checkpoint")
    return model.train(), (lineage(meta.name, meta.info, meta.fingerprint) if cfg.init != "imagenet" else None)


def lineage(name: str, info: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """What a warm start continues: the source checkpoint and its cumulative training (epochs, images
    seen, seconds over every earlier window), so a backbone trained in several windows records its total."""
    prev = info.get("warm_start") or {}
    return {
        "from": name, "fingerprint": fingerprint, "method": info.get("method"),
        "data_fingerprint": info.get("data_fingerprint"),
        "epochs_before": float(info.get("epochs_total", info.get("epochs", 0.0)) or 0.0),
        "images_seen_before": int(info.get("images_seen_total", info.get("images_seen", 0)) or 0),
        "train_seconds_before": float(info.get("train_seconds_total", info.get("train_seconds", 0.0)) or 0.0),
        "windows_before": int(prev.get("windows_before", 0)) + 1,
    }


def _build(cfg: PretrainConfig, s: Schedule, device: torch.device, dinfo: DistInfo,
           backbone: nn.Module | None) -> tuple[SSLMethod, torch.optim.Optimizer, torch.amp.GradScaler]:
    """The method on the device (SyncBN under DDP on CUDA), its optimizer (fused on CUDA) and grad scaler;
    `backbone`: the starting weights (initial_backbone), None = random."""
    m = build_method(cfg, backbone)
    m.channels_last = s.channels_last
    m.to(device, memory_format=torch.channels_last if s.channels_last else torch.preserve_format)
    if dinfo.enabled and device.type == "cuda" and m.sync_bn:
        m = nn.SyncBatchNorm.convert_sync_batchnorm(m)
    opt = build_optimizer(m, cfg.recipe, s.peak_lr, s.weight_decay, fused=device.type == "cuda")
    return m, opt, torch.amp.GradScaler(device.type, enabled=s.amp == torch.float16)


def _ddp(run: Run) -> nn.Module:
    """The module the loop calls: the method itself, or its DDP wrapper under torchrun."""
    if not run.dist.enabled:
        return run.method
    from torch.nn.parallel import DistributedDataParallel as DDP

    DDP._set_params_and_buffers_to_ignore_for_model(run.method, run.method.ddp_ignored())
    return DDP(run.method, device_ids=[run.device.index] if run.device.type == "cuda" else None)


# --- data ----------------------------------------------------------------------------------------
def batch_indices(run: Run, step: int) -> np.ndarray:
    """This rank's image indices at `step`: its slice of the epoch's shared order, sorted (memmap locality)."""
    epoch, i = divmod(step, run.sched.steps_per_epoch)
    start = i * run.cfg.batch_size + run.dist.rank * run.sched.local_batch
    return np.sort(run.order(epoch)[start : start + run.sched.local_batch])


def _load(run: Run, step: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(run.images[batch_indices(run, step)]))  # (B, S, S) uint8
    return x.pin_memory() if run.device.type == "cuda" else x


def batches(run: Run, start: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(step, uint8 batch (B, S, S)) from `start` to the end: indexed on the device when the images are
    held there, else the next batch read from the host in a background thread."""
    total = run.sched.total
    if run.images_dev is not None:
        for step in range(start, total):
            idx = torch.from_numpy(batch_indices(run, step)).to(run.device, non_blocking=True)
            yield step, run.images_dev[idx]
        return
    with ThreadPoolExecutor(1, thread_name_prefix="ssl-data") as pool:
        fut = pool.submit(_load, run, start) if start < total else None
        for step in range(start, total):
            x = fut.result()
            if step + 1 < total:
                fut = pool.submit(_load, run, step + 1)
            yield step, x


# --- one step ------------------------------------------------------------------------------------
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


# --- the loop ------------------------------------------------------------------------------------
def train(run: Run, stop: threading.Event | None) -> None:
    """Train from `run.step` to the end of the schedule.

    Raises Cancelled after saving the state when `stop` is set (on any rank), NonFiniteLossError when
    the loss becomes NaN/inf on any rank: before that step's update when losses are read every step
    (CPU), within `sync_every` steps of it otherwise (the saved state is from before it in both cases).
    """
    cfg, s, m = run.cfg, run.sched, run.method
    params = [p for p in m.parameters() if p.requires_grad]
    m.train()
    run.t_start = time.perf_counter()
    run.saved_at = time.monotonic()
    if run.step == 0 and cfg.monitor_every_steps > 0:
        monitor(run)  # baseline at step 0
    for step, xb in batches(run, run.step):
        if any_rank(run, stop is not None and stop.is_set()):
            _stop(run)
        lr = cosine_lr(step, s.total, s.warmup, s.peak_lr, s.final_lr)
        for group in run.opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        g = step_generator(run.device, cfg.seed, step, run.dist.rank)
        m.before_step(step, s.total)
        loss, metrics = forward_backward(m, run.model, run.opt, run.scaler, xb, g, s.amp)
        run.pending.append((step, lr, torch.stack([loss.detach().float(), *(v.detach().float() for v in
                                                                             metrics.values())]), list(metrics)))
        if s.sync_every == 1:
            flush(run)  # checked before the update
        apply_update(m, run.opt, run.scaler, params, step, s.total)
        run.step = step + 1
        block_end = s.sync_every == 1 or len(run.pending) >= s.sync_every or run.step == s.total
        due_monitor = run.monitor.due(run.step, s.total)
        due_save = _save_due(run, block_end) and run.step < s.total
        if block_end or due_monitor or due_save:
            flush(run)
        if due_monitor:
            monitor(run)
        if due_save:
            save_state(run)
            run.saved_at = time.monotonic()


def _save_due(run: Run, block_end: bool) -> bool:
    """Every `save_every_steps`, and when `save_every_seconds` passed since the last save (or this
    session's start) on any rank, so a kill loses at most a few minutes even before the first periodic save.
    The clock is consulted at the end of a sync block only (every step on CPU), so DDP ranks agree through
    one all_reduce per block rather than per step, and all ranks save together."""
    every = run.cfg.save_every_seconds
    by_clock = every > 0 and block_end and any_rank(run, time.monotonic() - run.saved_at >= every)
    return run.step % run.cfg.save_every_steps == 0 or by_clock


def flush(run: Run) -> None:
    """Read the pending steps' losses in one host sync; record and emit them in order.

    Raises NonFiniteLossError at the first non-finite loss (on any rank under DDP).
    """
    if not run.pending:
        return
    pending, run.pending = run.pending, []
    rows = torch.stack([v for _, _, v, _ in pending]).tolist()  # the one sync for the block
    bad = next((i for i, r in enumerate(rows) if not np.isfinite(r[0])), None)
    if any_rank(run, bad is not None):
        i = bad if bad is not None else 0
        _fail(run, pending[i][0], rows[i][0] if bad is not None else float("nan"), pending[i][1],
              late=run.step > pending[i][0])
    s = run.sched
    for (step, lr, _, keys), vals in zip(pending, rows):
        rec = {"step": step + 1, "loss": vals[0], "lr": lr, "epoch": (step + 1) / s.steps_per_epoch,
               **dict(zip(keys, vals[1:]))}
        run.history.append(rec)
        emit(run.on_event, step=step + 1, total=s.total, metrics={k: v for k, v in rec.items() if k != "step"})


def any_rank(run: Run, value: bool) -> bool:
    """True if `value` is true on any rank (one tiny all_reduce under DDP)."""
    if not run.dist.enabled:
        return value
    t = torch.tensor([float(value)], device=run.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def monitor(run: Run) -> None:
    """Collapse-monitor reading and events (rank 0), then the collapse controller's weight on every rank."""
    rec = None
    if run.dist.main:
        metrics = run.monitor.measure(run.method, run.device, run.cfg.image_size, run.step, run.sched.amp)
        extra: dict[str, float] = {}
        if run.control is not None:
            rec = run.control.update(run.step, metrics)
            extra = {"control_weight": run.control.weight, "control_target": run.control.target}
            run.monitor.history[-1].update(extra)  # the weight in use from here on, beside the reading
        _event(run, kind="metrics", metrics={k if k.startswith("online_") else f"collapse_{k}": v
                                             for k, v in {**metrics, **extra}.items()},
               message="collapse monitor")
        for w in run.monitor.warnings(metrics, run.step):
            _event(run, kind="warning", level="warning", message=w)
        if rec is not None:
            _event(run, kind="log", message=run.control.message(rec))
    if run.control is not None:
        w = run.control.weight
        if run.dist.enabled:  # rank 0 decided; every rank uses its weight
            t = torch.tensor([w], dtype=torch.float64, device=run.device)
            dist.broadcast(t, 0)
            w = run.control.weight = float(t.item())
        setattr(run.method, run.control.knob, w)


def _event(run: Run, **kw: Any) -> None:
    emit(run.on_event, step=run.step, total=run.sched.total, **kw)


def _stop(run: Run) -> None:
    flush(run)
    save_state(run)
    msg = f"stopped at step {run.step}/{run.sched.total}; state saved to {run.state_path}"
    _event(run, kind="log", message=msg)
    raise Cancelled(msg)


def _fail(run: Run, step: int, value: float, lr: float, late: bool = False) -> None:
    where = (f"the last good state (step {run.saved_step}) is kept in {run.state_path}; resume from it"
             if run.saved_step >= 0 else "no state had been saved yet; restart")
    when = (f"stopped at step {run.step} (losses are read every {run.sched.sync_every} steps; the weights after it "
            "are discarded)" if late else "stopped before applying it")
    msg = (f"{run.cfg.method} loss became {value} at step {step + 1}/{run.sched.total} (lr {lr:.3g}); training "
           f"{when}. {where} with a lower --lr (e.g. half) or another --seed")
    emit(run.on_event, step=step, total=run.sched.total, kind="log", level="error", message=msg)
    raise NonFiniteLossError(msg)
