"""Device selection. Everything takes a `torch.device`; nothing calls `.cuda()` directly."""
from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu. Asking for cuda without one is a clear error."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a device: bf16 where supported, else fp16 on CUDA; None on CPU (fp32)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        i = device.index or 0
        p = torch.cuda.get_device_properties(i)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB)"
    return "CPU"


def choose_cpu_threads(arch: str = "resnet18", image_size: int = 64, batch: int = 32,
                       candidates: tuple[int, ...] | None = None, apply: bool = True) -> tuple[int, dict[int, float]]:
    """Pick torch's CPU thread count for training by timing it here, now; returns (threads, {threads: s/step}).

    Times a plain `arch` forward+backward on a (batch, 3, image_size, image_size) random batch (one
    warmup, then the median of two) at 1 thread and at every usable core (`os.sched_getaffinity`), and
    keeps the faster; with `apply` it calls `torch.set_num_threads`. Why: torch's default is one
    thread per core, which on a machine whose cores are also busy with other work (a Streamlit server,
    a browser, a second job) oversubscribes them; measured on this project's 2-core machine under
    load, MoCo v2 at 64 px batch 32 ran 5.2 s/step with 2 threads and 0.95 s/step with 1
    (bench/pretrain_throughput.py), and on an idle machine the 2 threads win. The probe costs a few
    steps' time once per run. Numerics can differ between thread counts, so call it before training,
    never mid-run.
    """
    import os
    import statistics
    import time

    from engine.models import build_backbone

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cands = tuple(sorted(set(candidates or (1, cores))))
    before = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_backbone(arch).train()
        x = torch.randn(batch, 3, image_size, image_size)
    timings: dict[int, float] = {}
    try:
        for n in cands:
            torch.set_num_threads(n)
            times = []
            for i in range(3):
                t = time.perf_counter()
                model(x).mean().backward()
                model.zero_grad(set_to_none=True)
                if i:
                    times.append(time.perf_counter() - t)
            timings[n] = statistics.median(times)
    finally:
        torch.set_num_threads(before)
    best = min(timings, key=timings.get)
    if apply:
        torch.set_num_threads(best)
    return best, timings


def configure_cpu_threads(setting: str | int = "auto", arch: str = "resnet18", image_size: int = 64,
                          batch: int = 32) -> tuple[int, str]:
    """Set torch's CPU threads for a training run; returns (threads, a one-line reason to print).

    `setting`: a number >= 1, or "auto": $SCARCE_CXR_THREADS, else $OMP_NUM_THREADS when set (the
    person or the test harness has decided), else `choose_cpu_threads` measures. Raises ValueError
    for anything else.
    """
    import os

    text = str(setting).strip().lower()
    if text != "auto":
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"threads must be auto or a whole number >= 1 (got {setting!r})")
        torch.set_num_threads(int(text))
        return int(text), f"CPU threads: {text} (as asked)"
    for var in ("SCARCE_CXR_THREADS", "OMP_NUM_THREADS"):
        val = os.environ.get(var, "").strip()
        if val.isdigit() and int(val) >= 1:
            torch.set_num_threads(int(val))
            return int(val), f"CPU threads: {val} (from ${var})"
    n, t = choose_cpu_threads(arch, image_size, batch)
    return n, (f"CPU threads: {n} (timed {', '.join(f'{k} thread(s) {v:.2f} s' for k, v in sorted(t.items()))} "
               "per probe step; --threads N to set)")
