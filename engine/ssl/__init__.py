"""Self-supervised pretraining: MoCo v2 (+ VICReg variance), Barlow Twins, SparK, DINO; one loop.

Public API: `PretrainConfig`, `pretrain` (uint8 image array -> checkpoint), `pretrain_from_data`
(manifest CSV / folder -> cache -> checkpoint), the per-method configs, `collapse_metrics`.
Names are imported lazily (PEP 562) so the CLI's parser (engine.ssl.commands) does not import torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "engine.ssl.augment": ["AugmentConfig"],
    "engine.ssl.barlow_twins": ["BarlowConfig"],
    "engine.ssl.dino": ["DINOConfig"],
    "engine.ssl.moco_v2": ["MoCoConfig"],
    "engine.ssl.monitor": ["CollapseMonitor", "collapse_metrics"],
    "engine.ssl.pretrain": ["METHODS", "NonFiniteLossError", "PretrainConfig", "pretrain", "pretrain_from_data"],
    "engine.ssl.spark": ["SparKConfig"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'engine.ssl' has no attribute {name!r}")
