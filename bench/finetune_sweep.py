"""Finetune trials/s: T trials trained one by one vs all at once (torch.func.vmap over stacked weights).

Both paths run the same trials (same init, images, labels, seeds; batched == sequential up to float
rounding, checked here on the resulting logits) and are measured side by side in one run, twice each,
alternating, best time kept. Training only (the test-set evaluation is the same forward either way).
Images are random uint8 squares: the cost of a step does not depend on the pixels.

    .venv/bin/python bench/finetune_sweep.py                       # CPU defaults (64 px, 10 steps)
    .venv/bin/python bench/finetune_sweep.py --device cuda --size 224 --steps 50 --trials 10
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--shots", type=int, default=5, help="k: each trial trains on 2k images")
    ap.add_argument("--trials", type=int, default=5, help="T trials trained together")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--mode", default="full", choices=["full", "last_stage", "last_layer"])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from engine.device import describe
    from engine.fewshot.finetune import FinetuneConfig, finetune_many, predict_logits
    from engine.models import load_backbone

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backbone = load_backbone("random" if args.arch == "resnet18" else f"random-{args.arch}", device)
    rng = np.random.default_rng(0)
    n = 2 * args.shots
    xs = [rng.integers(0, 256, (n, args.size, args.size), dtype=np.uint8) for _ in range(args.trials)]
    ys = [np.r_[np.ones(args.shots), np.zeros(args.shots)] for _ in range(args.trials)]
    seeds = list(range(args.trials))
    cfg = FinetuneConfig(mode=args.mode, steps=args.steps, batch_size=args.batch)
    print(f"device: {describe(device)}  arch={args.arch}  size={args.size}px  mode={args.mode}  "
          f"{args.trials} trials x {args.steps} steps x batch {min(args.batch, n)} ({n} images per trial)")

    def run(batched: bool):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = finetune_many(backbone, xs, ys, cfg, device, seeds, batched=batched)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    run(True)  # warm-up: kernels, allocator, vmap tracing
    times = {False: [], True: []}
    models = {}
    for _ in range(2):
        for batched in (False, True):
            t, models[batched] = run(batched)
            times[batched].append(t)
    ts, tb = min(times[False]), min(times[True])
    probe_imgs = rng.integers(0, 256, (16, args.size, args.size), dtype=np.uint8)
    meta = backbone[1]
    diff = max(float(np.abs(predict_logits(*a, probe_imgs, device, meta.mean, meta.std)
                            - predict_logits(*b, probe_imgs, device, meta.mean, meta.std)).max())
               for a, b in zip(models[True], models[False]))
    print(f"sequential: {args.trials / ts:.3f} trials/s ({ts:.1f} s for {args.trials} trials)")
    print(f"batched (vmap): {args.trials / tb:.3f} trials/s ({tb:.1f} s)")
    print(f"ratio batched / sequential: {ts / tb:.2f}x   (max |logit difference| between the two: {diff:.1e})")


if __name__ == "__main__":
    main()
