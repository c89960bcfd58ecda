"""Adaptive collapse control on a collapse-prone configuration: controlled vs uncontrolled, same seed.

Issue 16 item 1. Two MoCo v2 runs differ only in `--collapse-control METRIC:TARGET` (default erank:48;
the controller adjusts MoCo's feature-decorrelation weight, engine/ssl/registry.py): the `quick`
recipe made collapse-prone on purpose (plain head without BatchNorm or centred output, VICReg variance
weight 0, key momentum 0.999), pretrained on the non-test images of `--data` (default
../shared/data/kermany224/manifest.csv, homogeneous chest X-rays) at 64 px for `--steps` steps at batch
32 on a CPU. Prints the monitored head effective rank (uncentred, RankMe) of both runs side by side at
every reading, the controller's adjustments, then a paired `--shots`-shot linear probe (`--trials`
trials; engine.fewshot.metrics.paired_differences) of both backbones and random init on `--finding`.

    .venv/bin/python bench/collapse_control.py                      # 100 steps, 10 trials: ~25 min on 2 CPU cores
    .venv/bin/python bench/collapse_control.py --metric centred_erank --target 90

Writes <workdir>/results.md and results.json (default artifacts/collapse_control). Resumable.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
# quick MoCo v2 made collapse-prone: no head BN / centred output, no variance term, slow key encoder
COLLAPSE_PRONE = {"head_bn": False, "head_out_bn": False, "var_weight": 0.0, "m": 0.999}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA / "kermany224" / "manifest.csv"))
    p.add_argument("--finding", default="pneumonia")
    p.add_argument("--metric", default="erank", choices=["erank", "centred_erank"],
                   help="the monitored rank the controller acts on (RankMe-style or the study's centred)")
    p.add_argument("--target", type=float, default=48.0, help="rank target of the controlled run")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--monitor-every", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default=str(ROOT / "artifacts" / "collapse_control"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir).resolve()
    os.environ["SCARCE_CXR_CHECKPOINTS"] = str(work / "checkpoints")  # before engine reads it
    os.environ.setdefault("SCARCE_CXR_WORKSPACE", str(work / "workspace"))
    work.mkdir(parents=True, exist_ok=True)
    infos, names = pretrain_both(args, work)
    lines, ctl = control_table(args, infos)
    probe_lines, rows = probe_table(args, work, names)
    text = "\n".join(lines + probe_lines)
    print(text, flush=True)
    (work / "results.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps({"args": vars(args), "probe": rows, "control": ctl,
                                                   "history": {k: v["collapse"]["history"] for k, v in infos.items()}},
                                                  indent=1, default=str))
    return 0


def pretrain_both(args: argparse.Namespace, work: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """The uncontrolled and the controlled run (skipped when already exported): ({label: backbone
    JSON}, {label: backbone name})."""
    from engine.ssl import pretrain_from_data
    from engine.ssl.presets import build_config

    runs = {"uncontrolled": None, "controlled": f"{args.metric}:{args.target:g}"}
    infos, names = {}, {}
    for label, control in runs.items():
        spec = f"-{args.metric}{args.target:g}" if control else ""
        name = names[label] = f"moco_v2-collapse-prone-{label}{spec}-{args.steps}steps-s{args.seed}"
        cfg = build_config("moco_v2", "quick", method_opts=COLLAPSE_PRONE, epochs=10_000, max_steps=args.steps,
                           batch_size=args.batch_size, image_size=args.size, seed=args.seed,
                           monitor_every_steps=args.monitor_every, save_every_steps=max(1, args.steps // 4),
                           collapse_control=control)
        out = work / "checkpoints" / f"{name}.safetensors"
        if not out.exists():
            t0 = time.time()
            print(f"pretraining {name} ...", flush=True)
            pretrain_from_data(args.data, cfg, name, device=args.device, run_dir=work / "runs" / name, resume=True,
                               on_event=lambda e: e.kind == "log" and "collapse control" in e.message
                               and print("  " + e.message, flush=True))
            print(f"  done in {time.time() - t0:.0f}s", flush=True)
        infos[label] = json.loads(out.with_suffix(".json").read_text())
    return infos, names


def control_table(args: argparse.Namespace, infos: dict[str, dict]) -> tuple[list[str], dict]:
    """Markdown lines comparing both runs' monitored erank step by step, and the controller's record."""
    hist = {k: {h["step"]: h for h in v["collapse"]["history"]} for k, v in infos.items()}
    metric = args.metric
    lines = [f"# Collapse control: MoCo v2 quick made collapse-prone ({COLLAPSE_PRONE}), {args.steps} steps, "
             f"batch {args.batch_size}, {args.size} px, seed {args.seed}; data {args.data}",
             f"controlled: --collapse-control {metric}:{args.target:g} on MoCo v2's feature-decorrelation weight "
             "(x2 below target, x0.5 at >= 1.25 x target, within [b/8, 16 b], b = 0.1 since w0 = 0)", "",
             "| step | erank uncontrolled | erank controlled | decorr_weight in use (controlled) | centred erank unc. | "
             "centred erank ctl. |", "|---|---|---|---|---|---|"]
    for step in sorted(hist["controlled"]):
        u, c = hist["uncontrolled"].get(step, {}), hist["controlled"][step]
        lines.append(f"| {step} | {u.get('erank', float('nan')):.2f} | {c['erank']:.2f} | "
                     f"{c.get('control_weight', float('nan')):.4g} | {u.get('centred_erank', float('nan')):.2f} | "
                     f"{c['centred_erank']:.2f} |")
    ctl = infos["controlled"]["collapse_control"]
    lines += ["", f"adjustments ({len(ctl['adjustments'])}): " + "; ".join(
        f"step {a['step']} {a['action']} {a['old']:.3g}->{a['new']:.3g} ({metric} {a['value']:.2f})"
        for a in ctl["adjustments"]), ""]
    post = [s for s in hist["controlled"] if s > 0]
    below = {k: sum(hist[k][s][metric] < args.target for s in post if s in hist[k]) for k in hist}
    lines.append(f"readings after step 0 below target {args.target:g}: uncontrolled {below['uncontrolled']}/{len(post)}, "
                 f"controlled {below['controlled']}/{len(post)}; final {metric} uncontrolled "
                 f"{infos['uncontrolled']['collapse']['final'][metric]:.2f}, controlled "
                 f"{infos['controlled']['collapse']['final'][metric]:.2f}")
    return lines, ctl


def probe_table(args: argparse.Namespace, work: Path, names: dict[str, str]) -> tuple[list[str], list[dict]]:
    """The paired few-shot probe sweep of random init and both runs: (markdown lines, rows)."""
    from engine.fewshot.metrics import paired_differences, uncertainty_of, uncertainty_text
    from engine.fewshot.sweep import SweepConfig, run_sweep

    scfg = SweepConfig(findings=(args.finding,), inits=("random", names["uncontrolled"], names["controlled"]),
                       modes=("probe",), shots=(args.shots,), trials=args.trials, image_size=args.size, seed=args.seed)
    print("probe sweep ...", flush=True)
    res = run_sweep(args.data, scfg, work / "sweep", args.device, resume=True)
    lines = ["", f"{args.shots}-shot linear probe on {args.finding}, {args.trials} paired trials "
             f"({uncertainty_text(uncertainty_of(res.trials))}):", "",
             "| init | baseline | AUC | baseline AUC | d | SE | wins |", "|---|---|---|---|---|---|---|"]
    rows = []
    t = res.trials
    for base in ("random", names["uncontrolled"]):
        sub = t if base == "random" else t[t["init"].isin([names["uncontrolled"], names["controlled"]])]
        for r in paired_differences(sub, base):
            rows.append({"baseline": base, **r})
            lines.append(f"| {r['init']} | {base} | {r['auc']:.3f} | {r['auc_random']:.3f} | {r['diff']:+.3f} | "
                         f"{r['se']:.3f} | {r['wins']}/{r['n']} |")
    return lines, rows

if __name__ == "__main__":
    sys.exit(main())
