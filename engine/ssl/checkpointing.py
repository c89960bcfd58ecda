"""A pretraining run's resumable state (run_dir/state.pt + history.json) and its exported backbone.

- State: `run_dir/state.pt` (torch.save, read back with weights_only=True) holds model (incl. queue,
  centre, momentum encoders), optimizer, scaler, step, RNG, epoch order, loss and collapse history,
  training seconds and the collapse controller. It is written atomically every `save_every_steps` and
  every `save_every_seconds` of wall clock (so a kill loses minutes, not the run),
  when stopped and at the end; only rank 0 writes. `history.json` is its readable companion.
- A resume refuses a state written with other settings (except the save/monitor frequencies,
  engine.ssl.config.RESUME_FREE) or other images.
- Export: the backbone as <checkpoints>/<out_name>.safetensors + .json (engine.models.save_backbone),
  after checking that every rank holds the same parameters.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from engine.device import describe
from engine.diskspace import DiskFullError
from engine.events import emit
from engine.models import save_backbone
from engine.ssl.common import atomic_torch_save, param_hash
from engine.ssl.config import RESUME_FREE, PretrainConfig
from engine.ssl.monitor import metric_definitions

if TYPE_CHECKING:
    from engine.ssl.loop import Run


def state_dict(run: Run) -> dict[str, Any]:
    """Everything a resume needs to continue exactly."""
    epoch = min(run.step, run.sched.total - 1) // run.sched.steps_per_epoch
    return {
        "version": 1, "step": run.step, "total": run.sched.total, "config": run.cfg.to_dict(),
        "data_fingerprint": run.fingerprint, "n_images": len(run.images), "world": run.dist.world,
        "model": run.method.state_dict(), "optimizer": run.opt.state_dict(), "scaler": run.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else []},
        "order": torch.from_numpy(run.order(epoch)), "epoch": epoch,
        "history": run.history, "collapse": run.monitor.history, "train_seconds": run.train_seconds,
        "collapse_control": run.control.state_dict() if run.control is not None else None,
        "warm_start": run.warm_start,
    }


def save_state(run: Run) -> None:
    """Write state.pt and history.json atomically (rank 0), then wait for every rank.

    Raises DiskFullError saying which earlier state is kept when the disk is full.
    """
    if run.dist.main:
        try:
            atomic_torch_save(state_dict(run), run.state_path, what=f"the training state at step {run.step}")
            _atomic_json(run.run_dir / "history.json",
                         {"step": run.step, "total": run.sched.total, "loss": run.history,
                          "collapse": run.monitor.history,
                          "collapse_control": run.control.summary() if run.control is not None else None})
        except DiskFullError as e:
            kept = (f"the last saved state (step {run.saved_step}) in {run.state_path} is kept; resume continues "
                    "from it" if run.saved_step >= 0 else "no state had been saved yet; the run restarts")
            raise DiskFullError(e.folder, e.needed, e.free, e.what, kept) from e
    run.saved_step = run.step
    if run.dist.enabled:
        dist.barrier()


def _atomic_json(path: Path, obj: Any) -> None:
    from engine.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(obj, default=float))  # DiskFullError on a full disk


def load_state(path: Path, device: torch.device) -> dict[str, Any]:
    """state.pt onto `device` (weights_only: tensors and plain containers only). Raises
    engine.models.files.NotAWeightsFileError (a ValueError) "not a valid weights file ...: delete it"
    for a pickle, a truncated or interrupted write, or garbage, never torch's advice to unpickle it."""
    from engine.models.files import NotAWeightsFileError, torch_load_weights

    fix = (f"delete it (and {path.parent / 'history.json'}) to restart the run from step 0, or restore it "
           "from a backup")
    state = torch_load_weights(path, fix, map_location=device)
    if not isinstance(state, dict) or "step" not in state or "config" not in state:
        raise NotAWeightsFileError(f"{path} is not a valid weights file (not a training state: no step or "
                                   f"config): {fix}")
    return state


def check_resumable(state: dict[str, Any], cfg: PretrainConfig, fingerprint: str, n_images: int, path: Path) -> None:
    """Raise ValueError naming the difference when `state` was written with other settings or images."""
    # through from_dict: settings added since the state was written compare at their defaults
    from engine.resume import check_same_settings

    old, new = PretrainConfig.from_dict(state["config"]).to_dict(), cfg.to_dict()
    check_same_settings(old, new, what=str(path), ignore=RESUME_FREE,
                        fix="Resume with the same settings, or start a new run under another --out name")
    if state["data_fingerprint"] != fingerprint or state["n_images"] != n_images:
        raise ValueError(f"cannot resume {path}: it was trained on different images "
                         f"({state['n_images']} images, fingerprint {state['data_fingerprint']!r}); use the same data")


