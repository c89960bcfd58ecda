"""Are the sweep's 95% intervals for the paired difference d calibrated when the test split changes?

The same comparison (`--init`, default the shipped `cxr-moco_v2-resnet18-224`, vs random init; linear
probe; a few shot counts) is run under `--seeds` independent split seeds on each task. Each seed draws a
fresh patient-level hold-out of `--test-fraction` of ALL labeled patients (the manifest's own split
column is ignored, so that the test set really changes from seed to seed), then `--trials` paired
trials per shot count exactly as the sweep runs them (engine.fewshot.episodes / probe / trials /
metrics: the same episode and the same test sample for both inits of a trial). Three intervals per seed:

- old: every trial scored on the seed's whole test set, d -+ t * sd(d)/sqrt(J) (episode variance only;
  what sweeps reported before, metrics.FIXED);
- bound: every trial scored on its own patient-level bootstrap sample of the test set,
  d -+ t * resampled_se without shared resamples (the test deviation taken as fully shared: conservative);
- new: the same, plus every trial scored on 100 test resamples shared by all trials of the shot count
  (episodes.shared_test_counts), d -+ t * resampled_se(boot) (what sweeps report; metrics.RESAMPLED).

Coverage = the share of seeds whose interval contains the across-seed mean of that method's d (the
target a user means by "is this backbone better": averaged over test splits and episodes). A
calibrated 95% interval covers it in about 95% of seeds; the binomial SE of a coverage over S seeds is
sqrt(0.95 * 0.05 / S) (0.034 for 40 seeds).

Images are embedded once per init (feature cache under `--workdir`), at `--image-size` (default 128 px
to fit a loaded 2-core CPU; the backbone was pretrained at 224, so its d here is smaller than at 224).
`--max-patients` subsamples a task's patients (seeded) to bound the embedding time.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/split_calibration.py                # ~6-8 min on 2 loaded cores
    .venv/bin/python bench/split_calibration.py --seeds 20 --tasks nih_pneumonia --shots 5,20

Prints a Markdown table and writes it with the per-seed rows to `--workdir` (results.md, seeds.csv).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
TASKS = ("nih_pneumonia", "kermany224")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--data-root", default=str(SHARED))
    p.add_argument("--finding", default="pneumonia")
    p.add_argument("--init", default="cxr-moco_v2-resnet18-224")
    p.add_argument("--seeds", type=int, default=40, help="independent split seeds per task")
    p.add_argument("--trials", type=int, default=10, help="paired trials per shot count and seed")
    p.add_argument("--shots", default="5,20,50")
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--max-patients", type=int, default=800, help="patients kept per task (seeded subsample)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default=str(ROOT / "artifacts" / "split_calibration"))
    return p.parse_args(argv)


def load_task(path: Path, finding: str, max_patients: int):
    """The task's labeled rows with absolute paths and no split column; at most `max_patients` patients."""
    import numpy as np
    import pandas as pd

    df = pd.read_csv(path / "manifest.csv")
    df = df[df[finding].notna()].drop(columns=["split"], errors="ignore")
    df["path"] = [str((path / p).resolve()) for p in df["path"]]
    pats = np.unique(df["patient_id"].astype(str))
    if pats.size > max_patients:
        keep = np.random.default_rng(0).choice(pats, size=max_patients, replace=False)
        df = df[df["patient_id"].astype(str).isin(keep)]
    return df.reset_index(drop=True)


def features(df, inits: list[str], size: int, device) -> dict:
    """init -> (N, D) features of every row of df (embedded once, cached under the workspace)."""
    from engine.data.cache import ImageCache
    from engine.fewshot.features import embed

    cache = ImageCache.build(list(df["path"]), size)
    return {i: embed(i, cache, device) for i in inits}


def seed_trials(df, feats: dict, finding: str, seed: int, shots: list[int], trials: int, frac: float):
    """The trial rows of one split seed: the sweep's episodes, test samples, probes and scores."""
    import numpy as np
    import pandas as pd

    from engine.fewshot.episodes import (sample_episode, shared_test_counts, test_sample, test_seed, test_split,
                                         trial_seed)
    from engine.fewshot.probe import fit_probe
    from engine.fewshot.trials import evaluate_trial

    labels, pids = df[finding].to_numpy(float), df["patient_id"].astype(str).to_numpy()
    pool, test = test_split(df, finding, seed=seed, test_fraction=frac)
    rows = []
    for k in shots:
        shared = shared_test_counts(labels, pids, test, seed, finding, k)
        for t in range(trials):
            ts = trial_seed(seed, finding, k, t)
            idx = sample_episode(labels, pids, pool, k, ts)
            sample = test_sample(labels, pids, test, test_seed(seed, finding, k, t))
            for init, X in feats.items():
                probe = fit_probe(X[idx], labels[idx], seed=ts)
                res = evaluate_trial(probe.decision_function(X[idx]), labels[idx], probe.decision_function(X[test]),
                                     labels[test], 10, ts, sample, shared)
                rows.append({"finding": finding, "init": init, "mode": "probe", "shots": k, "trial": t, **res})
    return pd.DataFrame(rows), int(test.size)


