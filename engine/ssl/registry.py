"""The SSL method registry: every method is registered once, here, and everything else reads it.

A `MethodSpec` holds what the rest of the code needs to know about a method: its name and label,
where its config dataclass, `SSLMethod` subclass and optimizer `RECIPE` live, its named recipes
(`paper`, `study`, `quick`, `long`; engine.ssl.presets), and the weight adaptive collapse control adjusts (or why it
has none). Readers: `PretrainConfig` and the loop (engine.ssl.config / engine.ssl.loop), the presets,
the CLI (`--method` choices and help), the Pretrain page (list, texts) and `ui.widgets.method_label`.

This module imports no torch: the CLI's parser lists the methods without loading it. A spec names
its module and classes; `config_cls`, `method_cls` and `recipe` import them on first use.

Adding a method: write engine/ssl/<name>.py (a frozen config dataclass, an `SSLMethod` subclass and
`RECIPE`) and register one `MethodSpec` below (tests/ssl/test_ssl_registry.py checks that every
`SSLMethod` subclass in engine/ssl is registered). Why each preset value: docs/results.md.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class CollapseKnob:
    """The weight adaptive collapse control adjusts (engine.ssl.monitor.CollapseController).

    weight: the method module's attribute (also its config field) holding the weight;
    ref: the reference value that sets the bounds when a run starts from weight 0;
    label: how the app names the weight.
    """

    weight: str
    ref: float
    label: str


@dataclass(frozen=True)
class MethodSpec:
    """One registered SSL method. `presets` maps a preset name to PretrainConfig overrides (with
    `method_config` and `aug` as dicts of their own fields); treat it as read-only."""

    name: str  # the id in configs, checkpoints and the CLI (`--method`)
    label: str  # human name (app, checkpoint tables)
    summary: str  # one line for the Pretrain page: what the method learns from, with its paper
    module: str  # engine.ssl.<file> holding the classes below
    config: str  # config dataclass (its defaults: the `study` preset)
    method: str  # SSLMethod subclass
    opt_example: str  # a `--opt KEY=VALUE` for the CLI's help
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    collapse_knob: CollapseKnob | None = None
    no_collapse_control: str = ""  # why there is no knob (the refusal message) when collapse_knob is None

    def _attr(self, name: str) -> Any:
        return getattr(importlib.import_module(self.module), name)

    @property
    def config_cls(self) -> type:
        return self._attr(self.config)

    @property
    def method_cls(self) -> type:
        return self._attr(self.method)

    @property
    def recipe(self) -> Any:
        """The method's optimizer recipe (`RECIPE` of its module, an engine.ssl.common.OptimRecipe)."""
        return self._attr("RECIPE")


_METHODS: dict[str, MethodSpec] = {}
METHODS: Mapping[str, MethodSpec] = MappingProxyType(_METHODS)  # name -> spec, in registration order


def register(spec: MethodSpec) -> MethodSpec:
    """Add `spec`; raises ValueError when its name is taken."""
    if spec.name in _METHODS:
        raise ValueError(f"SSL method {spec.name!r} is registered already")
    _METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The spec of `name`; raises ValueError listing the registered names when there is none."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown SSL method {name!r}; choose one of {', '.join(_METHODS)}") from None


def method_names() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(_METHODS)


# --- shared views of the presets ---------------------------------------------------------------
# quick: views that share no pixel grain (exposure jitter, always-on blur, fresh noise), crops
# keeping the global layout. long: paper strength where a pool of ~10,000 images allows, with the
# X-ray changes argued in engine/ssl/augment.py (crops 0.3-1, jitter 0.4, noise 0.05, MoCo v2 blur), plus
# histogram equalization on half the views: the one change of bench/xray_recipe.py's ablation that helped on
# both tasks (docs/results.md, "X-ray recipe"; CPU scale, one pretraining seed: the next GPU window checks it).
# The shipped cxr-moco_v2-resnet18-224 was trained before it (its json records its own views).
_GRAINLESS_VIEWS: dict[str, Any] = {"jitter": 0.4, "noise_std": 0.05, "blur_p": 1.0, "blur_sigma": (3.5, 7.0)}
_LONG_VIEWS: dict[str, Any] = {"crop_scale": (0.3, 1.0), "jitter": 0.4, "noise_std": 0.05, "blur_p": 0.5,
                               "blur_sigma": (0.1, 2.0), "hist_eq_p": 0.5}
