"""Images in, features out: the classifier's input pipeline (pad-mode squares) and its feature forward."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from engine.fewshot.classifier.errors import ClassifierScoreError
from engine.fewshot.features import forward_features
from engine.models.backbones import ARCHS

ImageInput = np.ndarray | str | Path


def to_uint8(images: Sequence[ImageInput], size: int) -> np.ndarray:
    """float32 HxW arrays in [0, 1] (or HxWx3/4, averaged) or image paths -> (N, S, S) uint8 squares (pad mode).
    Raises ClassifierScoreError for an image holding NaN or infinite pixels."""
    from engine.data.io import read_image
    from engine.data.transforms import fit_square

    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        if isinstance(img, (str, Path)):
            img = read_image(img)[0]
        img = np.asarray(img, dtype=np.float32)
        if img.ndim == 3 and img.shape[-1] in (3, 4):
            img = img[..., :3].mean(-1)
        if not np.isfinite(img).all():
            raise ClassifierScoreError(f"image {i + 1} holds NaN or infinite pixel values; give pixels in [0, 1]")
        out[i] = fit_square(img, size)[0]
    return out


def frozen_output_module(model: nn.Module, arch: str) -> nn.Module:
    """The module whose output feeds the last stage (resnet: layer3; densenet: transition3)."""
    return model.layer3 if arch.startswith("resnet") else model.features.transition3


def forward_with_frozen(model: nn.Module, arch: str, u8: np.ndarray, device: torch.device, mean: Sequence[float],
                        std: Sequence[float], frozen: bool) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features (N, D), and when `frozen` the pooled last-stage input (N, C) else the same features),
    in one forward pass over uint8 (N, S, S) images."""
    caught: list[np.ndarray] = []
    hook = frozen_output_module(model, arch).register_forward_hook(
        lambda _m, _i, out: caught.append(out.float().mean(dim=(2, 3)).cpu().numpy())) if frozen else None
    try:
        out = [f for _, f in forward_features(model, u8, device, tuple(mean), tuple(std))]
    finally:
        if hook is not None:
            hook.remove()
    F = np.concatenate(out) if out else np.zeros((0, ARCHS[arch]), dtype=np.float32)
    return F, (np.concatenate(caught) if frozen and caught else F)
