"""SSL training-step throughput per method vs a bare forward+backward of the same backbone.

For each method: images/s of one full training step (on-device augmentation of every view, forward,
loss, backward, optimizer step, momentum/queue updates) and the same for a bare
`backbone(x).mean().backward()` on the same uint8 batch, timed alternately in one run; the ratio
says how many bare forward+backward passes one method step costs (2 views ~ 2x, DINO's multi-crop more).

    python bench/pretrain_throughput.py                        # CPU: resnet18, 64 px, batch 32
    python bench/pretrain_throughput.py --device cuda --arch resnet50 --image-size 224 --batch 64
    python bench/pretrain_throughput.py --device cuda --cuda-extras   # + AMP/channels_last MoCo v2 resnet50,
                                                                     #   peak memory Barlow resnet18 batch 512
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.device import describe, resolve_device  # noqa: E402
from engine.models import build_backbone, prepare_batch  # noqa: E402
from engine.ssl.common import build_optimizer  # noqa: E402
from engine.ssl.pretrain import METHODS, PretrainConfig, apply_update, build_method, forward_backward  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(method: str, arch: str, size: int, batch: int, device: torch.device, amp: bool, channels_last: bool):
    cfg = PretrainConfig(method=method, arch=arch, image_size=size, batch_size=batch, amp=amp, channels_last=channels_last)
    m = build_method(cfg).to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    m.channels_last = channels_last
    m.train()
    opt = build_optimizer(m, cfg.recipe, 0.01, cfg.recipe.weight_decay)
    dtype = (torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16) if amp else None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    params = [p for p in m.parameters() if p.requires_grad]
    g = torch.Generator(device=device)
    g.manual_seed(0)
    state = {"step": 0}

    def step() -> None:
        forward_backward(m, m, opt, scaler, xb, g, dtype)
        apply_update(m, opt, scaler, params, state["step"], 10**6)
        state["step"] += 1

    xb = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8, device=device)
    return step, xb, dtype


def _bare(arch: str, xb: torch.Tensor, device: torch.device, dtype, channels_last: bool):
    bb = build_backbone(arch).to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    bb.train()

    def step() -> None:
        x = prepare_batch(xb, device, channels_last=channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = bb(x).float().mean()
        bb.zero_grad(set_to_none=True)
        loss.backward()

    return step


def _time(fn, n: int, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / n


def measure(method: str, arch: str, size: int, batch: int, device: torch.device, steps: int, rounds: int,
            amp: bool = False, channels_last: bool = False) -> tuple[float, float]:
    """(method images/s, bare fwd+bwd images/s), median over alternating rounds after a warmup."""
    step, xb, dtype = _setup(method, arch, size, batch, device, amp, channels_last)
    bare = _bare(arch, xb, device, dtype, channels_last)
    for fn in (step, bare):  # warmup (allocator, cudnn autotune, lazy init)
        _time(fn, 2, device)
    t_m, t_b = [], []
    for _ in range(rounds):
        t_m.append(_time(step, steps, device))
        t_b.append(_time(bare, steps, device))
    return batch / statistics.median(t_m), batch / statistics.median(t_b)


def barlow_peak_memory(device: torch.device, batch: int = 512, size: int = 224) -> None:
    for gc in (True, False):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        cfg = PretrainConfig(method="barlow_twins", arch="resnet18", image_size=size, batch_size=batch,
                             method_config={"grad_checkpointing": gc})
        m = build_method(cfg).to(device, memory_format=torch.channels_last)
        m.channels_last = True
        opt = build_optimizer(m, cfg.recipe, 0.01, cfg.recipe.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=not torch.cuda.is_bf16_supported())
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        g = torch.Generator(device=device)
        g.manual_seed(0)
        xb = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8, device=device)
        try:
            for i in range(2):
                forward_backward(m, m, opt, scaler, xb, g, dtype)
                apply_update(m, opt, scaler, [p for p in m.parameters() if p.requires_grad], i, 10)
            _sync(device)
            print(f"barlow_twins resnet18 batch {batch} @ {size}px AMP, grad checkpointing {'on ' if gc else 'off'}: "
                  f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
        except torch.OutOfMemoryError:
            print(f"barlow_twins resnet18 batch {batch} @ {size}px, grad checkpointing {gc}: out of memory")
        del m, opt, xb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet50"))
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=2, help="alternating method/bare blocks (median)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 by default: on a shared 2-core box 2 threads ran 3x slower)")
    ap.add_argument("--cuda-extras", action="store_true",
                    help="AMP+channels_last resnet50 MoCo v2 and Barlow resnet18 batch-512 peak memory (CUDA)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    print(f"device {describe(device)}; {args.arch} @ {args.image_size}px, batch {args.batch}; paper-default method "
          f"configs; AMP+channels_last {'on' if cuda else 'off'}")
    print(f"{'method':<14}{'step img/s':>12}{'bare f+b img/s':>16}{'step cost (x bare)':>20}")
    for method in args.methods.split(","):
        size = args.image_size if method != "spark" else max(32, args.image_size // 32 * 32)
        im, ib = measure(method, args.arch, size, args.batch, device, args.steps, args.rounds, amp=cuda, channels_last=cuda)
        print(f"{method:<14}{im:>12.1f}{ib:>16.1f}{ib / im:>20.2f}", flush=True)
    if not args.cuda_extras:
        return
    if not cuda:
        print("--cuda-extras skipped: AMP + channels_last MoCo v2 resnet50 and Barlow Twins peak memory need a CUDA GPU")
        return
    for amp in (False, True):
        im, ib = measure("moco_v2", "resnet50", 224, 64, device, args.steps, args.rounds, amp=amp, channels_last=amp)
        print(f"moco_v2 resnet50 224px batch 64 {'AMP+channels_last' if amp else 'fp32             '}: "
              f"{im:.1f} img/s (bare {ib:.1f}, x{ib / im:.2f})", flush=True)
    barlow_peak_memory(device)


if __name__ == "__main__":
    main()