# MoCo v2's quick and long heads: queue smaller than an epoch (an image's own stale key is rarely its
# negative), key momentum 0.99 for a short run, T 0.2 (MoCo v2), BN head with centred output (MoCo v3's).
_MOCO_QUICK: dict[str, Any] = {"queue": 256, "m": 0.99, "T": 0.2, "head_bn": True, "head_out_bn": True}
# MoCo v2's knob: the feature-decorrelation weight (Hua et al. 2021). The VICReg variance weight was the
# first knob, but raising it lowered the effective rank (the hinge on each dimension's std is met by a
# low-rank spread: 36.8 vs 44.0 uncontrolled at 60 steps; docs/results.md). Reference 0.1: the term is then
# ~1/10 of InfoNCE on a partly collapsed 128-d head (L_dec ~ 10-60 there, L_nce ~ 5-8).
_DECORR_KNOB = CollapseKnob("decorr_weight", 0.1, "feature-decorrelation weight")
# MoCo v2 as published (Chen et al. 2020, arXiv:2003.04297; facebookresearch/moco main_moco.py with --mlp
# --moco-t 0.2 --aug-plus --cos): T 0.2, K 65,536, m 0.999, MLP head without BN, no variance term; SGD lr 0.03
# per 256 images (the recipe's base_lr), momentum 0.9, weight decay 1e-4, cosine, 200 epochs. Views: crops
# 0.2-1, brightness/contrast jitter 0.4 with p 0.8, blur sigma 0.1-2 with p 0.5; no noise (grayscale and
# flips left out for X-rays, as in every preset).
_MOCO_PAPER_HEAD: dict[str, Any] = {"T": 0.2, "queue": 65536, "m": 0.999, "var_weight": 0.0, "decorr_weight": 0.0,
                                    "proj_dim": 128, "head_bn": False, "head_out_bn": False}
_MOCO_PAPER_VIEWS: dict[str, Any] = {"crop_scale": (0.2, 1.0), "jitter": 0.4, "jitter_p": 0.8, "noise_std": 0.0,
                                     "blur_p": 0.5, "blur_sigma": (0.1, 2.0)}
_MOCO_PAPER: dict[str, Any] = {"epochs": 200, "batch_size": 256, "lr": None, "weight_decay": None,
                               "warmup_epochs": None, "method_config": _MOCO_PAPER_HEAD, "aug": _MOCO_PAPER_VIEWS}
# The seed study's MoCo v2: T 0.07 plus the VICReg variance term (weight 1, target std 1), its X-ray views.
_MOCO_STUDY: dict[str, Any] = {"method_config": {"T": 0.07, "var_weight": 1.0, "gamma": 1.0}}
# Barlow Twins' and DINO's views with the blur made symmetric (their papers blur view 1 with p 1.0, view 2 with 0.1)
_PAPER_VIEWS_SYM_BLUR: dict[str, Any] = {"crop_scale": (0.08, 1.0), "jitter": 0.4, "jitter_p": 0.8, "noise_std": 0.0,
                                         "blur_p": 0.5, "blur_sigma": (0.1, 2.0)}

register(MethodSpec(
    name="moco_v2", label="MoCo v2", module="engine.ssl.moco_v2", config="MoCoConfig", method="MoCoV2",
    summary="contrastive: two augmented views of one X-ray should match, other X-rays should not "
            "(He et al. 2020; MoCo-CXR).",
    opt_example="queue=4096 --opt T=0.2",
    presets={
        "paper": _MOCO_PAPER,
        "study": _MOCO_STUDY,
        "quick": {"lr": 0.0075, "method_config": dict(_MOCO_QUICK),
                  "aug": {"crop_scale": (0.8, 1.0), **_GRAINLESS_VIEWS}},
        # lr 0.06 = the quick recipe's 0.0075 at batch 32, linearly scaled to 256; queue 4096 = 16 steps < one epoch
        "long": {"lr": 0.06, "method_config": {**_MOCO_QUICK, "queue": 4096}, "aug": dict(_LONG_VIEWS)},
    },
    collapse_knob=_DECORR_KNOB,
))

