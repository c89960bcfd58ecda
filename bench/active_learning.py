"""Do the "label these next" picks raise AUC faster than random picks? (engine.fewshot.active)

Data: NIH pneumonia (`../shared/data/nih_pneumonia`, 796 adult images, patient-level split: 554 train /
242 test). Features: the shipped backbone `cxr-moco_v2-resnet18-224`, embedded once at `--size` px (default
224, the init's own size) and cached in `--cache`.

Protocol, per trial (seeded): a seed set of `--seed-per-class` images per class drawn from the train split;
the rest of the train split is the unlabeled pool (its labels are the oracle). Each round, every rule picks
`--k` pool images from *its own* labeled set (all rules start from the trial's same seed set), their
manifest labels are added, a linear probe (engine.fewshot.probe) is refitted and its AUC measured on the
whole test split. The gain of a rule over random picks at a round is the paired difference (same trial)
of their test AUCs; printed as mean +- SE over trials (SE = sd / sqrt(trials)).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/active_learning.py [--trials 20] [--rounds 5] [--k 10]
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "nih_pneumonia" / "manifest.csv"
INIT = "cxr-moco_v2-resnet18-224"


def features(size: int, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (N, 512), labels (N,), split (N,)) of the manifest, embedded once and cached."""
    import torch

    from engine.data.manifest import load_manifest
    from engine.fewshot.classifier.inputs import to_uint8
    from engine.fewshot.features import forward_features
    from engine.models import load_backbone

    man = load_manifest(DATA)
    y = man.labels("pneumonia").astype(np.float64)
    split = man.df["split"].astype(str).to_numpy()
    f = cache / f"active_learning_{INIT}_{size}.npy"
    if f.exists():
        return np.load(f), y, split
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    model, meta = load_backbone(INIT, "cpu", checkpoint_dir=ROOT / "checkpoints" / "shipped")
    u8 = to_uint8(list(man.df["path"]), size)
    X = np.concatenate([F for _, F in forward_features(model, u8, torch.device("cpu"), meta.mean, meta.std)])
    cache.mkdir(parents=True, exist_ok=True)
    np.save(f, X)
    print(f"embedded {len(X)} images at {size} px in {time.perf_counter() - t0:.0f} s (cached: {f})")
    return X, y, split


def run_trial(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, rules: list[str], args,
              trial: int) -> dict[str, list[float]]:
    """Test AUC after each round (rounds + 1 values, round 0 = the seed set) per rule."""
    from engine.fewshot.active import select
    from engine.fewshot.metrics import auc
    from engine.fewshot.probe import fit_probe

    rng = np.random.default_rng(1000 + trial)
    pos, neg = train[y[train] == 1], train[y[train] == 0]
    seed = np.r_[rng.choice(pos, args.seed_per_class, replace=False), rng.choice(neg, args.seed_per_class,
                                                                                replace=False)]
    out = {}
    for rule in rules:
        lab = list(seed)
        aucs = []
        for r in range(args.rounds + 1):
            probe = fit_probe(X[lab], y[lab], seed=trial)
            aucs.append(auc(y[test], probe.decision_function(X[test])))
            if r == args.rounds:
                break
            pool = np.setdiff1d(train, lab)
            picks = select(rule, X[lab], y[lab], X[pool], args.k, seed=trial * 100 + r,
                           p_pool=None if rule in ("random", "coreset") else probe.predict_proba(X[pool]))
            lab.extend(pool[picks].tolist())
        out[rule] = aucs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224, help="image size in px (default: the init's own, 224)")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--k", type=int, default=10, help="images added per round")
    ap.add_argument("--seed-per-class", type=int, default=10)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "scarce_cxr_bench")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"needs {DATA}")
    t0 = time.perf_counter()
    X, y, split = features(args.size, args.cache)
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    rules = ["random", "margin_coreset", "margin", "coreset"]
    res = {r: [] for r in rules}
    for t in range(args.trials):
        for r, a in run_trial(X, y, train, test, rules, args, t).items():
            res[r].append(a)
    A = {r: np.asarray(v) for r, v in res.items()}  # (trials, rounds + 1)
    print(f"NIH pneumonia, {INIT} features at {args.size} px; seed {args.seed_per_class}/class from the train "
          f"split ({len(train)} images), +{args.k} per round, test AUC on {len(test)} images, {args.trials} paired "
          "trials")
    print("labeled  " + "  ".join(f"{r:>16s}" for r in rules) + "   gain over random (mean +- SE)")
    for j in range(args.rounds + 1):
        n = 2 * args.seed_per_class + j * args.k
        cells = "  ".join(f"{A[r][:, j].mean():16.3f}" for r in rules)
        gains = "  ".join(f"{r}: {d.mean():+.3f} +- {d.std(ddof=1) / math.sqrt(len(d)):.3f}"
                          for r in rules[1:] for d in [A[r][:, j] - A["random"][:, j]])
        print(f"{n:7d}  {cells}   {gains}")
    total = {r: (A[r][:, 1:] - A["random"][:, 1:]).mean(1) for r in rules[1:]}
    print("mean gain over rounds 1-%d: " % args.rounds + ", ".join(
        f"{r} {d.mean():+.3f} +- {d.std(ddof=1) / math.sqrt(len(d)):.3f}" for r, d in total.items()))
    print(f"wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
