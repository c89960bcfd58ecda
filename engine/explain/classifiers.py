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

# The state file key's word for each mode. full_finetune keeps the key it had as the study's "finetune" before the
# head recipe (engine.fewshot.modes; same training, so those files are reused); the Classifier's finetune, new to
# the study, gets a word of its own.
STATE_MODE = {"probe": "probe", "full_finetune": "finetune", "finetune": "last_stage_finetune"}


def head_settings(finetune_steps: int | None) -> Any:
    """The head recipe's settings of a study: its defaults, with both finetunes' step budget set when given."""
    from engine.fewshot.fast_finetune import FastFinetune
    from engine.fewshot.finetune import FinetuneConfig
    from engine.fewshot.head_recipe import HeadSettings

    if finetune_steps is None:
        return HeadSettings()
    return HeadSettings(fast=FastFinetune(steps=finetune_steps), full=FinetuneConfig(steps=finetune_steps))


def train_or_reuse_classifier(init: str, backbone: tuple[nn.Module, Any], cache: Any, y: np.ndarray, mode: str,
                              device: torch.device, seed: int, finetune_steps: int | None, state: Path,
                              on_event: OnEvent | None, stop: threading.Event | None, *,
                              feature_dir: Path | None = None) -> tuple[nn.Module, nn.Module]:
    """(backbone, head) for one init on the study's episode: read from `state` (safetensors: `head.*` and, when
    training changed the backbone, its tensors) when an identical run saved it, else trained by the head recipe
    (engine.fewshot.head_recipe.fit_episode: `mode` probe / finetune / full_finetune on the `cache`'s images with
    `seed`, probe embeddings kept in `feature_dir`; `finetune_steps` steps for either finetune) and saved there
    atomically."""
    from safetensors.torch import load_file, save_file

    from engine.fewshot.head_recipe import fit_episode

    model, meta = backbone
    if state.exists():
        sd = load_file(str(state))
        head = nn.Linear(meta.feat_dim, 1)
        head.load_state_dict({"weight": sd.pop("head.weight"), "bias": sd.pop("head.bias")})
        if sd:
            model.load_state_dict(sd)
        emit(on_event, message=f"{init}: reusing the classifier trained earlier ({state.name})", kind="log")
        return model, head.to(device)
    fitted, _ = fit_episode((model, meta), cache, y, mode, seed, device, settings=head_settings(finetune_steps),
                            feature_dir=feature_dir, on_event=as_log(on_event), stop=stop)
    trained, head = fitted.trained_backbone(), fitted.head
    sd = {} if trained is None else {k: v.detach().cpu().contiguous() for k, v in trained.state_dict().items()}
    sd |= {"head.weight": head.weight.detach().cpu().contiguous(), "head.bias": head.bias.detach().cpu().contiguous()}
    atomic_write(state, lambda tmp: save_file(sd, tmp))
    return (model if trained is None else trained), head
