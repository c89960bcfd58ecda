"""The Grad-CAM study's classifiers: one per init on the shared episode, kept on disk for a resumed run."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from engine.atomic import atomic_write
from engine.events import OnEvent, as_log, emit


def train_or_reuse_classifier(init: str, backbone: tuple[nn.Module, Any], cache: Any, y: np.ndarray, mode: str,
                              device: torch.device, seed: int, finetune_steps: int | None, state: Path,
                              on_event: OnEvent | None, stop: threading.Event | None, *,
                              feature_dir: Path | None = None) -> tuple[nn.Module, nn.Module]:
    """(backbone, head) for one init on the study's episode: read from `state` (safetensors: `head.*` and, for
    finetune, the backbone's tensors) when an identical run saved it, else trained (probe: logistic regression on
    the embedded `cache`, embeddings kept in `feature_dir`; finetune: FinetuneConfig, `finetune_steps` steps) and
    saved there atomically."""
    from safetensors.torch import load_file, save_file

    model, meta = backbone
    if state.exists():
        sd = load_file(str(state))
        head = nn.Linear(meta.feat_dim, 1)
        head.load_state_dict({"weight": sd.pop("head.weight"), "bias": sd.pop("head.bias")})
        if sd:
            model.load_state_dict(sd)
        emit(on_event, message=f"{init}: reusing the classifier trained earlier ({state.name})", kind="log")
        return model, head.to(device)
    if mode == "probe":
        from engine.fewshot.features import embed
        from engine.fewshot.probe import fit_probe

        X = embed(init, cache, device, backbone=(model, meta), on_event=as_log(on_event), stop=stop,
                  feature_dir=feature_dir)  # (2k, D)
        head = fit_probe(X, y, seed=seed).as_torch_head().to(device)
        sd = {}
    else:
        from engine.fewshot.finetune import FinetuneConfig, finetune

        cfg = FinetuneConfig() if finetune_steps is None else FinetuneConfig(steps=finetune_steps)
        u8 = np.array(cache.array)  # (2k, S, S) uint8, a writable copy of the memmap rows
        model, head = finetune((model, meta), u8, y, cfg, device, seed, on_event=as_log(on_event), stop=stop)
        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd |= {"head.weight": head.weight.detach().cpu().contiguous(), "head.bias": head.bias.detach().cpu().contiguous()}
    atomic_write(state, lambda tmp: save_file(sd, tmp))
    return model, head
