"""Double full finetune's stage one in a sweep: the init finetuned once, whole network, on an intermediate finding."""
from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.atomic import atomic_write
from engine.events import OnEvent, emit
from engine.fewshot.finetune import Backbone, intermediate_backbone


def stage_one_backbone(init: str, backbone: Backbone, manifest_csv: str | Path, manifest: Any, test_rows: np.ndarray,
                       cfg: Any, out_dir: Path, device: torch.device, on_event: OnEvent | None,
                       stop: threading.Event | None, *, cache_dir: Path | None = None) -> Backbone:
    """Stage one of double full finetune for `init`: the whole backbone finetuned on `cfg.intermediate_finding`
    (`cfg` a SweepConfig), trained once and kept in `out_dir/intermediate/<init>.safetensors` for resume.

    Images: the rows of `cfg.intermediate_manifest` (default: the sweep's manifest) labeled for that finding,
    never a target test image (`test_rows`: same manifest -> their patients are dropped; another manifest ->
    the same paths are dropped), at most `cfg.intermediate_max_images` (seeded subsample), decoded into the
    image cache `cache_dir` (the sweep's; None: the workspace's). Raises ValueError when the finding is
    missing or one class is left."""
    from safetensors.torch import load_file, save_file

    from engine.data.cache import ImageCache
    from engine.data.manifest import load_manifest

    model, meta = backbone
    path = out_dir / "intermediate" / f"{init}.safetensors"
    if path.exists():
        m = copy.deepcopy(model)
        m.load_state_dict(load_file(str(path)))
        return m.to(device).eval(), meta
    src = Path(cfg.intermediate_manifest) if cfg.intermediate_manifest else Path(manifest_csv)
    same = src.resolve() == Path(manifest_csv).resolve()
    inter = manifest if same else load_manifest(src)
    f = cfg.intermediate_finding
    if f not in inter.findings:
        raise ValueError(f"intermediate finding {f!r} is not in {src}; it has: {', '.join(inter.findings)}")
    idf = inter.df
    keep = ~np.isnan(idf[f].to_numpy(dtype=np.float64))
    # Never pretrain on a target test image: same manifest -> drop test patients; else drop same paths.
    if same:
        keep &= ~idf["patient_id"].astype(str).isin(set(manifest.df["patient_id"].astype(str).iloc[test_rows]))
    else:
        keep &= ~idf["path"].isin(set(manifest.df["path"].iloc[test_rows]))
    rows = np.flatnonzero(keep)
    rng = np.random.default_rng(cfg.seed)
    if rows.size > cfg.intermediate_max_images:
        rows = np.sort(rng.choice(rows, cfg.intermediate_max_images, replace=False))
    y = idf[f].to_numpy(dtype=np.float64)[rows]
    if len(np.unique(y)) < 2:
        raise ValueError(f"intermediate finding {f!r} needs positive and negative images outside the test set")
    cache = ImageCache.build(list(idf["path"].iloc[rows]), cfg.image_size, cache_dir=cache_dir, on_event=on_event,
                             stop=stop)
    emit(on_event, message=f"double full finetune: stage one of {init} on {f} ({rows.size} images)")
    m, _ = intermediate_backbone(backbone, np.asarray(cache.array), y, cfg.full_finetune, device, cfg.seed, on_event,
                                 stop)
    sd = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(sd, tmp))
    return m, meta
