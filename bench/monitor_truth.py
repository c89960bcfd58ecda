"""Issue 23 item 4 measured: a short MoCo v2 run (quick recipe, phantoms, CPU) with the online evaluation and
auto collapse control; prints every monitor reading's verdict (relative judging) beside the old absolute rule's,
the online kNN AUC with its SE, the controller's weight, and what one online evaluation costs against one
collapse reading (a ratio, not a time target).

    OMP_NUM_THREADS=1 nice -n 10 python bench/monitor_truth.py [--steps 24] [--every 3] [--n 48]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from engine.data.phantom import generate
from engine.ssl import pretrain_images
from engine.ssl.loop import build_method
from engine.ssl.monitor import COS_MAX, ERANK_MIN, STD_MIN, CollapseMonitor, collapse_status
from engine.ssl.online_eval import load_online_eval
from engine.ssl.presets import build_config


def old_rule(m: dict) -> str:
    """The absolute thresholds the monitor used before issue 23 (any step after 0)."""
    bad = [m[f"{p}std"] < STD_MIN or m[f"{p}cos"] > COS_MAX or m[f"{p}erank"] < ERANK_MIN for p in ("", "backbone_")]
    return "collapsed" if any(bad) else "healthy"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--n", type=int, default=48)
    a = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    csv = generate(tmp / "ph", n=a.n, size=64, seed=0)
    df = pd.read_csv(csv)
    imgs = np.stack([np.asarray(Image.open(csv.parent / p).convert("L").resize((64, 64))) for p in df["path"]])
    spec = f"{csv}:pneumothorax"
    cfg = build_config("moco_v2", "quick", epochs=100, batch_size=16, image_size=64, monitor_every_steps=a.every,
                       monitor_images=a.n, save_every_steps=10_000, max_steps=a.steps, online_eval=spec,
                       collapse_control="erank:auto")
    events = []
    pretrain_images(imgs.astype(np.uint8), cfg, "bench-monitor", "cpu", tmp / "run", on_event=events.append,
                    checkpoint_dir=tmp / "ck")
    hist = [{"step": e.step, **{k.removeprefix("collapse_"): v for k, v in e.metrics.items()}}
            for e in events if e.kind == "metrics" and "collapse_std" in e.metrics]
    print("step | new verdict | old rule | head std | head erank | bb cos | kNN AUC (SE) | control weight")
    for h in hist:
        level = collapse_status(h, h["step"], history=hist)[0]
        print(f"{h['step']:4d} | {level:11s} | {old_rule(h) if h['step'] else 'baseline':9s} | {h['std']:.3f} | "
              f"{h['erank']:.1f} | {h['backbone_cos']:.3f} | {h['online_auc']:.3f} ({h['online_auc_se']:.3f}) | "
              f"{h.get('control_weight', float('nan')):.4g}")
    old = sum(old_rule(h) == "collapsed" for h in hist[1:])
    new = sum(collapse_status(h, h["step"], history=hist)[0] == "warning" for h in hist)
    print(f"readings flagged collapsed: old absolute rule {old}/{len(hist) - 1}, relative rule {new}/{len(hist) - 1}")
    # cost of one online evaluation vs one collapse reading (same model, same machine)
    method = build_method(cfg).eval()
    mon = CollapseMonitor(imgs[: a.n].astype(np.uint8), a.every)
    ev = load_online_eval(spec, 64, 0)
    t0 = time.perf_counter()
    for s in range(3):
        mon.measure(method, torch.device("cpu"), 64, s)
    t1 = time.perf_counter()
    mon.online = ev
    for s in range(3):
        mon.measure(method, torch.device("cpu"), 64, s)
    t2 = time.perf_counter()
    print(f"one reading with the online evaluation ({len(ev.labels)} labeled images) / without: "
          f"{(t2 - t1) / (t1 - t0):.2f}x")


if __name__ == "__main__":
    main()
