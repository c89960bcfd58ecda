"""CLI: `python -m engine study` -- the seed study end to end, resumable, one report."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.study.config import StudyConfig


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def register(sub) -> None:
    import argparse

    p = sub.add_parser(
        "study", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="pretrain SSL methods, sweep few-shot probe/finetune vs random and ImageNet, Grad-CAM, one report",
        description="Runs the seed study's protocol end to end into --out: pretraining of each --methods on --pretrain "
        "(or --reuse of existing checkpoints), a shots x trials sweep on every --eval manifest against the baselines, "
        "Grad-CAM localization where a manifest has lesion boxes or masks, and OUT/report.md + OUT/report.html. "
        "Stopped (Ctrl-C) or killed, run it again with --resume and the same settings.",
    )
    p.add_argument("--pretrain", default="", help="manifest CSV or image folder to pretrain on (unlabeled is fine; "
                   "not needed when every method is --reuse'd)")
    p.add_argument("--eval", required=True, nargs="+", help="labeled manifest CSV(s) to evaluate on")
    p.add_argument("--methods", default="moco_v2", help=f"comma-separated SSL methods to pretrain: {', '.join(_method_names())}")
    p.add_argument("--findings", default="", help="comma-separated findings (default: every finding of each --eval)")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--name", default=None, help="checkpoint prefix: each method is saved as NAME-METHOD "
                   "(default: the --out folder's name)")
    p.add_argument("--preset", default="quick", help="pretraining recipe: quick (laptop), paper (each method's "
                   "published recipe), study (the seed study's: MoCo v2 with T 0.07 + the VICReg "
                   "variance term), long (engine/ssl/presets.py)")
    p.add_argument("--steps", type=int, default=None, help="cap on pretraining steps per method")
    p.add_argument("--batch-size", type=int, default=None, help="pretraining batch (default: the recipe's)")
    p.add_argument("--image-size", type=int, default=224, help="working resolution, pretraining and evaluation")
    p.add_argument("--shots", default="1,5,10,20,50", help="comma-separated labeled images per class")
    p.add_argument("--trials", type=int, default=10, help="trials per shot count")
    p.add_argument("--modes", default="probe", help="comma-separated: probe, finetune (the Classifier's: last "
                   "stage), full_finetune (whole backbone, the seed study's)")
    p.add_argument("--baselines", default="random,imagenet", help="builtin inits to compare with (imagenet: when "
                   "offline weights exist); to compare an existing backbone, e.g. the shipped one, use --reuse")
    p.add_argument("--reuse", default="", help="METHOD=CHECKPOINT,... evaluate these checkpoints instead of pretraining "
                   "(a method named only here is added), e.g. moco_v2=cxr-moco_v2-resnet18-224")
    p.add_argument("--gradcam-images", type=int, default=8, help="held-out positives explained per finding (0: no Grad-CAM)")
    p.add_argument("--gradcam-shots", type=int, default=20, help="training images per class of the Grad-CAM classifiers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue the study already in --out")
    p.set_defaults(func=_study)


def _method_names() -> list[str]:
    from engine.ssl.registry import METHODS

    return list(METHODS)


def default_name(out: str) -> str:
    """The checkpoint prefix of a study written to `out`: the folder's name, made a valid checkpoint name."""
    from pathlib import Path

    from engine.names import InvalidNameError, check_name

    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(out).resolve().name).strip("-._")[:48]
    try:
        return check_name(base or "study", "checkpoint")
    except InvalidNameError:
        return "study"


def config_from_args(args) -> StudyConfig:
    """argparse namespace -> StudyConfig (ValueError with the flag to fix)."""
    from engine.study.config import StudyConfig

    reuse = []
    for item in _csv(args.reuse):
        method, sep, name = item.partition("=")
        if not sep or not method or not name:
            raise ValueError(f"--reuse {item!r}: write METHOD=CHECKPOINT, e.g. moco_v2=my-moco")
        reuse.append((method.strip(), name.strip()))
    try:
        shots = tuple(int(s) for s in _csv(args.shots))
    except ValueError:
        raise ValueError(f"--shots {args.shots!r}: write comma-separated integers, e.g. 1,5,10") from None
    return StudyConfig(
        pretrain_data=args.pretrain, eval_manifests=tuple(args.eval), methods=_csv(args.methods),
        findings=_csv(args.findings), name=args.name or default_name(args.out), preset=args.preset, steps=args.steps,
        batch_size=args.batch_size, image_size=args.image_size, shots=shots, trials=args.trials,
        modes=_csv(args.modes), baselines=_csv(args.baselines), reuse=tuple(reuse),
        gradcam_images=args.gradcam_images, gradcam_shots=args.gradcam_shots, seed=args.seed)


def _study(args) -> int:
    import signal
    import threading

    from engine.device import resolve_device
    from engine.events import Cancelled
    from engine.reservations import process_owner
    from engine.study.runner import run_study

    cfg = config_from_args(args)
    stop = threading.Event()

    def on_event(e) -> None:
        if e.message and (e.kind in ("warning", "result") or e.message.startswith("study:")):
            print(("warning: " if e.level == "warning" else "") + e.message, file=sys.stderr)

    def on_sigint(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("stopping after this step and saving the state (Ctrl-C again to abort)", file=sys.stderr)

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        res = run_study(cfg, args.out, resolve_device(args.device), on_event=on_event, stop=stop,
                        resume=args.resume, owner=process_owner())
    except Cancelled:
        print(f"stopped; continue with the same command plus --resume (folder {args.out})", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, old)
    print(json.dumps({"out": str(res.out_dir), "report": str(res.report_html), "stages": len(res.stages)}))
    return 0
