"""CLI: `python -m engine pretrain ...` (self-supervised pretraining with a progress bar).

Multi-GPU / multi-process: `torchrun --nproc_per_node=N -m engine pretrain ...` (or
`python -m torch.distributed.run ...`); --batch-size is the global batch. Ctrl-C stops after the
current step, saves the resumable state and prints the command that resumes it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from typing import Any

from engine.ssl.presets import PRESET_HELP, PRESETS
from engine.ssl.registry import METHODS, method_names

METHOD_NAMES = method_names()  # the registry's (engine/ssl/registry.py, torch-free)


def _collapse_control_help() -> str:
    knobs = "; ".join(f"{n}: {s.collapse_knob.weight}" for n, s in METHODS.items() if s.collapse_knob is not None)
    without = ", ".join(n for n, s in METHODS.items() if s.collapse_knob is None)
    return ("adaptive collapse control: at every collapse-monitor reading, double the method's regularization weight "
            f"({knobs}) when the head's effective rank is below TARGET, halve it when the rank is >= 1.25 x TARGET, "
            "TARGET auto (erank:auto or erank) = the run's first reading, "
            "within [w0/8, w0*16] (w0 = the configured weight, or the method's reference when 0). "
            f"Also centred_erank:TARGET. Not for {without} (no such term)")


def register(sub) -> None:
    p = sub.add_parser(
        "pretrain", help=f"self-supervised pretraining of a backbone ({', '.join(METHOD_NAMES)})",
        description="Pretrain a ResNet on unlabeled X-rays and export checkpoints/<out>.safetensors. "
                    "Run under `torchrun --nproc_per_node=N -m engine pretrain ...` for several GPUs/processes.",
    )
    p.add_argument("--method", choices=METHOD_NAMES, default="moco_v2")
    p.add_argument("--arch", choices=("resnet18", "resnet50"), default="resnet18")
    p.add_argument("--data", required=True, help="manifest CSV (its split=test rows are left out) or a folder of images")
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's (paper: the published run "
                   "length, e.g. 200 for moco_v2), else 100")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch over all processes (default: the preset's, e.g. 2048 for barlow_twins paper, "
                        "else 256)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--out", required=True, help="checkpoint name: writes checkpoints/<out>.safetensors + .json")
    p.add_argument("--resume", action="store_true", help="continue from the run's saved state")
    p.add_argument("--replace", action="store_true",
                   help="overwrite an existing backbone of this name, or take the name from a run that stopped "
                        "before finishing (never from a running one, never a shipped backbone's name)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (default)")
    p.add_argument("--init", default="random", metavar="random|imagenet|CHECKPOINT",
                   help="start from random weights, ImageNet's (MoCo-transfer), or a checkpoint of the same arch "
                        "(a warm start: e.g. --init cxr-moco_v2-resnet18-224 continues the shipped backbone with "
                        "a new schedule; heads and optimizer start afresh; the json records the lineage and the "
                        "epochs summed over every run)")
    p.add_argument("--data-on-device", choices=("auto", "on", "off"), default="auto",
                   help="hold all images on the training device and index batches there (auto = on CUDA when they "
                        "take < 1/4 of its free memory)")
    p.add_argument("--sync-every", type=int, default=None, metavar="N",
                   help="read the losses back to the host every N steps (default 1 on CPU, 20 on CUDA); a NaN is "
                        "then caught up to N-1 steps late, the saved state is always from before it")
    p.add_argument("--lr", type=float, default=None, help="peak lr (default: the method's base lr x batch / 256)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-epochs", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (the schedule fits them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500, help="write the resumable state every N steps")
    p.add_argument("--save-every-seconds", type=float, default=300.0,
                   help="also write it every N seconds of wall clock, so a kill loses at most that (0: off)")
    p.add_argument("--monitor-every", type=int, default=100, help="collapse metrics every N steps (0 = off)")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="mixed precision (auto = on CUDA)")
    p.add_argument("--threads", default="auto",
                   help="CPU threads for training: auto (default) times 1 thread against all cores before training "
                        "and keeps the faster (a busy machine runs far faster on 1), or a number")
    p.add_argument("--run-dir", default=None, help="state folder (default <workspace>/runs/<out>)")
    p.add_argument("--include-test-split", action="store_true", help="also pretrain on a manifest's split=test rows")
    p.add_argument("--preset", choices=PRESETS, default="paper",
                   help="recipe: " + "; ".join(f"{k} = {v}" for k, v in PRESET_HELP.items())
                        + f" (long for {', '.join(n for n, s in METHODS.items() if 'long' in s.presets)}). "
                        "Runs stored before `study` existed under --preset paper resume with their recorded "
                        "settings (engine/ssl/presets.py). --epochs, --lr, --opt and --aug override any")
    p.add_argument("--collapse-control", default=None, metavar="erank[:TARGET|auto]", help=_collapse_control_help())
    p.add_argument("--online-eval", default=None, metavar="MANIFEST:FINDING",
                   help="online evaluation: kNN AUC of the backbone's features on this labeled set (at most 400 "
                        "images, half memory, half scored) at collapse-monitor readings (engine/ssl/online_eval.py)")
    p.add_argument("--online-eval-every", type=int, default=None, metavar="N",
                   help="run the online evaluation every N monitor readings (default 1)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method setting, repeatable, e.g. "
                        + ", ".join(f"--opt {s.opt_example} ({n})" for n, s in METHODS.items()))
    p.add_argument("--aug", action="append", default=[], metavar="KEY=VALUE",
                   help="augmentation setting, repeatable (engine/ssl/augment.py AugmentConfig), e.g. "
                        "--aug crop_scale=0.3,1 --aug blur_p=0.5 --aug noise_std=0.05")
    p.set_defaults(func=_pretrain)


def _parse_value(default: Any, text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "auto", "null") and (default is None or isinstance(default, bool)):
        return None
    if isinstance(default, bool) or (default is None and low in ("true", "false", "on", "off")):
        if low not in ("true", "false", "on", "off", "1", "0"):
            raise ValueError(f"expected true/false, got {text!r}")
        return low in ("true", "on", "1")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, tuple):
        return tuple(float(x) for x in text.split(","))
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def method_overrides(method: str, items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings -> typed fields of the method's config dataclass (clear errors for typos)."""
    from engine.ssl.registry import get_method

    return _overrides(get_method(method).config_cls, items, "--opt", method)


