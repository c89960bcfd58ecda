"""Named pretraining recipes: overrides of `PretrainConfig` for a purpose.

- ``paper``: each method's published recipe, adapted to one-channel X-rays the same way for all
  (no colour jitter, grayscale or flips: radiographs have one channel and a laterality). moco_v2:
  MoCo v2 (Chen et al. 2020, arXiv:2003.04297): T 0.2, queue 65,536, key momentum 0.999, MLP head,
  no variance term, SGD lr 0.03 x batch/256 with momentum 0.9, weight decay 1e-4, cosine, 200 epochs,
  crops 0.2-1, jitter 0.4, blur p 0.5. barlow_twins: Zbontar et al. 2021: 8192-d projector, batch
  2048, 1000 epochs, jitter 0.4, blur (p 0.5 on both views: the paper's 1.0 / 0.1 made symmetric).
  dino: the ResNet-50 recipe of its config (Caron et al. 2021) with DINO's views (jitter 0.4, blur
  p 0.5: the paper's 1.0 / 0.1 made symmetric). spark: its config's values (Tian et al. 2023; crops
  only). masked_contrastive has no paper of its own: MoCo v2's published recipe on SparK-masked views.
  Meant for 100+ epochs at batch 256+ on GPUs.
- ``study``: the seed study's settings, the methods' config defaults (engine/ssl/<method>.py) with
  its X-ray views (crops 0.08-1, jitter 0.8, noise 0.1, no blur). For moco_v2 that is MoCo v2 with
  T 0.07 plus the VICReg variance term (weight 1); barlow_twins: a 2048-d projector. Before this
  preset existed, ``paper`` meant these settings: a run stored under that name resumes with the
  numbers its config recorded (`resume_settings`).
- ``quick``: a few hundred steps at batch 32 on a laptop CPU (the demo workspace, a first look at a
  new dataset). Paper settings assume long runs: a 0.999 key momentum or a 65,536-key queue barely
  move in 300 steps, and an 8x-scaled lr wipes out the random init's useful features first.
- ``long``: thousands of steps at batch 256 on a pool of ~10,000 radiographs (a GPU; the recipe of
  the shipped backbones, checkpoints/shipped/*.md), for the methods that have one.

Each method's values are registered with it (`MethodSpec.presets`, engine/ssl/registry.py); a method
without a ``paper`` or ``study`` entry uses its config's defaults for it. What was measured to choose
the quick and long values, with the commands: docs/results.md.
"""
from __future__ import annotations

from typing import Any

from engine.ssl.registry import METHODS, get_method

PRESETS: tuple[str, ...] = ("paper", "study", "quick", "long")
# One line each for `--help` and the Pretrain page.
PRESET_HELP: dict[str, str] = {
    "paper": "each method's published recipe (MoCo v2: T 0.2, no variance term, 200 epochs; long GPU runs)",
    "study": "the seed study's settings (MoCo v2 with T 0.07 plus the VICReg variance term)",
    "quick": "measured to beat random init in a few hundred steps at batch 32 on a CPU",
    "long": "the shipped backbones' recipe: thousands of steps at batch 256 on ~10,000 images (GPU)",
}
_DEFAULTS_ARE = ("paper", "study")  # presets a method without its own entry takes as its config's defaults


def preset_overrides(method: str, preset: str) -> dict[str, Any]:
    """PretrainConfig fields (method_config and aug as dicts of their own fields) that `preset` sets.

    Raises ValueError for an unknown preset, an unknown method, or a method without that preset.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    spec = get_method(method)
    if preset in _DEFAULTS_ARE and preset not in spec.presets:
        return {}
    if preset not in spec.presets:
        having = [name for name, s in METHODS.items() if preset in s.presets]
        raise ValueError(f"no {preset!r} preset for method {method!r}; it has one for {', '.join(having)} "
                         f"(use --preset paper, study or quick for {method})")
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


# Presets whose name meant other settings before: (method, name) -> the preset that holds the old meaning.
# `paper` meant the config defaults for every method, i.e. today's `study`, until `paper` became the published recipe.
RENAMED: dict[tuple[str, str], str] = {(m, "paper"): "study" for m in ("moco_v2", "barlow_twins", "dino",
                                                                        "masked_contrastive")}


def recorded_settings(run_dir: Any) -> Any:
    """The PretrainConfig the saved state run_dir/state.pt recorded, or None when there is none.

    Reads only the config (the file is memory-mapped, weights stay on disk). Raises ValueError naming
    the file when it is not a valid training state."""
    from pathlib import Path

    import torch

    from engine.ssl.config import PretrainConfig

    path = Path(run_dir) / "state.pt"
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return PretrainConfig.from_dict(state["config"])
    except Exception as e:  # damaged, foreign or from an incompatible version
        raise ValueError(f"{path} is not a valid training state ({e}); delete it to restart the run") from e


def resume_settings(cfg: Any, run_dir: Any) -> Any:
    """The settings a stored run resumes with: the config its saved state recorded (the config is the
    resume key), with the save / monitor frequencies of `cfg` (engine.ssl.config.RESUME_FREE); `cfg`
    when run_dir holds no state.

    For the app's jobs and the studies, whose stored parameters name a preset rather than its numbers
    and cannot be edited: a preset whose meaning changed (`RENAMED`) must not stop an old run from
    resuming as it was started. Raises ValueError for a state that is not a valid training state."""
    from engine.ssl.config import RESUME_FREE, PretrainConfig

    recorded = recorded_settings(run_dir)
    if recorded is None:
        return cfg
    free = {k: v for k, v in cfg.to_dict().items() if k in RESUME_FREE}
    return PretrainConfig.from_dict({**recorded.to_dict(), **free})


def same_settings(a: Any, b: Any) -> bool:
    """Whether two PretrainConfigs train identically (they differ at most in RESUME_FREE fields)."""
    from engine.ssl.config import RESUME_FREE

    da, db = a.to_dict(), b.to_dict()
    return all(da[k] == db[k] for k in da if k not in RESUME_FREE)
