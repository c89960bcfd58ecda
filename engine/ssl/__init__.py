"""Self-supervised pretraining: MoCo v2 (+ VICReg variance), Barlow Twins, SparK, DINO, masked-contrastive; one loop.

Public API: `PretrainConfig`, `pretrain` (uint8 image array -> checkpoint), `pretrain_from_data`
(manifest CSV / folder -> cache -> checkpoint), the per-method configs, `collapse_metrics`.
Names are imported lazily (PEP 562) so the CLI's parser (engine.ssl.commands) does not import torch.

`pretrain` is both a submodule and the function it defines; `engine.ssl.pretrain` is always the
function (as `from engine.ssl import pretrain` expects), whichever is imported first. Import the
submodule's other names with `from engine.ssl.pretrain import ...`.
"""
from __future__ import annotations

import importlib
import sys
import types

_EXPORTS = {
    "engine.ssl.augment": ["AugmentConfig"],
    "engine.ssl.barlow_twins": ["BarlowConfig"],
    "engine.ssl.dino": ["DINOConfig"],
    "engine.ssl.moco_v2": ["MoCoConfig"],
    "engine.ssl.masked_contrastive": ["MaskedContrastiveConfig"],
    "engine.ssl.monitor": ["CollapseControl", "CollapseMonitor", "collapse_metrics"],
    "engine.ssl.pretrain": ["METHODS", "NonFiniteLossError", "PretrainConfig", "pretrain", "pretrain_from_data"],
    "engine.ssl.spark": ["SparKConfig"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
_SHADOWED = {name for name, mod in _WHERE.items() if mod.rsplit(".", 1)[1] == name}  # {"pretrain"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'engine.ssl' has no attribute {name!r}")


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # The import system binds a loaded submodule to its parent with setattr; for `pretrain`
        # keep the function of that name instead of the module.
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
