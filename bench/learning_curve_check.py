"""Does the learning curve's extrapolation hold? (engine.fewshot.learning_curve)

NIH pneumonia, features of the shipped backbone (cached by bench/active_learning.py; embedded here when
missing). Per trial: a random stratified set of `--n` train images is the user's labeled set; its learning
curve is extrapolated to n + `--extra`; the truth is the mean cross-validated AUC (the same procedure) of
`--truth-repeats` random supersets of n + extra train images that contain the n. Printed: how often the
extrapolation was trusted, the mean error of the prediction, and how often the truth fell in its 95% range.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/learning_curve_check.py [--trials 20] [--n 40] [--extra 20]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from active_learning import features

    from engine.fewshot.learning_curve import cv_probe_auc, learning_curve

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--extra", type=int, default=20)
    ap.add_argument("--truth-repeats", type=int, default=10)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "scarce_cxr_bench")
    args = ap.parse_args()
    t0 = time.perf_counter()
    X, y, split = features(args.size, args.cache)
    train = np.flatnonzero(split == "train")
    rows = []
    for t in range(args.trials):
        rng = np.random.default_rng(500 + t)
        pos, neg = train[y[train] == 1], train[y[train] == 0]
        lab = np.r_[rng.choice(pos, args.n // 2, replace=False), rng.choice(neg, args.n // 2, replace=False)]
        lc = learning_curve(X[lab], y[lab], extra=args.extra, seed=t)
        rest_pos, rest_neg = np.setdiff1d(pos, lab), np.setdiff1d(neg, lab)
        truth = []
        for r in range(args.truth_repeats):
            more = np.r_[rng.choice(rest_pos, args.extra // 2, replace=False),
                         rng.choice(rest_neg, args.extra - args.extra // 2, replace=False)]
            rows_ = np.r_[lab, more]
            truth.append(cv_probe_auc(X[rows_], y[rows_], seed=r))
        ex = lc.extrapolation
        rows.append((ex.trusted, ex.auc_target, ex.low, ex.high, float(np.mean(truth)), lc.points[-1].auc))
    trusted = [r for r in rows if r[0]]
    print(f"NIH pneumonia, {args.trials} trials: learning curve of {args.n} labeled images extrapolated to "
          f"{args.n + args.extra} (truth: mean CV AUC of {args.truth_repeats} supersets)")
    print(f"trusted: {len(trusted)} of {len(rows)}")
    if trusted:
        err = np.array([r[1] - r[4] for r in trusted])
        gain_pred = np.array([r[1] - r[5] for r in trusted])
        gain_true = np.array([r[4] - r[5] for r in trusted])
        cover = np.mean([r[2] <= r[4] <= r[3] for r in trusted])
        print(f"predicted minus true AUC: mean {err.mean():+.3f} (SE {err.std(ddof=1) / math.sqrt(len(err)):.3f}), "
              f"mean |error| {np.abs(err).mean():.3f}")
        print(f"gain over the current AUC: predicted {gain_pred.mean():+.3f}, true {gain_true.mean():+.3f}")
        print(f"truth inside the 95% range: {cover:.0%} of trusted trials")
    untrusted = [r for r in rows if not r[0]]
    if untrusted:
        print(f"untrusted trials: true gain {np.mean([r[4] - r[5] for r in untrusted]):+.3f} on average")
    print(f"wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
