"""Grad-CAM throughput: heatmaps/s for resnet18 and resnet50, batched vs one image at a time.

Measured side by side in one run, on CPU and (when present) CUDA:

* `batched`   CAMExplainer on a batch of `--batch` images (one forward + one short backward per batch);
* `single`    the same explainer called once per image;
* `library`   pytorch-grad-cam's GradCAM on the same batch with every parameter trainable, i.e. the full
              backward through the backbone that CAMExplainer avoids by cutting the graph at the
              target layer (see engine/explain/gradcam.py).

Heatmaps are at the input size (S x S, before `unfit`); I/O and letterboxing are excluded.

    python bench/gradcam_speed.py                 # CPU (and CUDA if available), S=224, 8 images
    python bench/gradcam_speed.py --devices cuda --n 64 --batch 32
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from engine.explain.gradcam import CAMExplainer, ExplainModel  # noqa: E402
from engine.models import build_backbone  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_of(fns: dict[str, tuple], device: torch.device, repeats: int) -> dict[str, float]:
    """Best wall time per variant. `fns[name] = (run, warm)`; `warm` has the same shapes and less work.
    Variants are interleaved round by round, so load from other processes hits them alike, and the
    best of `repeats` rounds is kept (the least disturbed)."""
    for _, warm in fns.values():
        warm()
    _sync(device)
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, (run, _) in fns.items():
            t = time.perf_counter()
            run()
            _sync(device)
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def bench(arch: str, device: torch.device, n: int, batch: int, size: int, repeats: int, method: str) -> dict[str, float]:
    torch.manual_seed(0)
    model = ExplainModel(build_backbone(arch), nn.Linear(build_backbone(arch).feat_dim, 1)).to(device).eval()
    x = torch.randn(n, 3, size, size, device=device)  # (N, 3, S, S)
    with CAMExplainer(model, "layer4", method, device, batch_size=batch) as ex:
        fns = {
            "batched": (lambda: ex(x), lambda: ex(x[:batch])),
            "single": (lambda: [ex(x[i : i + 1]) for i in range(n)], lambda: ex(x[:1])),
        }
        best = _best_of(fns, device, repeats)
    if method == "gradcam":
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with GradCAM(model, [model.backbone.layer4]) as cam:
            def lib(m: int = n) -> None:
                for i in range(0, m, batch):
                    xb = x[i : min(m, i + batch)]
                    cam(xb, [ClassifierOutputTarget(0)] * xb.shape[0])
            best |= _best_of({"library": (lib, lambda: lib(batch))}, device, repeats)
    return {k: n / t for k, t in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--devices", default="cpu,cuda", help="cuda is skipped when no GPU is visible")
    ap.add_argument("--n", type=int, default=8, help="images per measurement")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per measurement (best is kept)")
    ap.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device(d) for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    print(f"{args.method}, {args.size}x{args.size}, {args.n} images, batch {args.batch}, torch {torch.__version__}, "
          f"CPU threads {torch.get_num_threads()}" + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"{'arch':9s} {'device':6s} {'batched/s':>10s} {'single/s':>9s} {'library/s':>10s} "
          f"{'batched/single':>15s} {'batched/library':>16s}")
    for dev in devices:
        for arch in args.archs.split(","):
            r = bench(arch, dev, args.n, args.batch, args.size, args.repeats, args.method)
            lib = r.get("library", float("nan"))
            print(f"{arch:9s} {dev.type:6s} {r['batched']:10.1f} {r['single']:9.1f} {lib:10.1f} "
                  f"{r['batched'] / r['single']:15.2f} {r['batched'] / lib:16.2f}", flush=True)


if __name__ == "__main__":
    main()
