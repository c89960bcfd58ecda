"""Does the Classifier page's expected time hold? Estimate (timed now, engine.fewshot.classifier.timing)
vs the measured build time of the same work, on 12 pneumonia + 11 normal adult NIH images.

    OMP_NUM_THREADS=1 nice -n 10 python bench/classifier_estimate.py [--mode probe|finetune] [--steps N]

Prints one line per run: mode, estimate, actual, actual / estimate (the target: within 1.5x either way,
also on a loaded machine). Library imports are done first, as in the app's long-lived process. Needs ../shared/data/nih_pneumonia and the shipped backbone.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import pandas as pd
    import torch

    from engine.fewshot.classifier import build_classifier, default_fast_finetune, estimate_seconds
    from engine.models import default_init

    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="probe", choices=["probe", "finetune"])
    ap.add_argument("--steps", type=int, default=None, help="finetune steps per fit (default: the page's)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = ROOT.parent / "shared" / "data" / "nih_pneumonia"
    m = pd.read_csv(data / "manifest.csv")
    m = m[m.split == "train"].drop_duplicates("patient_id")
    sel = pd.concat([m[m.pneumonia == 1].head(12), m[m.pneumonia == 0].head(11)])
    paths = [str((data / p).resolve()) for p in sel.path]
    csv = Path("/tmp") / "classifier_estimate_23.csv"
    sel.assign(path=paths).to_csv(csv, index=False)
    import scipy.stats  # noqa: F401  the app's process has these loaded; a fresh one pays ~5-20 s of imports
    import sklearn.model_selection  # noqa: F401

    import engine.data.cache  # noqa: F401
    import engine.data.manifest  # noqa: F401

    fast = default_fast_finetune()
    if args.steps:
        fast = dataclasses.replace(fast, steps=args.steps)
    init = default_init()
    est = estimate_seconds(len(paths), args.mode, "resnet18", 224, fast=fast, sample_paths=paths[:2])["seconds"]
    t0 = time.perf_counter()
    build_classifier(manifest=csv, finding="pneumonia", init=init, mode=args.mode, finetune_cfg=fast)
    actual = time.perf_counter() - t0
    print(f"{args.mode} ({len(paths)} images, init {init}, {fast.steps if args.mode == 'finetune' else '-'} steps): "
          f"estimate {est:.1f} s, actual {actual:.1f} s, actual/estimate {actual / est:.2f}")


if __name__ == "__main__":
    main()
