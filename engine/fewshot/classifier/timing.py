"""How long a classifier build will take here, now: costs timed on this machine at the moment of asking.

`estimate_seconds` times small pieces of the work actually chosen (same arch, image size and batch) on
random weights -- a forward of 8 images through the backbone (and its frozen stages for the finetune), one
last-stage training step, one probe fit on features of the right shape, and reading 2 of the images to be
used -- and extrapolates by counting: images x reads and forwards, (repeats x k + 1) fits, and for the
finetune (views + 1) frozen forwards per image and `steps` steps per fit. Because the pieces are timed
when asked (well under 1 s for a probe at 224 px on an idle 2-core CPU; seconds
for a finetune, whose training step is timed too), the estimate includes the machine's current load; nothing is
memoized across calls. bench/classifier_estimate.py prints estimate / actual.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

FIXED_SECONDS = 1.0  # backbone load, bootstrap of the AUC and the operating point, familiarity, saving


@functools.lru_cache(maxsize=4)
def _model(arch: str) -> nn.Module:
    from engine.models.backbones import build_backbone

    torch.manual_seed(0)
    return build_backbone(arch).eval()


def _timed(fn, warm=None) -> float:
    """Seconds of one call of fn, after a warm-up call of `warm` (default fn); the current load is in it."""
    (warm or fn)()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_costs(arch: str, image_size: int, batch_size: int, device: torch.device | str = "cpu",
                  n_features: int = 24, finetune: bool = True) -> dict[str, float]:
    """Seconds, timed now: `forward` (one image through the backbone, in a batch of 8), `frozen` (one image
    through the frozen stages, batch of 8), `last_step` (one last-stage + head training step at `batch_size`;
    0 unless `finetune`), `probe_fit` (one probe fit on `n_features` feature rows)."""
    from engine.fewshot.fast_finetune import LastStage, _Frozen
    from engine.fewshot.probe import fit_probe
    from engine.models.backbones import ARCHS

    device = torch.device(device)
    model = _model(arch).to(device)
    frozen, stage = _Frozen(model, arch), LastStage(model, arch)
    head = nn.Linear(ARCHS[arch], 1).to(device)
    x = torch.rand(8, 3, image_size, image_size, device=device)  # the build embeds in batches of up to 64
    out = {"forward": 0.0, "frozen": 0.0, "last_step": 0.0}
    with torch.inference_mode():
        out["forward"] = _timed(lambda: model(x), lambda: model(x[:1])) / len(x)
        if finetune:
            out["frozen"] = _timed(lambda: frozen(x), lambda: frozen(x[:1])) / len(x)
            z = frozen(x[:2]).clone()
    if finetune:
        zb = z.repeat((batch_size + 1) // 2, 1, 1, 1)[:batch_size]
        out["last_step"] = _timed(lambda: head(stage(zb)).sum().backward(),
                                  lambda: head(stage(zb[:2])).sum().backward())
        model.zero_grad(set_to_none=True)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(max(4, n_features), ARCHS[arch])), np.arange(max(4, n_features)) % 2
    out["probe_fit"] = _timed(lambda: fit_probe(X, y))
    return out


def read_seconds(paths: Sequence[str | Path], image_size: int) -> float:
    """Seconds to read and letterbox one image, timed on up to 2 of `paths` (0 when none is readable)."""
    from engine.data.io import read_image
    from engine.data.transforms import fit_square

    times = []
    for p in list(paths)[:2]:
        try:
            t0 = time.perf_counter()
            fit_square(read_image(p)[0], image_size)
            times.append(time.perf_counter() - t0)
        except Exception:  # an unreadable file is the build's error to report, not the estimate's
            continue
    return float(np.mean(times)) if times else 0.0


def estimate_seconds(n_images: int, mode: str, arch: str = "resnet18", image_size: int = 224,
                     cv_repeats: int | None = None, device: torch.device | str = "cpu", fast=None,
                     sample_paths: Sequence[str | Path] = ()) -> dict[str, float]:
    """Expected build time here, now: {"seconds", "trainings", "repeats", "k"} (see the module docstring).
    `sample_paths`: some of the images to be used (their read time is timed; none: reading is not counted)."""
    from engine.fewshot.classifier.build import DEFAULT_REPEATS, default_fast_finetune

    fast = fast or default_fast_finetune()
    repeats = int(cv_repeats or DEFAULT_REPEATS[mode])
    k = 5
    trainings = repeats * k + 1
    c = measure_costs(arch, image_size, min(fast.batch_size, max(2, n_images)), device, n_features=n_images,
                      finetune=mode == "finetune")
    read = read_seconds(sample_paths, image_size)
    if mode == "probe":
        secs = n_images * (read + c["forward"]) + trainings * c["probe_fit"]
    else:
        secs = (n_images * (read + (fast.views + 1) * c["frozen"] + c["forward"])
                + trainings * fast.steps * c["last_step"])
    return {"seconds": secs + FIXED_SECONDS, "trainings": trainings, "repeats": repeats, "k": k}
