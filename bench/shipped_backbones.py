"""The shipped backbones vs random init on real labeled X-rays: paired few-shot AUC differences.

Issue #11's quality table, through the product's own sweep (engine.fewshot.sweep.run_sweep):

- tasks: `../shared/data/nih_pneumonia` (796 adult NIH images, pneumonia vs no finding, report-mined
  labels, patient-level split: a hard task) and `../shared/data/kermany224` (paediatric pneumonia:
  an easy one). Each manifest's own `split=test` images are the test pool; every trial is scored on
  its own patient-level bootstrap sample of it (the same for every init of the trial) and its shots
  are drawn from the train split, per class, patient-level (engine.fewshot.sweep).
- inits: `random` and every shipped backbone (checkpoints/shipped/), at `--image-size` (224 = the
  size they were pretrained at and the product's default).
- trials are paired: trial t of a (task, mode, shots) trains every init on the same images, so
  d = AUC(init) - AUC(random) is a per-trial difference; the table gives mean d, its standard
  error over episodes and test-set sampling (SE, engine.fewshot.metrics.resampled_se), its 95%
  interval and the trials won. A backbone "beats random" at a shot count when d >= 0.05 and the
  95% interval lies above 0 (the issue's target; results.json rows carry `uncertainty`).

    .venv/bin/python bench/shipped_backbones.py                                  # probe, 20 trials, ~15 min on 2 cores
    .venv/bin/python bench/shipped_backbones.py --modes finetune --shots 5,20 --trials 5   # the Classifier's finetune
    .venv/bin/python bench/shipped_backbones.py --device cuda --modes probe,full_finetune --trials 20  # whole backbone

Writes `--workdir` (default artifacts/shipped_backbones): per task sweep/ folders, results.md and
results.json. Re-running resumes the sweeps (rows already in trials.csv are kept).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TASKS = ("nih_pneumonia", "kermany224")  # folders of --data-root, each with its manifest.csv
TARGET_D = 0.05  # issue #11: beat random by >= 0.05 AUC ...
TARGET_Z = 2.0  # ... d > 2 SE: only for rows written before the 95% interval (ci_low) existed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inits", default=None, help="comma-separated (default: every shipped backbone)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated of {', '.join(TASKS)}")
    p.add_argument("--data-root", default=str(SHARED), help="folder holding the task folders (default ../shared/data)")
    p.add_argument("--modes", default="probe", help="probe, finetune (the Classifier's: last stage) and/or "
                   "full_finetune (whole backbone; the card's H200 rows)")
    p.add_argument("--shots", default="1,5,10,20,50")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=str(ROOT / "artifacts" / "shipped_backbones"))
    return p.parse_args(argv)


def verdict(row: dict) -> str:
    """'beats' when d >= 0.05 and the 95% interval is above 0; 'better' when only the interval is; '' otherwise.
    Rows without an interval (results.json written before) fall back to d > 2 SE."""
    lo = row.get("ci_low", row["diff"] - TARGET_Z * row["se"] if row["se"] == row["se"] else float("nan"))
    if lo == lo and lo > 0:
        return "beats" if row["diff"] >= TARGET_D else "better"
    return ""


def table(rows: list[dict]) -> list[str]:
    """The results table; an interval the small-sample floor widened ends in a mark, its note said under the table."""
    from engine.fewshot.metrics import WIDENED_MARK, interval_notes

    lines = ["| task | mode | shots | init | AUC | random | d | SE | 95% interval | wins | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = verdict(r)
        ci = f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if r.get("ci_low", float("nan")) == r.get("ci_low") else ""
        ci += WIDENED_MARK if ci and r.get("ci_note") else ""
        lines.append(f"| {r['task']} | {r['mode']} | {r['shots']} | {r['init']} | {r['auc']:.3f} | {r['auc_random']:.3f} | "
                     f"{r['diff']:+.3f} | {r['se']:.3f} | {ci} | {r['wins']}/{r['n']} | "
                     f"{'met' if v == 'beats' else ('interval > 0, d < 0.05' if v == 'better' else 'not met')} |")
    notes = interval_notes(r.get("ci_note") for r in rows)  # said once under the table (metrics.floor_interval)
    return lines + ([""] + [f"{WIDENED_MARK.strip()} {n}." for n in notes] if notes else [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir).resolve()
    os.environ.setdefault("SCARCE_CXR_WORKSPACE", str(work / "workspace"))
    from engine.fewshot.metrics import paired_differences, uncertainty_text
    from engine.fewshot.modes import RECIPE_VERSION
    from engine.fewshot.sweep import SweepConfig, run_sweep
    from engine.models import shipped_inits

    inits = args.inits.split(",") if args.inits else [i.name for i in shipped_inits()]
    if not inits:
        print("no shipped backbones found in checkpoints/shipped/ and no --inits given", file=sys.stderr)
        return 2
    modes = tuple(args.modes.split(","))
    shots = tuple(int(s) for s in args.shots.split(","))
    rows: list[dict] = []
    t0 = time.time()
    for task in args.tasks.split(","):
        manifest = Path(args.data_root) / task / "manifest.csv"
        if not manifest.exists():
            print(f"skipping {task}: {manifest} not found (needs ../shared/data or --data-root)", file=sys.stderr)
            continue
        cfg = SweepConfig(findings=("pneumonia",), inits=("random", *inits), modes=modes, shots=shots,
                          trials=args.trials, image_size=args.image_size, seed=args.seed)
        last = [0.0]

        def on_event(e, task=task, last=last) -> None:
            now = time.time()
            if e.total and now - last[0] > 30:
                last[0] = now
                print(f"  {task}: {e.message or ''} {e.step}/{e.total} ({now - t0:.0f}s)", flush=True)

        print(f"{task}: {len(inits) + 1} inits x {modes} x shots {shots} x {args.trials} trials", flush=True)
        res = run_sweep(manifest, cfg, work / task, args.device, on_event=on_event, resume=True)
        rows += [{"task": task, **r} for r in paired_differences(res.trials)]
    lines = [f"# Shipped backbones vs random init ({args.image_size} px, {args.trials} paired trials per shot count)",
             "", "d = AUC minus random's AUC on the same training and test images (mean over trials), SE its standard "
             "error, wins = trials where the backbone's AUC is higher; target = d >= 0.05 and the 95% interval above 0.",
             "", uncertainty_text(rows[0]["uncertainty"]) if rows else "", "",
             *table(rows), "", f"{time.time() - t0:.0f} s on {args.device}"]
    text = "\n".join(lines)
    print(text, flush=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "recipe_version": RECIPE_VERSION},
                                                  indent=1))  # the modes' meaning (engine.fewshot.modes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
