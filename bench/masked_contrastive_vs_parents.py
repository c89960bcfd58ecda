"""Masked-contrastive hybrid vs its parents (MoCo v2, SparK): same data, same budget, real labeled tasks.

Issue 16 item 2. Each method is pretrained once with the `quick` recipe (engine/ssl/presets.py) on the
non-test images of `--pretrain-data` (default ../shared/data/kermany224/manifest.csv) at `--size` px,
`--steps` steps at batch `--batch-size`, seed `--seed`; then a `--shots`-shot linear probe is swept on
every `--eval` manifest (default kermany224 and nih_pneumonia, their own test splits) with `--trials`
paired trials against random init (engine.fewshot.sweep.run_sweep; engine.fewshot.metrics.paired_differences),
and the hybrid is also compared with each parent per trial.

    .venv/bin/python bench/masked_contrastive_vs_parents.py                       # ~15 min on 2 CPU cores
    .venv/bin/python bench/masked_contrastive_vs_parents.py --steps 100 --trials 5  # a quick look

Writes <workdir>/results.md and results.json (default artifacts/masked_contrastive_vs_parents). Resumable.
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="masked_contrastive,moco_v2,spark")
    p.add_argument("--pretrain-data", default=str(DATA / "kermany224" / "manifest.csv"))
    p.add_argument("--eval", default=f"{DATA / 'kermany224' / 'manifest.csv'},{DATA / 'nih_pneumonia' / 'manifest.csv'}")
    p.add_argument("--finding", default="pneumonia")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default=str(ROOT / "artifacts" / "masked_contrastive_vs_parents"))
    return p.parse_args(argv)


def paired(trials, a: str, b: str) -> dict:
    """Per-trial AUC difference a - b (engine.fewshot.metrics.paired_differences with b as the baseline)."""
    from engine.fewshot.metrics import paired_differences

    rows = paired_differences(trials[trials["init"].isin([a, b])], b)
    return {"a": a, "b": b, **rows[0]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir).resolve()
    os.environ["SCARCE_CXR_CHECKPOINTS"] = str(work / "checkpoints")  # before engine reads it
    os.environ.setdefault("SCARCE_CXR_WORKSPACE", str(work / "workspace"))
    from engine.fewshot.metrics import paired_differences
    from engine.fewshot.sweep import SweepConfig, run_sweep
    from engine.ssl import pretrain_from_data
    from engine.ssl.presets import build_config

    work.mkdir(parents=True, exist_ok=True)
    names, seconds = [], {}
    for method in [m for m in args.methods.split(",") if m]:
        name = f"{method}-quick-{args.steps}steps-{args.size}px-s{args.seed}"
        cfg = build_config(method, "quick", epochs=10_000, max_steps=args.steps, batch_size=args.batch_size,
                           image_size=args.size, seed=args.seed, monitor_every_steps=max(1, args.steps // 4),
                           save_every_steps=max(1, args.steps // 4))
        out = work / "checkpoints" / f"{name}.safetensors"
        if not out.exists():
            t0 = time.time()
            print(f"pretraining {name} on {args.pretrain_data} ...", flush=True)
            pretrain_from_data(args.pretrain_data, cfg, name, device=args.device, run_dir=work / "runs" / name,
                               resume=True)
            print(f"  done in {time.time() - t0:.0f}s", flush=True)
        info = json.loads(out.with_suffix(".json").read_text())
        seconds[name] = info.get("train_seconds")
        names.append(name)

    lines = [f"# masked_contrastive vs MoCo v2 vs SparK (quick recipe, {args.steps} steps, batch {args.batch_size}, "
             f"{args.size} px, seed {args.seed})",
             f"pretrained on the non-test images of {args.pretrain_data}; {args.shots}-shot linear probe on "
             f"'{args.finding}', {args.trials} paired trials per task; d = AUC minus the other init's in the same trial",
             "", "training seconds: " + ", ".join(f"{n} {s}" for n, s in seconds.items()), ""]
    out_rows = []
    for manifest in [m for m in args.eval.split(",") if m]:
        task = Path(manifest).parent.name
        scfg = SweepConfig(findings=(args.finding,), inits=("random", *names), modes=("probe",), shots=(args.shots,),
                           trials=args.trials, image_size=args.size, seed=args.seed)
        print(f"probe sweep on {task} ...", flush=True)
        res = run_sweep(manifest, scfg, work / f"sweep-{task}", args.device, resume=True)
        from engine.fewshot.metrics import uncertainty_of, uncertainty_text

        lines += [f"## {task}", "", uncertainty_text(uncertainty_of(res.trials)), "",
                  "| init | AUC | d vs random | SE | wins |", "|---|---|---|---|---|"]
        for r in paired_differences(res.trials, "random"):
            lines.append(f"| {r['init']} | {r['auc']:.3f} (random {r['auc_random']:.3f}) | {r['diff']:+.3f} | "
                         f"{r['se']:.3f} | {r['wins']}/{r['n']} |")
            out_rows.append({"task": task, **r})
        hybrid = [n for n in names if n.startswith("masked_contrastive")]
        if hybrid:
            lines += ["", "| hybrid vs | d | SE | wins |", "|---|---|---|---|"]
            for other in names:
                if other != hybrid[0]:
                    p = paired(res.trials, hybrid[0], other)
                    lines.append(f"| {other} | {p['diff']:+.3f} | {p['se']:.3f} | {p['wins']}/{p['n']} |")
                    out_rows.append({"task": task, "pair": True, **p})
        lines.append("")
    text = "\n".join(lines)
    print(text, flush=True)
    (work / "results.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps({"args": vars(args), "rows": out_rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
