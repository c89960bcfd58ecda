"""Does a short SSL pretraining beat random init? Pretrain each method, then a paired few-shot probe sweep.

Issue #3's quality check, end to end through the product's own code:

1. data: a phantom workspace (`--n` images at `--size` px, 25% test split, all 8 findings) made by
   engine.data.phantom, or `--data MANIFEST` (e.g. ../shared/data/kermany224/manifest.csv). The
   test split is never pretrained on.
2. pretraining: `engine.ssl.pretrain_from_data` for each method with the `--preset` recipe
   (engine/ssl/presets.py; default `quick`), `--steps` steps at batch `--batch-size`, seed `--seed`.
   Runs resume: a re-run after a crash or Ctrl-C continues where it stopped.
3. evaluation: `engine.fewshot.sweep.run_sweep`, linear probe at `--shots` shots per class, `--trials`
   trials per finding. Trials are paired: every init trains on the same images in a given trial, so
   the printed difference to random init is a per-trial difference, with its standard error over
   trials and the number of trials the method wins.

Everything is written under `--workdir` (default ./artifacts/ssl_vs_random): checkpoints/, runs/,
sweep/ (trials.csv, summary.csv, auc_vs_shots.html) and results.md / results.json.

    .venv/bin/python bench/ssl_vs_random.py                       # phantom, 4 methods, ~15 min on 2 cores
    .venv/bin/python bench/ssl_vs_random.py --methods spark --steps 100 --trials 5   # a quick look
    .venv/bin/python bench/ssl_vs_random.py --data ../shared/data/kermany224/manifest.csv --size 64 \\
        --steps 576 --trials 10 --device cuda                     # real X-rays (normal vs pneumonia)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from engine.ssl.registry import method_names  # noqa: E402  (torch-free)

# every registered method but masked_contrastive, which bench/masked_contrastive_vs_parents.py measures
METHODS = tuple(m for m in method_names() if m != "masked_contrastive")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--preset", default="quick", help="engine/ssl/presets.py recipe: quick | paper")
    p.add_argument("--data", default=None, help="manifest CSV (default: a generated phantom workspace)")
    p.add_argument("--findings", default=None, help="comma-separated (default: all of the manifest's)")
    p.add_argument("--n", type=int, default=800, help="phantom images")
    p.add_argument("--size", type=int, default=64, help="image size for pretraining and the probe")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="pretraining seed (and phantom seed)")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default=str(ROOT / "artifacts" / "ssl_vs_random"))
    return p.parse_args(argv)


def z_threshold(n_findings: int, alpha: float = 0.05) -> float:
    """One-sided z a difference must exceed when the best of `n_findings` findings is reported.

    Picking the best of several findings is a multiple comparison: with 8 findings, at least one clears
    d > 2 SE by chance far more often than 2.3% of the time. Bonferroni: each finding is tested at
    alpha / n (one-sided), so 1 finding -> 1.64, 8 findings -> 2.50.
    """
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - alpha / max(1, n_findings))


def paired_vs_random(trials, baseline: str = "random") -> list[dict]:
    """Per (finding, init != baseline, shots): engine.fewshot.metrics.paired_differences."""
    from engine.fewshot.metrics import paired_differences

    return paired_differences(trials, baseline)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir).resolve()
    os.environ["SCARCE_CXR_CHECKPOINTS"] = str(work / "checkpoints")  # before engine reads it
    os.environ.setdefault("SCARCE_CXR_WORKSPACE", str(work / "workspace"))
    import torch

    from engine.data.manifest import load_manifest
    from engine.fewshot.sweep import SweepConfig, run_sweep
    from engine.ssl import pretrain_from_data
    from engine.ssl.presets import build_config

    torch.manual_seed(args.seed)
    work.mkdir(parents=True, exist_ok=True)
    if args.data:
        manifest = Path(args.data).resolve()
    else:
        from engine.data.phantom import generate

        manifest = work / f"phantom{args.n}-{args.size}px-s{args.seed}" / "manifest.csv"
        if not manifest.exists():
            print(f"generating {args.n} phantom radiographs at {args.size} px ...", flush=True)
            generate(manifest.parent, n=args.n, size=args.size, seed=args.seed)
    findings = tuple(args.findings.split(",")) if args.findings else tuple(load_manifest(manifest).findings)
    methods = [m for m in args.methods.split(",") if m]
    names = []
    for method in methods:
        name = f"{method}-{args.preset}-{args.steps}steps-s{args.seed}"
        cfg = build_config(method, args.preset, epochs=10_000, max_steps=args.steps, batch_size=args.batch_size,
                           image_size=args.size, seed=args.seed, monitor_every_steps=max(1, args.steps // 3),
                           save_every_steps=max(1, args.steps // 5))
        t0, last = time.time(), [0.0]

        def on_event(e, method=method, t0=t0, last=last):
            now = time.time()
            if e.kind == "warning":
                print(f"  {method} step {e.step}: {e.message}", flush=True)
            elif e.kind == "progress" and e.metrics.get("loss") is not None and (now - last[0] > 20 or e.step == e.total):
                last[0] = now
                print(f"  {method} step {e.step}/{e.total} loss {e.metrics['loss']:.4f} ({now - t0:.0f}s)", flush=True)

        if not (work / "checkpoints" / f"{name}.safetensors").exists():
            print(f"pretraining {name} ...", flush=True)
            pretrain_from_data(manifest, cfg, name, device=args.device, run_dir=work / "runs" / name,
                               on_event=on_event, resume=True)
            print(f"  done in {time.time() - t0:.0f}s", flush=True)
        names.append(name)

    print(f"probe sweep: {len(findings)} findings x {len(names) + 1} inits x {args.trials} trials at {args.shots} shots",
          flush=True)
    scfg = SweepConfig(findings=findings, inits=("random", *names), modes=("probe",), shots=(args.shots,),
                       trials=args.trials, image_size=args.size, seed=args.seed)
    res = run_sweep(manifest, scfg, work / "sweep", args.device, resume=True)
    rows = paired_vs_random(res.trials)
    from engine.fewshot.metrics import uncertainty_of, uncertainty_text

    lines = [f"# SSL ({args.preset}, {args.steps} steps, batch {args.batch_size}, seed {args.seed}) vs random init",
             f"data: {manifest} ({args.size} px); {args.shots}-shot linear probe, {args.trials} paired trials; "
             "d = AUC minus random's in the same trial (mean, SE over trials), wins = trials where it is higher",
             uncertainty_text(uncertainty_of(res.trials)), "",
             "| finding | init | AUC | random | d | SE | wins |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['finding']} | {r['init']} | {r['auc']:.3f} | {r['auc_random']:.3f} | {r['diff']:+.3f} | "
                     f"{r['se']:.3f} | {r['wins']}/{r['n']} |")
    z = max(2.0, z_threshold(len(findings)))
    lines += ["", f"Best finding per method (beats random when d > {z:.2f} SE: at least 2, and the one-sided 5% "
                  f"threshold with a Bonferroni correction for picking the best of {len(findings)} findings):"]
    verdict = {}
    for name in names:
        mine = [r for r in rows if r["init"] == name]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["diff"] / (r["se"] or 1))
        beats = best["diff"] > z * best["se"]
        verdict[name] = {**best, "beats_random": bool(beats), "z_threshold": z}
        lines.append(f"- {name}: {best['finding']} {best['auc']:.3f} vs {best['auc_random']:.3f} "
                     f"(d {best['diff']:+.3f} +- {best['se']:.3f}, wins {best['wins']}/{best['n']}): "
                     + ("BEATS random" if beats else "does not beat random"))
    text = "\n".join(lines)
    print(text, flush=True)
    (work / "results.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "verdict": verdict}, indent=1))
    print(f"\nwritten: {work / 'results.md'}, {work / 'sweep'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
