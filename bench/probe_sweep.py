"""Probe sweeps on cached features vs re-embedding every trial; embedding pipeline vs bare forward.

Measured side by side in one run:

1. A probe sweep of 5 inits x 5 shot counts x 10 trials on one finding through `run_sweep`:
   cold (image + feature caches empty: each image embedded once per init) and warm (features on disk).
2. The same sweep re-embedding the trial's training images and the test set with the backbone in
   every trial (what a sweep without the feature cache does). Timed on `--reembed-trials` trials per
   (init, shots) and extrapolated to all trials -- printed as such; its AUCs are checked against the
   cached sweep's for the same trials.
3. `embed()` images/s (memmap read in a background thread, normalization, forward, feature store
   write) vs a bare `model(x)` forward of the same backbone on the same, already normalized batches
   (best of 5 interleaved runs each; the medians are printed too).

Data: the Kermany manifest (`/work/shared/data/kermany224`, finding `pneumonia`) when present, else a
phantom. Inits: `random` + 4 random-weight checkpoints in a temporary checkpoint folder (their
weights differ, so every init embeds separately, as real SSL checkpoints would).

    .venv/bin/python bench/probe_sweep.py [--size 64] [--device cpu] [--reembed-trials 1]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KERMANY = Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany224" / "manifest.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, help="image size (px)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--reembed-trials", type=int, default=1, help="re-embedding trials timed per (init, shots)")
    ap.add_argument("--reembed-inits", type=int, default=2, help="inits whose re-embedding trials are timed")
    ap.add_argument("--manifest", default=str(KERMANY) if KERMANY.exists() else "")
    ap.add_argument("--finding", default="pneumonia")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    try:
        _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, tmp: Path) -> None:
    """The three measurements on a throw-away workspace and checkpoint folder under `tmp`."""
    os.environ["SCARCE_CXR_WORKSPACE"] = str(tmp / "ws")  # this script is an edge: caches land in `tmp`
    os.environ["SCARCE_CXR_IMAGENET_DIR"] = str(tmp / "imagenet")
    import torch

    from engine.fewshot.sweep import SweepConfig
    from engine.models import build_backbone, save_backbone

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ckpt = tmp / "ckpt"
    manifest, finding = args.manifest, args.finding
    if not manifest:
        from engine.data.phantom import generate

        manifest, finding = str(generate(tmp / "phantom", 600, size=128, seed=0, findings=("cardiomegaly",))), "cardiomegaly"
    inits = ["random"]
    for i in range(4):
        torch.manual_seed(100 + i)
        save_backbone(build_backbone("resnet18"), f"bench-{i}", {"method": "bench", "arch": "resnet18"}, ckpt)
        inits.append(f"bench-{i}")
    cfg = SweepConfig(findings=(finding,), inits=tuple(inits), modes=("probe",), shots=(1, 5, 10, 20, 50), trials=10,
                      image_size=args.size)
    print(f"data: {manifest} finding={finding}  size={args.size}px  device={device}  torch threads={args.threads}")
    t_cold, t_warm, warm = _cached_sweeps(manifest, cfg, tmp, device, ckpt)
    cache = _reembedding_sweep(args, manifest, finding, cfg, warm, t_cold, t_warm, device, ckpt)
    _embedding_speed(cache, cfg.embed_batch_size, tmp, device)


def _cached_sweeps(manifest: str, cfg, tmp: Path, device, ckpt: Path):
    """1. The cached sweep, cold (each image embedded once per init) then warm (features on disk)."""
    from engine.fewshot.sweep import run_sweep

    t0 = time.perf_counter()
    run_sweep(manifest, cfg, tmp / "cold", device, checkpoint_dir=ckpt)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = run_sweep(manifest, cfg, tmp / "warm", device, checkpoint_dir=ckpt)
    t_warm = time.perf_counter() - t0
    print(f"cached sweep: {len(cfg.inits)} inits x {len(cfg.shots)} shots x {cfg.trials} trials = {len(warm.trials)} "
          f"trials; cold (embeds each image once per init) {t_cold:.1f} s, warm (features on disk) {t_warm:.2f} s")
    return t_cold, t_warm, warm


def _reembedding_sweep(args: argparse.Namespace, manifest: str, finding: str, cfg, warm, t_cold: float,
                       t_warm: float, device, ckpt: Path):
    """2. The same sweep re-embedding every trial (timed on a subset, extrapolated); returns the image cache."""
    import numpy as np

    from engine.data.cache import ImageCache
    from engine.data.manifest import load_manifest
    from engine.fewshot.episodes import sample_episode, test_split, trial_seed
    from engine.fewshot.features import forward_features
    from engine.fewshot.probe import fit_probe
    from engine.fewshot.sweep import evaluate_trial
    from engine.models import load_backbone

    df = load_manifest(manifest).df
    labels, pids = df[finding].to_numpy(dtype=np.float64), df["patient_id"].astype(str).to_numpy()
    pool, test = test_split(df, finding, seed=cfg.seed, test_fraction=cfg.test_fraction)
    needed = np.unique(np.concatenate([test] + [sample_episode(labels, pids, pool, k, trial_seed(cfg.seed, finding, k, t))
                                                for k in cfg.shots for t in range(cfg.trials)]))
    where = np.full(len(df), -1)
    where[needed] = np.arange(needed.size)
    cache = ImageCache.build([df["path"].iloc[i] for i in needed], args.size)
    # the whole-test-set AUC (the sweep's `auc` is on each trial's own resample of the test set)
    ref = warm.trials.set_index(["init", "shots", "trial"])["auc_pool"]
    t_re, n_re, max_diff, n_trials = 0.0, 0, 0.0, len(warm.trials)
    for init in cfg.inits[: args.reembed_inits]:
        model, meta = load_backbone(init, device, checkpoint_dir=ckpt)
        for k in cfg.shots:
            for t in range(args.reembed_trials):
                seed = trial_seed(cfg.seed, finding, k, t)
                idx = sample_episode(labels, pids, pool, k, seed)
                t0 = time.perf_counter()
                rows = where[np.concatenate([idx, test])]
                f = np.concatenate([b for _, b in forward_features(model, cache.array, device, meta.mean, meta.std,
                                                                   cfg.embed_batch_size, rows)])
                X_tr, X_te = f[: idx.size], f[idx.size :]
                probe = fit_probe(X_tr, labels[idx], C=cfg.probe_C)
                res = evaluate_trial(probe.decision_function(X_tr), labels[idx], probe.decision_function(X_te),
                                     labels[test], cfg.n_bootstrap, seed)
                t_re += time.perf_counter() - t0
                n_re += 1
                max_diff = max(max_diff, abs(res["auc"] - ref.loc[(init, k, t)]))
    t_re_all = t_re / n_re * n_trials
    print(f"re-embedding sweep: timed {n_re} of {n_trials} trials ({t_re:.1f} s, {t_re / n_re:.2f} s/trial, "
          f"{idx.size}+{test.size} images embedded per trial), EXTRAPOLATED to {n_trials} trials: {t_re_all:.0f} s; "
          f"max |AUC difference| vs the cached sweep on those trials: {max_diff:.2e}")
    print(f"ratio re-embedding / cached: {t_re_all / t_warm:.0f}x (warm features)   "
          f"{t_re_all / t_cold:.1f}x (cold: including the one-time embedding)   [target >= 50x]")
    return cache


def _embedding_speed(cache, bs: int, tmp: Path, device) -> None:
    """3. `embed()` images/s vs a bare forward on the same, already normalized batches (best of 5)."""
    import numpy as np
    import torch

    from engine.fewshot.features import ArrayImages, embed
    from engine.models import load_backbone, prepare_batch

    model, meta = load_backbone("random", device)
    n = min(512, len(cache))
    imgs = ArrayImages(cache.array[:n], list(cache.keys[:n]))  # the memmap: the pipeline reads from disk cache
    xs = [prepare_batch(torch.from_numpy(np.array(imgs.array[i : i + bs])), device, meta.mean, meta.std)
          for i in range(0, n, bs)]

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x in xs:
                model(x).float().cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def pipeline(rep: int) -> float:
        t0 = time.perf_counter()
        embed("random", imgs, device, batch_size=bs, feature_dir=tmp / f"feat-{rep}", backbone=(model, meta))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    bare()  # warm-up (allocator, kernels)
    pipeline(-1)
    tb, tp = [], []
    for rep in range(5):  # interleaved, so machine load hits both alike
        tb.append(bare())
        tp.append(pipeline(rep))
    ib, ip = n / min(tb), n / min(tp)  # best of 5: the run least disturbed by other processes
    print(f"embedding: pipeline {ip:.0f} images/s vs bare model(x) {ib:.0f} images/s on the same {n} images "
          f"(batch {bs}, best of 5 interleaved runs; medians {n / statistics.median(tp):.0f} vs "
          f"{n / statistics.median(tb):.0f}): ratio {ip / ib:.2f}   [target >= 0.9]")


if __name__ == "__main__":
    main()
