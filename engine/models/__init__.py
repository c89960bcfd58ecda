"""Backbones, the init registry and the checkpoint format."""
from engine.models.backbones import ARCHS, DEFAULT_LAYER, build_backbone, prepare_batch, resnet_stages, stage_channels
from engine.models.registry import (
    DEFAULT_ARCH, BackboneMeta, InitInfo, InitUnavailableError, UnknownInitError,
    list_inits, load_backbone, save_backbone,
)

__all__ = [
    "ARCHS", "DEFAULT_ARCH", "DEFAULT_LAYER", "BackboneMeta", "InitInfo", "InitUnavailableError", "UnknownInitError",
    "build_backbone", "list_inits", "load_backbone", "prepare_batch", "resnet_stages", "save_backbone", "stage_channels",
]