def restore(run: Run, state: dict[str, Any]) -> None:
    """Load `state` into a freshly built run: weights, optimizer, progress, data order and RNG."""
    run.method.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.step = run.saved_step = int(state["step"])
    run.train_s0 = float(state.get("train_seconds", 0.0))
    run.history = list(state["history"])
    run.monitor.history = list(state["collapse"])
    if run.control is not None:
        run.control.load_state_dict(state["collapse_control"])
    run.order.cached = (int(state["epoch"]), state["order"].cpu().numpy())  # exact data order
    run.warm_start = state.get("warm_start")
    torch.set_rng_state(state["rng"]["torch"])
    if run.device.type == "cuda" and state["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def export(run: Run, out_name: str, checkpoint_dir: Path | None, data: dict[str, Any] | None = None) -> Path:
    """Check the ranks agree, write the backbone (rank 0) and return its path. `data`: the json's record of
    the pretraining images (engine.ssl.pretrain.describe_data), kept under "data" when given.

    Raises RuntimeError when the ranks' parameters differ (their hashes are in the message and in
    run_dir/params-rank<r>.sha256).
    """
    h = param_hash(run.method)
    info_sync: dict[str, Any] = {}
    if run.dist.enabled:
        (run.run_dir / f"params-rank{run.dist.rank}.sha256").write_text(h + "\n")
        hashes: list[Any] = [None] * run.dist.world
        dist.all_gather_object(hashes, h)
        if len(set(hashes)) != 1:
            raise RuntimeError(f"DDP ranks diverged: parameter hashes {hashes}")
        info_sync = {"ranks_in_sync": True}
    if data is not None:
        info_sync["data"] = data
    path = (checkpoint_dir or _checkpoints_dir()) / f"{out_name}.safetensors"
    if run.dist.main:
        path = save_backbone(run.method.backbone, out_name, backbone_info(run, h, info_sync), checkpoint_dir)
        emit(run.on_event, step=run.step, total=run.sched.total, kind="result", message=str(path))
    if run.dist.enabled:
        dist.barrier()
    return path


def _checkpoints_dir() -> Path:
    from engine.paths import checkpoints_dir

    return checkpoints_dir()


def _totals(run: Run) -> dict[str, Any]:
    """A warm start's lineage and the training summed over every window (epochs, images seen, seconds)."""
    w = run.warm_start
    if not w:
        return {}
    epochs, seen = run.step / run.sched.steps_per_epoch, run.step * run.cfg.batch_size
    return {"warm_start": w, "epochs_total": w["epochs_before"] + epochs,
            "images_seen_total": w["images_seen_before"] + seen,
            "train_seconds_total": round(w["train_seconds_before"] + run.train_seconds, 1)}


def _online_summary(run: Run) -> dict[str, Any] | None:
    """The online evaluation's set and readings ([step, auc, auc_se, acc]), or None when it was off."""
    online = run.monitor.online
    if online is None:
        return None
    rows = [[h["step"], h["online_auc"], h["online_auc_se"], h["online_acc"]]
            for h in run.monitor.history if "online_auc" in h]
    return {**online.describe(), "readings": rows, "final": rows[-1] if rows else None}


def backbone_info(run: Run, h: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint json's training record (docs/design.md, "SSL pretraining"); `h` = param_hash."""
    cfg, losses = run.cfg, [r["loss"] for r in run.history]
    stride = max(1, len(run.history) // 200)
    collapse = run.monitor.history
    return {
        "method": cfg.method, "arch": cfg.arch, "init": cfg.init, "config": cfg.to_dict(),
        "steps": run.step, "total_steps": run.sched.total, "epochs": run.step / run.sched.steps_per_epoch,
        "images_seen": run.step * cfg.batch_size, "data_fingerprint": run.fingerprint,
        "n_images": len(run.images), "image_size": cfg.image_size, "world_size": run.dist.world,
        "device": describe(run.device), "run_dir": str(run.run_dir), "param_hash": h, **extra,
        "train_seconds": round(run.train_seconds, 1), "torch": torch.__version__,
        "collapse": {"final": ({k: v for k, v in collapse[-1].items() if k != "step"} if collapse else {}),
                     "history": collapse, **metric_definitions()},  # sets + labels of both metric sets
        "collapse_control": run.control.summary() if run.control is not None else None,
        "online_eval": _online_summary(run),
        **_totals(run),
        "loss": ({"first": losses[0], "last": losses[-1], "min": min(losses),
                  "last_mean": float(np.mean(losses[-max(1, len(losses) // 10):])),
                  "curve": [[r["step"], r["loss"]] for r in run.history[::stride]]} if losses else {}),
    }