register(MethodSpec(
    name="barlow_twins", label="Barlow Twins", module="engine.ssl.barlow_twins", config="BarlowConfig",
    method="BarlowTwins",
    summary="makes the embedding of two views agree while decorrelating its dimensions (Zbontar et al. 2021).",
    opt_example="proj_dim=8192",
    presets={
        # Zbontar et al. 2021: 8192-8192-8192 projector, batch 2048, 1000 epochs (LARS lr 0.2: the recipe's)
        "paper": {"epochs": 1000, "batch_size": 2048, "method_config": {"proj_dim": 8192},
                  "aug": dict(_PAPER_VIEWS_SYM_BLUR)},
        # 1024-d projector (8192-d is for batch 2048), milder augmentation than the study's
        "quick": {"lr": 0.2, "method_config": {"proj_dim": 1024},
                  "aug": {"crop_scale": (0.3, 1.0), "jitter": 0.4, "noise_std": 0.05}},
        "long": {"lr": 0.2, "method_config": {"proj_dim": 2048}, "aug": dict(_LONG_VIEWS)},  # the paper's LARS lr
    },
    # a larger lambda decorrelates more dimensions; reference = the paper's 5e-3
    collapse_knob=CollapseKnob("lambd", 0.005, "off-diagonal weight (lambda)"),
))

register(MethodSpec(
    name="spark", label="SparK", module="engine.ssl.spark", config="SparKConfig", method="SparK",
    summary="masked image modelling for CNNs: hide patches, reconstruct them (Tian et al. 2023).",
    opt_example="mask_ratio=0.75",
    presets={"quick": {"lr": 5e-4, "method_config": {"decoder_width": 256}}},
    no_collapse_control=(
        "spark has no regularization term to adjust: its loss is the reconstruction error of masked "
        "patches alone, so there is no weight to raise when the rank falls. Leave --collapse-control "
        "off for spark, or use masked_contrastive (masking + MoCo v2 with its feature-decorrelation weight)"),
))

register(MethodSpec(
    name="dino", label="DINO", module="engine.ssl.dino", config="DINOConfig", method="DINO",
    summary="self-distillation between a student and a momentum teacher (Caron et al. 2021).",
    opt_example="out_dim=4096",
    presets={
        "paper": {"aug": dict(_PAPER_VIEWS_SYM_BLUR)},  # the config's ResNet-50 recipe with DINO's views
        # BN head, 256 prototypes, a sharper teacher, MoCo's quick views and no local crops
        "quick": {"lr": 0.02, "method_config": {"out_dim": 256, "n_local_crops": 0, "momentum_teacher": 0.99,
                                                "head_bn": True, "teacher_temp": 0.02, "warmup_teacher_temp": 0.02,
                                                "global_scale": (0.8, 1.0)},
                  "aug": dict(_GRAINLESS_VIEWS)},
    },
    no_collapse_control=(
        "dino has no variance-regularization weight: it avoids collapse by centring and sharpening the "
        "teacher (--opt teacher_temp=..., --opt center_momentum=...), not by a weighted term. Leave "
        "--collapse-control off for dino, or use moco_v2, barlow_twins or masked_contrastive"),
))

register(MethodSpec(
    name="masked_contrastive", label="Masked-contrastive (MoCo v2 on SparK-masked views)",
    module="engine.ssl.masked_contrastive", config="MaskedContrastiveConfig", method="MaskedContrastive",
    summary="contrastive on partly hidden X-rays: a view with half its patches masked must match an "
            "unmasked view (MoCo v2 + SparK masking, optionally reconstructing the hidden patches).",
    opt_example="recon_weight=1",
    presets={
        # no paper of its own: MoCo v2's published recipe, with the config's SparK mask (0.6 of 32 px patches)
        "paper": {**_MOCO_PAPER, "method_config": dict(_MOCO_PAPER_HEAD)},
        "study": {"method_config": dict(_MOCO_STUDY["method_config"])},
        # MoCo v2's quick recipe with a SparK mask of half the query's 32 px patches and SparK's
        # reconstruction at weight 1 (its 256-wide decoder)
        "quick": {"lr": 0.0075, "method_config": {**_MOCO_QUICK, "patch": 32, "mask_ratio": 0.5, "recon_weight": 1.0,
                                                  "decoder_width": 256},
                  "aug": {"crop_scale": (0.8, 1.0), **_GRAINLESS_VIEWS}},
    },
    collapse_knob=_DECORR_KNOB,  # MoCo v2's (the class it subclasses)
))
