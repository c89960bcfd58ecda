"""SSL pretraining throughput on the path users run, against a bare forward+backward of the same backbone.

For each method and preset it runs the real `engine.ssl.pretrain_from_data` (what `python -m engine
pretrain` and the app's pretrain job call: image cache, data prefetch thread, on-device augmentation,
heads and loss, optimizer, momentum/queue updates, collapse monitor every 100 steps, state save every
500, the final export) for `--steps` steps on a generated phantom folder, and, in the same process
right after, a *bare* step: a plain backbone of the same arch doing exactly the backbone passes that
method's step cannot avoid (`SSLMethod.backbone_work`: MoCo v2 = query forward+backward + key
forward; BarlowTwins = two views forward+backward; SparK = one; DINO = student crops + teacher
globals) on the same inputs, already on the device. The ratio real / bare is everything else a step
costs. Two real figures:

- `steady`: seconds per step between step 3 and the last (training loop only),
- `e2e`: the whole call (model build, monitor baseline, state save, export) divided by the steps.

The image cache is built once before timing (users build it once per dataset; its own cost is
`bench/cache_read.py`'s subject) and is printed.

Feeds (`--feeds`, issue 20): `device` = the default on CUDA (all images held on the GPU and indexed there,
losses read every 20 steps, fused optimizer), `host` = the path before issue 20 (each batch read from host
memory by a prefetch thread and copied, a host sync every step). On the CPU both run the same code but
`device` still reads losses every 20 steps: the CPU default stays `host` (every step), and this pair
shows it is not slower. `img/s` = batch / steady seconds per step; `x bare` = real / bare seconds
(goal: <= 1/0.8 = 1.25 for MoCo v2 and BarlowTwins, <= 1/0.7 = 1.43 for SparK, DINO and the hybrid).

    python bench/pretrain_throughput.py                                   # CPU: resnet18, 64 px, batch 32
    python bench/pretrain_throughput.py --device cuda --image-size 224 --batch 256 --steps 30
    python bench/pretrain_throughput.py --methods moco_v2 --presets quick --steps 20 --threads 2
    python bench/pretrain_throughput.py --device cuda --image-size 224 --batch 256 --steps 60 --feeds device,host
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


# issue 20's targets as real / bare seconds: >= 0.8x bare speed for MoCo v2 / BarlowTwins, >= 0.7x for the rest
GOAL = {"moco_v2": 1.25, "barlow_twins": 1.25, "spark": 1.43, "dino": 1.43, "masked_contrastive": 1.43}
FEEDS = {"device": {"data_on_device": True, "sync_every_steps": 20},
         "host": {"data_on_device": False, "sync_every_steps": 1}}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def real_path(data: Path, method: str, preset: str, args, work: Path, feed: str = "host") -> tuple[float, float, object]:
    """(steady s/step, end-to-end s/step, the config) of pretrain_from_data for args.steps steps."""
    from engine.ssl.presets import build_config
    from engine.ssl.pretrain import pretrain_from_data

    size = args.image_size if method != "spark" else max(32, args.image_size // 32 * 32)
    cfg = build_config(method, preset, arch=args.arch, image_size=size, batch_size=args.batch, epochs=10**6,
                       max_steps=args.steps, **FEEDS[feed])
    t: dict[int, float] = {}

    def on_event(e) -> None:
        if e.kind == "progress" and "loss" in e.metrics:
            t[e.step] = time.perf_counter()

    name = f"tp-{method}-{preset}-{len(list(work.glob('runs/*')))}"
    t0 = time.perf_counter()
    pretrain_from_data(data, cfg, name, device=args.device, run_dir=work / "runs" / name, on_event=on_event,
                       checkpoint_dir=work / "ckpt", cache_dir=work / "cache")
    e2e = (time.perf_counter() - t0) / args.steps
    # steady: from the first block end after step 3 (losses, and so progress events, arrive every
    # sync_every steps; each block's events share one timestamp) to the last step
    sync = cfg.sync_every_steps or 1
    first = next((k for k in range(sync, args.steps, sync) if k >= 3), None)
    if first is None:
        return e2e, e2e, cfg  # too few steps for a steady window: the whole call
    return (t[args.steps] - t[first]) / (args.steps - first), e2e, cfg


def bare_step(cfg, args, device):
    """Seconds per bare step: a plain backbone doing `backbone_work` of cfg's method on fixed inputs."""
    import torch

    from engine.device import amp_dtype
    from engine.models import build_backbone
    from engine.ssl.pretrain import build_method

    cuda = device.type == "cuda"
    method = build_method(cfg).to(device)
    method.channels_last = cuda
    g = torch.Generator(device=device)
    g.manual_seed(0)
    x01 = torch.rand(args.batch, 1, cfg.image_size, cfg.image_size, generator=g, device=device)
    work = [(v.detach(), grad) for v, grad in method.backbone_work(method.views(x01, g))]
    del method
    bb = build_backbone(cfg.arch).to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    bb.train()
    dtype = amp_dtype(device) if cuda else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            for x, grad in work:
                if grad:
                    bb(x).float().mean().backward()
                else:
                    with torch.no_grad():
                        bb(x)
        bb.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    _sync(device)
    times = []
    for _ in range(max(3, args.steps // 2)):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet50"))
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30, help="real-path steps per run")
    ap.add_argument("--images", type=int, default=256, help="phantom images in the folder")
    ap.add_argument("--methods", default="moco_v2,barlow_twins,spark,dino,masked_contrastive")
    ap.add_argument("--presets", default="quick,paper")
    ap.add_argument("--feeds", default=None, help="comma list of device,host (default: device,host on CUDA, host,device "
                                                  "on CPU)")
    ap.add_argument("--threads", default="auto",
                    help="CPU threads: auto (default) = what `python -m engine pretrain` chooses "
                         "(engine.device.configure_cpu_threads), or a number")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tp-") as tmp:
        work = Path(tmp)
        os.environ["SCARCE_CXR_WORKSPACE"] = str(work / "ws")
        os.environ["SCARCE_CXR_CHECKPOINTS"] = str(work / "ckpt")
        import torch

        from engine.data.cache import ImageCache
        from engine.data.phantom import generate
        from engine.device import describe, resolve_device
        from engine.ssl.pretrain import resolve_image_paths

        device = resolve_device(args.device)
        if device.type == "cpu":
            from engine.device import configure_cpu_threads

            print(configure_cpu_threads(args.threads, args.arch, args.image_size, args.batch)[1])
        args.device = str(device)
        generate(work / "ph", args.images, size=max(128, args.image_size), seed=0)
        data = work / "ph" / "images"
        t = time.perf_counter()
        for size in {args.image_size, max(32, args.image_size // 32 * 32)}:
            ImageCache.build(resolve_image_paths(data), size, cache_dir=work / "cache")
        print(f"device {describe(device)}, {torch.get_num_threads()} threads; {args.arch} @ {args.image_size}px, "
              f"batch {args.batch}, {args.steps} steps; cache of {args.images} images built in "
              f"{time.perf_counter() - t:.1f}s (once per dataset, not timed below)")
        feeds = (args.feeds or ("device,host" if device.type == "cuda" else "host,device")).split(",")
        print(f"{'method':<19}{'preset':<7}{'feed':<7}{'real s/step':>12}{'img/s':>8}{'e2e s/step':>11}"
              f"{'bare s/step':>12}{'bare img/s':>11}{'steady x bare':>14}{'e2e x bare':>11}{'goal':>6}")
        for method in args.methods.split(","):
            for preset in args.presets.split(","):
                bare = None
                for feed in feeds:
                    try:
                        steady, e2e, cfg = real_path(data, method, preset, args, work, feed)
                    except ValueError as e:  # e.g. no 'long' preset for this method
                        print(f"{method:<19}{preset:<7} skipped: {e}")
                        break
                    bare = bare if bare is not None else bare_step(cfg, args, device)
                    print(f"{method:<19}{preset:<7}{feed:<7}{steady:>12.3f}{args.batch / steady:>8.0f}{e2e:>11.3f}"
                          f"{bare:>12.3f}{args.batch / bare:>11.0f}{steady / bare:>14.2f}{e2e / bare:>11.2f}"
                          f"{GOAL[method]:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