def aug_overrides(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings -> typed fields of AugmentConfig (clear errors for typos)."""
    from engine.ssl.augment import AugmentConfig

    return _overrides(AugmentConfig, items, "--aug", "the augmentation")


def _overrides(cls: type, items: list[str], flag: str, what: str) -> dict[str, Any]:
    method = what
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)} for {method}")
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else None
        try:
            out[key] = _parse_value(default, val)
        except ValueError as e:
            raise ValueError(f"{flag} {item!r}: {e}") from None
    return out


def _resume_command(args: argparse.Namespace) -> str:
    skip = {"func", "command", "resume", "replace", "opt", "aug", "threads"}  # --resume implies --replace
    parts = ["python", "-m", "engine", "pretrain"]
    for k, v in vars(args).items():
        if k in skip or v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        parts += [flag] if v is True else [flag, str(v)]
    for o in args.opt:
        parts += ["--opt", o]
    for o in args.aug:
        parts += ["--aug", o]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return f"torchrun --nproc_per_node={world} " + shlex.join(parts[1:] + ["--resume"])
    return shlex.join(parts + ["--resume"])


def _set_threads(args: argparse.Namespace, cfg: Any, main: bool) -> None:
    """--threads on a CPU run of one process (engine.device.configure_cpu_threads); GPU/torchrun runs keep torch's."""
    from engine.device import configure_cpu_threads, resolve_device

    if resolve_device(args.device).type != "cpu" or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    _, why = configure_cpu_threads(args.threads, cfg.arch, cfg.image_size, min(cfg.batch_size, 32))
    if main:
        print(why, file=sys.stderr)


def _config(args: argparse.Namespace) -> Any:
    """The PretrainConfig the flags ask for: --preset, then --opt / --aug and the plain flags over it."""
    from engine.ssl.presets import build_config

    return build_config(
        args.method, args.preset, method_opts=method_overrides(args.method, args.opt),
        aug_opts=aug_overrides(args.aug),
        arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
        image_size=args.image_size, lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        seed=args.seed, max_steps=args.max_steps, save_every_steps=args.save_every,
        save_every_seconds=args.save_every_seconds,
        monitor_every_steps=args.monitor_every, amp={"auto": None, "on": True, "off": False}[args.amp],
        init=args.init, collapse_control=args.collapse_control,
        data_on_device={"auto": None, "on": True, "off": False}[args.data_on_device],
        sync_every_steps=args.sync_every, online_eval=args.online_eval, online_eval_every=args.online_eval_every,
    )


def _resumed_config(args: argparse.Namespace, main: bool) -> Any:
    """`_config(args)`; for a --resume of a run started when its preset meant other settings (`paper` before
    `study` existed, engine.ssl.presets.RENAMED), the old meaning, so it continues with its recorded numbers."""
    from pathlib import Path

    from engine.paths import sub
    from engine.ssl.presets import RENAMED, recorded_settings, same_settings

    cfg = _config(args)
    old_name = RENAMED.get((args.method, args.preset))
    if not args.resume or old_name is None:
        return cfg
    recorded = recorded_settings(Path(args.run_dir) if args.run_dir else sub(None, "runs") / args.out)
    if recorded is None or same_settings(recorded, cfg):
        return cfg
    legacy = _config(argparse.Namespace(**{**vars(args), "preset": old_name}))
    if not same_settings(recorded, legacy):
        return cfg  # other settings: the resume says which differ
    if main:
        print(f"this run was started when --preset {args.preset} meant what --preset {old_name} means now; "
              f"resuming with its recorded settings ({old_name})", file=sys.stderr)
    return legacy


def _metrics_line(step: int | None, m: dict[str, float]) -> str:
    """One printed line per collapse-monitor reading: the product metrics, then the study's."""
    nan = float("nan")
    return (f"step {step}: collapse std {m['collapse_std']:.3f} cos {m['collapse_cos']:.3f} "
            f"erank {m['collapse_erank']:.1f} (backbone std {m['collapse_backbone_std']:.3f} "
            f"erank {m['collapse_backbone_erank']:.1f}) | study: raw std "
            f"{m.get('collapse_raw_std', nan):.3g} centred erank "
            f"{m.get('collapse_centred_erank', nan):.1f} (backbone raw std "
            f"{m.get('collapse_backbone_raw_std', nan):.3g} centred erank "
            f"{m.get('collapse_backbone_centred_erank', nan):.1f})"
            + (f" | control weight {m['collapse_control_weight']:.4g}" if "collapse_control_weight" in m else "")
            + (f" | online kNN AUC {m['online_auc']:.3f} +/- {m['online_auc_se']:.3f} acc {m['online_acc']:.3f} "
               f"(majority {m['online_majority_acc']:.3f})" if "online_auc" in m else ""))


class _Console:
    """The run's events on the terminal (rank 0): progress bars for caching and training, lines for the rest."""

    def __init__(self, method: str, main: bool) -> None:
        from tqdm import tqdm

        self.tqdm, self.method, self.main = tqdm, method, main
        self.bars: dict[str, Any] = {}

    def __call__(self, e: Any) -> None:
        if not self.main:
            return
        if e.kind == "progress" and e.total:
            self._progress(e)
        elif e.kind == "warning":
            self.tqdm.write(f"warning: {e.message}", file=sys.stderr)
        elif e.kind == "metrics":
            self.tqdm.write(_metrics_line(e.step, e.metrics))
        elif e.kind == "log" and e.message:
            self.tqdm.write(e.message)

    def _progress(self, e: Any) -> None:
        key = "train" if "loss" in e.metrics else "prepare"  # training steps / cache building
        if key == "train" and "prepare" in self.bars:
            self.bars.pop("prepare").close()
        bar = self.bars.get(key)
        if bar is None or bar.total != e.total:
            if bar is not None:
                bar.close()
            bar = self.bars[key] = self.tqdm(total=e.total, initial=e.step or 0,
                                             unit="step" if key == "train" else "img",
                                             desc=self.method if key == "train" else "images", dynamic_ncols=True)
        if key == "prepare" and e.message:
            bar.set_description_str(e.message[:40], refresh=False)
        if "loss" in e.metrics:
            bar.set_postfix(loss=f"{e.metrics['loss']:.4f}", lr=f"{e.metrics['lr']:.2e}", refresh=False)
        bar.update((e.step or 0) - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _pretrain(args: argparse.Namespace) -> int:
    import signal
    import threading
    from pathlib import Path

    from engine.events import Cancelled
    from engine.ssl.pretrain import pretrain_from_data

    main = int(os.environ.get("RANK", "0")) == 0
    cfg = _resumed_config(args, main)
    stop = threading.Event()
    console = _Console(args.method, main)

    def on_sigint(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if main:
            console.tqdm.write("stopping after this step and saving the state (Ctrl-C again to abort without "
                               "saving)", file=sys.stderr)

    # The name is reserved (engine.reservations) before any work, by rank 0 for all ranks: refused when a
    # backbone of that name exists or another run holds it, unless --resume / --replace; kept after a
    # crash or Ctrl-C (for --resume), released once the backbone is exported.
    from engine.paths import checkpoints_dir
    from engine.reservations import process_owner, release_checkpoint, reserve_checkpoint

    owner = process_owner()
    if main:
        reserve_checkpoint(args.out, owner, checkpoints_dir(), replace=args.replace or args.resume)
    _set_threads(args, cfg, main)
    in_main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None
    try:
        path = pretrain_from_data(
            args.data, cfg, args.out, device=args.device, run_dir=Path(args.run_dir) if args.run_dir else None,
            on_event=console, stop=stop, resume=args.resume, include_test=args.include_test_split,
        )
    except Cancelled as e:
        if main:
            print(f"\n{e}\nResume with:\n  {_resume_command(args)}", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, old)
        console.close()
    if main:
        release_checkpoint(args.out, owner, checkpoints_dir())  # exported: the file now holds the name
        print(path)
    return 0
