"""Self-supervised pretraining: MoCo v2 (+ VICReg variance), Barlow Twins, SparK, DINO, masked-contrastive; one loop.

Public API: `PretrainConfig`, `pretrain_images` (uint8 image array -> checkpoint), `pretrain_from_data`
(manifest CSV / folder -> cache -> checkpoint), `METHODS` (the method registry, engine.ssl.registry),
the per-method configs, `collapse_metrics`. Every submodule is an ordinary module
(`import engine.ssl.pretrain` gives the module that defines `pretrain_images`).
Names are imported lazily (PEP 562) so the CLI's parser (engine.ssl.commands) does not import torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "engine.ssl.augment": ["AugmentConfig"],
    "engine.ssl.barlow_twins": ["BarlowConfig"],
    "engine.ssl.config": ["PretrainConfig"],
    "engine.ssl.dino": ["DINOConfig"],
    "engine.ssl.loop": ["NonFiniteLossError"],
    "engine.ssl.moco_v2": ["MoCoConfig"],
    "engine.ssl.masked_contrastive": ["MaskedContrastiveConfig"],
    "engine.ssl.monitor": ["CollapseControl", "CollapseMonitor", "collapse_metrics"],
    "engine.ssl.pretrain": ["pretrain_from_data", "pretrain_images"],
    "engine.ssl.registry": ["METHODS", "MethodSpec", "get_method", "method_names"],
    "engine.ssl.spark": ["SparKConfig"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'engine.ssl' has no attribute {name!r}")
