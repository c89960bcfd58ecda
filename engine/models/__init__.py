"""Backbones, the init registry and the checkpoint format.

Names are imported lazily (PEP 562) so that `engine.models.commands` -- loaded by the CLI to build its
parser -- does not pay for importing torch and torchvision.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "engine.models.backbones": ["ARCHS", "DEFAULT_LAYER", "build_backbone", "prepare_batch", "resnet_stages",
                                "stage_channels"],
    "engine.models.classifier_net": ["ExplainModel"],
    "engine.models.registry": ["DEFAULT_ARCH", "BackboneMeta", "InitInfo", "InitUnavailableError", "UnknownInitError",
                               "default_init", "init_info", "input_size_for", "list_inits", "load_backbone",
                               "save_backbone", "shipped_inits", "synthetic_data"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'engine.models' has no attribute {name!r}")
