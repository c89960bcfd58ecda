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
