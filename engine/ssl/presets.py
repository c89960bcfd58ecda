"""Named pretraining recipes: overrides of `PretrainConfig` for a purpose.

- ``paper``: each method's published defaults (engine/ssl/<method>.py); meant for 100+ epochs at
  batch 256+ on GPUs. No overrides.
- ``quick``: a few hundred steps at batch 32 on a laptop CPU (the demo workspace, a first look at a
  new dataset). Paper settings assume long runs: a 0.999 key momentum or a 65,536-key queue barely
  move in 300 steps, and an 8x-scaled lr wipes out the random init's useful features first.
- ``long``: thousands of steps at batch 256 on a pool of ~10,000 radiographs (a GPU; the recipe of
  the shipped backbones, checkpoints/shipped/*.md), for the methods that have one.

Each method's values are registered with it (`MethodSpec.presets`, engine/ssl/registry.py).
What was measured to choose them, with the commands: docs/results.md.
"""
from __future__ import annotations

from typing import Any

from engine.ssl.registry import METHODS, get_method

PRESETS: tuple[str, ...] = ("paper", "quick", "long")


def preset_overrides(method: str, preset: str) -> dict[str, Any]:
    """PretrainConfig fields (method_config and aug as dicts of their own fields) that `preset` sets.

    Raises ValueError for an unknown preset, an unknown method, or a method without that preset.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if preset == "paper":
        return {}
    spec = get_method(method)
    if preset not in spec.presets:
        having = [name for name, s in METHODS.items() if preset in s.presets]
        raise ValueError(f"no {preset!r} preset for method {method!r}; it has one for {', '.join(having)} "
                         f"(use --preset paper or quick for {method})")
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.presets[preset].items()}


def build_config(method: str, preset: str = "paper", method_opts: dict[str, Any] | None = None,
                 aug_opts: dict[str, Any] | None = None, **fields: Any) -> Any:
    """A PretrainConfig for `method` from `preset`, then the caller's own settings on top.

    fields: PretrainConfig fields (None = not given, the preset's or the default value stays);
    method_opts / aug_opts: fields of the method's config and of AugmentConfig, merged over the preset's.
    Raises ValueError (unknown method or preset, invalid settings).
    """
    from engine.ssl.augment import AugmentConfig
    from engine.ssl.config import PretrainConfig

    spec = get_method(method)
    over = preset_overrides(method, preset)
    mc = {**over.pop("method_config", {}), **(method_opts or {})}
    aug = {**over.pop("aug", {}), **(aug_opts or {})}
    kw = {**over, **{k: v for k, v in fields.items() if v is not None}}
    return PretrainConfig(method=method, method_config=spec.config_cls(**mc), aug=AugmentConfig(**aug), **kw)