def seed_rows(trials, init: str, seed: int, n_test: int) -> list[dict]:
    """Old (fixed test set) and new (resampled) paired d with their 95% intervals, per shot count."""
    from engine.fewshot.metrics import paired_differences

    old = trials.assign(auc=trials["auc_pool"]).drop(columns=["auc_pool", "auc_boot"])  # every trial on the whole pool
    bound = trials.drop(columns=["auc_boot"])  # per-trial resamples only: the fully-shared bound of resampled_se
    out = []
    for method, rows in (("old", paired_differences(old, "random")), ("bound", paired_differences(bound, "random")),
                         ("new", paired_differences(trials, "random"))):
        out += [{"seed": seed, "method": method, "shots": r["shots"], "d": r["diff"], "se": r["se"],
                 "lo": r["ci_low"], "hi": r["ci_high"], "n_test": n_test} for r in rows if r["init"] == init]
    return out


def coverage_table(per_seed) -> list[dict]:
    """Per (task, shots, method): coverage of the across-seed mean d by each seed's interval, mean SE, sd(d)."""
    out = []
    for (task, shots, method), g in per_seed.groupby(["task", "shots", "method"], sort=True):
        target = g["d"].mean()
        out.append({"task": task, "shots": int(shots), "method": method, "seeds": len(g), "mean_d": target,
                    "sd_d_across_seeds": g["d"].std(ddof=1), "mean_se": g["se"].mean(),
                    "coverage": float(((g["lo"] <= target) & (target <= g["hi"])).mean()),
                    "n_test": int(g["n_test"].median())})
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir).resolve()
    os.environ.setdefault("SCARCE_CXR_WORKSPACE", str(work / "workspace"))
    import pandas as pd
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    shots = [int(s) for s in args.shots.split(",")]
    t0, per_seed = time.time(), []
    for task in args.tasks.split(","):
        if not (Path(args.data_root) / task / "manifest.csv").exists():
            print(f"skipping {task}: no manifest under {args.data_root}", file=sys.stderr)
            continue
        df = load_task(Path(args.data_root) / task, args.finding, args.max_patients)
        feats = features(df, ["random", args.init], args.image_size, torch.device(args.device))
        print(f"{task}: {len(df)} images embedded ({time.time() - t0:.0f} s)", flush=True)
        for seed in range(args.seeds):
            trials, n_test = seed_trials(df, feats, args.finding, seed, shots, args.trials, args.test_fraction)
            per_seed += [{"task": task, **r} for r in seed_rows(trials, args.init, seed, n_test)]
        print(f"{task}: {args.seeds} seeds done ({time.time() - t0:.0f} s)", flush=True)
    if not per_seed:
        print("no task found; needs ../shared/data or --data-root", file=sys.stderr)
        return 2
    ps = pd.DataFrame(per_seed)
    rows = coverage_table(ps)
    lines = [f"# Split calibration: {args.init} vs random, linear probe, {args.image_size} px",
             "", f"{args.seeds} split seeds x {args.trials} paired trials per shot count; each seed a fresh "
             f"patient-level {args.test_fraction:.0%} hold-out of all labeled patients (<= {args.max_patients} "
             "patients per task). Coverage = share of seeds whose 95% interval for d contains the across-seed "
             "mean d (target 0.95; binomial SE "
             f"{(0.95 * 0.05 / args.seeds) ** 0.5:.3f}). old = test split fixed, episode variance only; bound = "
             "each trial on its own patient bootstrap of the test set, SE with the test deviation taken as fully "
             "shared (no shared resamples); new = the same plus 100 test resamples shared by all trials (two-way "
             "bootstrap, what sweeps report).", "",
             "| task | shots | test images | mean d | sd of d across seeds | mean SE old | bound | new | "
             "coverage old | bound | new |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["task"], r["shots"], r["method"]): r for r in rows}
    for task, k in sorted({(r["task"], r["shots"]) for r in rows}):
        o, b, n = by[(task, k, "old")], by[(task, k, "bound")], by[(task, k, "new")]
        lines.append(f"| {task} | {k} | {n['n_test']} | {n['mean_d']:+.3f} | {n['sd_d_across_seeds']:.3f} | "
                     f"{o['mean_se']:.3f} | {b['mean_se']:.3f} | {n['mean_se']:.3f} | {o['coverage']:.2f} | "
                     f"{b['coverage']:.2f} | {n['coverage']:.2f} |")
    lines += ["", f"{time.time() - t0:.0f} s on {args.device}"]
    text = "\n".join(lines)
    print(text, flush=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.md").write_text(text + "\n")
    ps.to_csv(work / "seeds.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
