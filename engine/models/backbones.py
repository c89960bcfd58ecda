"""Backbones (torchvision) as feature extractors, and the one input pipeline every init shares.

A backbone is the torchvision model with its classifier replaced by `Identity`, so
`model(x)` maps a (B, 3, S, S) normalized batch to pooled features (B, D) and the usual
module names stay (`layer4` for ResNets, `features.denseblock4` for DenseNet) for Grad-CAM.
Grayscale X-rays are replicated to 3 channels so ImageNet weights apply unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision.models as tvm

ARCHS: dict[str, int] = {"resnet18": 512, "resnet50": 2048, "densenet121": 1024}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Default Grad-CAM layer per arch: the last convolutional stage.
DEFAULT_LAYER = {"resnet18": "layer4", "resnet50": "layer4", "densenet121": "features.denseblock4"}


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return arch


def build_backbone(arch: str) -> nn.Module:
    """Randomly initialized backbone (seed with torch.manual_seed before calling for determinism)."""
    check_arch(arch)
    model = getattr(tvm, arch)(weights=None)
    if arch.startswith("resnet"):
        model.fc = nn.Identity()
    else:
        model.classifier = nn.Identity()
    model.arch = arch
    model.feat_dim = ARCHS[arch]
    return model


def resnet_stages(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Feature maps after layer1..layer4 of a ResNet backbone (strides 4, 8, 16, 32)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(model, name)(x)
        outs.append(x)
    return outs


def stage_channels(arch: str) -> list[int]:
    """Channels of resnet_stages outputs."""
    return [64, 128, 256, 512] if arch == "resnet18" else [256, 512, 1024, 2048]


def prepare_batch(
    x: torch.Tensor,
    device: torch.device,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    channels_last: bool | None = None,
) -> torch.Tensor:
    """uint8 (B, S, S) / (B, 1, S, S) or float in [0, 1] -> normalized float (B, 3, S, S) on `device`.

    The transfer happens in uint8 (4x fewer bytes) and the arithmetic on the device.
    channels_last defaults to True on CUDA (faster convolutions with AMP), False on CPU.
    """
    if x.ndim == 3:
        x = x[:, None]
    x = x.to(device, non_blocking=True)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    m = torch.tensor(mean, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    x = (x.expand(-1, 3, -1, -1) - m) / s
    if channels_last is None:
        channels_last = device.type == "cuda"
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
