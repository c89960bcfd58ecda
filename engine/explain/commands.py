"""CLI: `python -m engine gradcam` -- one finding across several inits, with localization scores."""
from __future__ import annotations

import json
import sys

from engine.fewshot.modes import MODES


def register(sub) -> None:
    p = sub.add_parser(
        "gradcam",
        help="train one k-shot classifier per init, explain held-out positives, score localization",
        description="Writes DIR/grid_<image>.png (original at left, one column per init), "
        "DIR/localization.csv (one row per image x init) and DIR/summary.csv (mean and 95%% CI per init).",
    )
    p.add_argument("--manifest", required=True, help="manifest CSV")
    p.add_argument("--finding", required=True)
    p.add_argument("--inits", default="random", help="comma-separated inits (see `python -m engine inits`)")
    p.add_argument("--shots", type=int, default=20, help="training images per class (k)")
    p.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "scorecam", "ablationcam"])
    p.add_argument("--mode", default="probe", choices=list(MODES),
                   help="classifier on each init (the head recipe: probe; finetune = the Classifier's last stage; "
                        "full_finetune = the whole backbone, the seed study's)")
    p.add_argument("--layer", default=None, help="target layer (default: the arch's last stage, e.g. layer4)")
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--boxes", default=None, help="boxes CSV (path, finding, x, y, w, h); default: the manifest's")
    g.add_argument("--masks", default=None, help="masks CSV (path, finding, mask_path); default: the manifest's")
    p.add_argument("--n-images", type=int, default=8, help="held-out positives to explain")
    p.add_argument("--image-size", type=int, default=None,
                   help="pixels (default: the largest of the inits' own input sizes; inits trained at another size "
                        "are warned about)")
    p.add_argument("--fit", default="pad", choices=["pad", "crop"], help="how images are fitted to the square")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finetune-steps", type=int, default=None, help="step budget of finetune / full_finetune "
                   "(default 50)")
    p.add_argument("--arch", default=None, help="arch of random/imagenet inits (default resnet18)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--episodes", type=int, default=3, help="training episodes per init; scores get a 95%% "
                   "t-interval across episodes (needs 2 or more)")
    p.add_argument("--no-sanity", action="store_true", help="skip the randomization sanity check (Adebayo et al. "
                   "2018: maps of the head- and backbone-randomized model, rank-correlated with the real map)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=_gradcam)


def _gradcam(args) -> int:
    from engine.device import resolve_device
    from engine.explain.study import GradCAMStudyConfig, run_gradcam_study_from_config

    def on_event(e) -> None:
        if e.kind in ("warning", "result") or (e.kind == "progress" and e.message):
            prefix = "warning: " if e.level == "warning" else ""
            print(prefix + e.message, file=sys.stderr)

    cfg = GradCAMStudyConfig(
        args.manifest, args.finding, tuple(args.inits.split(",")), args.out,
        shots=args.shots, method=args.method, mode=args.mode, layer=args.layer, n_images=args.n_images,
        image_size=args.image_size, fit_mode=args.fit, boxes_csv=args.boxes, masks_csv=args.masks,
        seed=args.seed, finetune_steps=args.finetune_steps, arch=args.arch, batch_size=args.batch_size,
        episodes=args.episodes, sanity=not args.no_sanity,
    )
    loc, summary, grids = run_gradcam_study_from_config(cfg, resolve_device(args.device), on_event=on_event)
    print(format_summary(summary))
    print(json.dumps({"out": args.out, "grids": len(grids), "rows": len(loc)}))
    return 0


def format_summary(summary) -> str:
    """One line per finding x init: each score as `mean [lo, hi]` (95% bootstrap interval over images x
    episodes), then the yardstick table (engine.explain.yardstick: chance, content-free baselines, gains and
    sanity checks with t-intervals across episodes) and its legend."""
    import textwrap

    from engine.explain.localization import METRICS
    from engine.explain.yardstick import YARDSTICK_LEGEND, yardstick_tables

    if not len(summary):
        return "(no scored images)"
    lines = [f"{'finding':24s} {'init':24s} {'n':>3s}  " + "  ".join(f"{m:>22s}" for m in METRICS)]
    for r in summary.to_dict("records"):
        cells = [f"{r[m + '_mean']:.3f} [{r[m + '_lo']:.3f}, {r[m + '_hi']:.3f}]" for m in METRICS]
        lines.append(f"{r['finding']:24s} {r['init']:24s} {r['n']:3d}  " + "  ".join(f"{c:>22s}" for c in cells))
    tables = yardstick_tables(summary)
    for title, table in tables.items():
        lines += ["", f"{title}:", table.to_string(index=False)]
    if tables:
        lines += ["", *textwrap.wrap(YARDSTICK_LEGEND, 110)]
    return "\n".join(lines)
