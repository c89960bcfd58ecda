"""Named pretraining recipes: overrides of `PretrainConfig` for a purpose.

- ``paper``: each method's published defaults (engine/ssl/<method>.py); meant for 100+ epochs at
  batch 256+ on GPUs. No overrides.
- ``long``: thousands of steps at batch 256 on a pool of ~10,000 radiographs (a GPU; the recipe
  of the shipped backbones), for moco_v2 and barlow_twins. Values and reasons at ``_LONG`` below.
- ``quick``: a few hundred steps at batch 32 on a laptop CPU (the demo workspace, a first look at a
  new dataset). Paper settings assume long runs: a 0.999 key momentum or a 65,536-key queue barely
  move in 300 steps, and an 8x-scaled lr wipes out the random init's useful features before the
  objective has taught anything. Every value below was chosen on 800 phantom radiographs at 64 px
  (300 steps, batch 32) and checked with `python bench/ssl_vs_random.py`, which pretrains each
  method this way and compares its 10-shot linear probe with random init, paired per trial.

On real radiographs (../shared/data/kermany224, normal vs pneumonia, 64 px, 300 steps, CPU;
`bench/ssl_vs_random.py --data ../shared/data/kermany224/manifest.csv --findings pneumonia`),
10-shot probe AUC vs random init 0.822, d (SE) over 20 paired trials: BarlowTwins 0.890 +0.068
(0.010), SparK 0.879 +0.057 (0.010), MoCo v2 0.865 +0.043 (0.009), DINO 0.863 +0.041 (0.007).

Why each quick setting (measured, 20 paired 10-shot trials; "d" = AUC minus random init):

- moco_v2: instance discrimination needs views that differ in what does not identify the patient.
  Two views of one phantom file share its exact pixel grain; with no or mild augmentation MoCo
  matches that grain (InfoNCE falls fast) and its features lose to random on every finding
  (cardiomegaly d -0.17). With the study's crops (0.08-1, or even 0.5-1) and jitter 0.8 it cannot
  solve the task in 300 steps (InfoNCE at chance) and the embedding collapses to one direction.
  The quick recipe therefore keeps the global layout (crops 0.8-1: positioning), varies exposure
  (jitter 0.4), and always blurs (blur_p 1, sigma 3.5-7 px at 224 = 1-2 px at 64: focal spot,
  motion, detector MTF) before fresh noise (0.05), so the grain is gone and the network has to
  tell patients apart by anatomy. Head with BatchNorm in the hidden layer and a centred output
  (MoCo v3's); a plain head collapsed here. Queue 256 (< the 800 images, so an image's own stale
  key is rarely its negative), key momentum 0.99, T 0.2 (MoCo v2), lr 0.0075 (lr 0.03 forgot more
  of the init). InfoNCE then falls below chance (4.9 vs log 257 = 5.55 by step 200). Three seeds:
  pleural effusion d +0.023 (SE 0.012), +0.058 (0.015), +0.037 (0.011); cardiomegaly +0.078
  (0.014, 19/20 won), +0.049 (0.014), +0.001. Pneumothorax loses (d -0.07 every seed): its thin
  pleural line is the fine detail the blur removes. With centred outputs InfoNCE can sit above
  log K while positives are already more similar than the mean negative: the spread of the
  negative similarities raises the log-sum-exp by about var/(2 T^2). `bench/ssl_vs_random.py`
  (its own phantom per seed): pleural effusion d +0.059 (0.014), +0.016 (0.011), +0.058 (0.010)
  for seeds 0, 1, 2; beats random (Bonferroni over 8 findings) on seeds 0 and 2.
- barlow_twins: 1024-d projector (the 8192-d one is for batch 2048) and milder augmentation
  (crops 0.3-1, jitter 0.4, noise 0.05); with the study's augmentation it did not beat random.
- spark: a 256-wide decoder and lr 5e-4 (AdamW).
- masked_contrastive: MoCo v2's quick recipe unchanged (the contrastive objective and its SGD drive the
  run), half of the query's 32 px patches masked (at 64 px: 2 of 4 quadrants; SparK's 0.6 rounds to the
  same 2 of 4) and SparK's reconstruction of them at weight 1 with the 256-wide decoder. Not tuned
  beyond that; measured against its parents in bench/masked_contrastive_vs_parents.py.
- dino: BatchNorm in the head (DINO's use_bn_in_head), 256 prototypes, a sharper teacher
  (tau_t 0.02), key momentum 0.99, lr 0.02, and MoCo's quick views: two global crops of 0.8-1
  with jitter 0.4, always-on blur and noise 0.05, and no local crops. With the paper's head the
  teacher output flatlined at log K (uniform collapse) from the first step. With multi-crop (local
  crops of 5-14%, or 25-50%, of the chest) the student loss stayed at log K for 300 steps and the
  probe lost to random on most findings (cardiomegaly d -0.10 to -0.13): a patch of a homogeneous
  radiograph cannot be told apart by its patient in so short a run. Without local crops the loss
  falls (4.6-5.2 vs log 256 = 5.55). Three seeds: pleural effusion d +0.046 (SE 0.012, 16/20 won),
  +0.022 (0.014), +0.010 (0.012): positive on every seed, significant on one; pneumothorax loses
  (d -0.07 to -0.08, the blur again). `bench/ssl_vs_random.py`: seed 0 hemidiaphragm elevation
  +0.038 (0.013, beats random), seeds 1 and 2 no finding above the threshold (effusion +0.014,
  -0.008). The weakest of the four on the phantom; on real X-rays (above) it beats random clearly.
"""
from __future__ import annotations

from typing import Any

PRESETS: tuple[str, ...] = ("paper", "quick", "long")

# Views that share no pixel grain (see moco_v2 above): exposure jitter, always-on blur, fresh noise.
_GRAINLESS_VIEWS: dict[str, Any] = {"jitter": 0.4, "noise_std": 0.05, "blur_p": 1.0, "blur_sigma": (3.5, 7.0)}

_QUICK: dict[str, dict[str, Any]] = {
    "moco_v2": {"lr": 0.0075, "method_config": {"queue": 256, "m": 0.99, "T": 0.2, "head_bn": True, "head_out_bn": True},
                "aug": {"crop_scale": (0.8, 1.0), **_GRAINLESS_VIEWS}},
    "barlow_twins": {"lr": 0.2, "method_config": {"proj_dim": 1024},
                     "aug": {"crop_scale": (0.3, 1.0), "jitter": 0.4, "noise_std": 0.05}},
    "spark": {"lr": 5e-4, "method_config": {"decoder_width": 256}},
    "dino": {"lr": 0.02, "method_config": {"out_dim": 256, "n_local_crops": 0, "momentum_teacher": 0.99, "head_bn": True,
                                           "teacher_temp": 0.02, "warmup_teacher_temp": 0.02, "global_scale": (0.8, 1.0)},
             "aug": dict(_GRAINLESS_VIEWS)},
    # MoCo v2's quick recipe (same views, head, queue, momentum, T, lr) with a SparK mask of half the
    # query's 32 px patches and SparK's reconstruction at weight 1 (its 256-wide decoder).
    "masked_contrastive": {"lr": 0.0075, "method_config": {"queue": 256, "m": 0.99, "T": 0.2, "head_bn": True,
                                                           "head_out_bn": True, "patch": 32, "mask_ratio": 0.5,
                                                           "recon_weight": 1.0, "decoder_width": 256},
                           "aug": {"crop_scale": (0.8, 1.0), **_GRAINLESS_VIEWS}},
}


# Long GPU runs on a pool of ~10,000 radiographs at batch 256 (the shipped backbones' recipe; see
# checkpoints/shipped/*.md for what each reached). Paper augmentation strength is kept where the
# pool is large enough, with the X-ray changes argued in engine/ssl/augment.py: crops 0.3-1 (a
# crop of a third of the chest still shows anatomy; 0.08 shows a rib), exposure jitter 0.4, noise
# 0.05, MoCo v2's blur (p 0.5, sigma 0.1-2 px at 224). MoCo: queue 4096 (16 steps < one epoch of
# 11,165 images, so an image's own stale key is never its negative), key momentum 0.99 (a run of a
# few thousand steps; 0.999 is for 800 epochs), T 0.2 (MoCo v2), BN head with centred output (the
# quick recipe's, collapse-safe), lr 0.06 (= the quick recipe's 0.0075 at batch 32, linearly scaled).
# BarlowTwins: the paper's LARS lr 0.2 per 256 images and 2048-d projector.
_LONG_VIEWS: dict[str, Any] = {"crop_scale": (0.3, 1.0), "jitter": 0.4, "noise_std": 0.05, "blur_p": 0.5,
                               "blur_sigma": (0.1, 2.0)}

_LONG: dict[str, dict[str, Any]] = {
    "moco_v2": {"lr": 0.06, "method_config": {"queue": 4096, "m": 0.99, "T": 0.2, "head_bn": True, "head_out_bn": True},
                "aug": dict(_LONG_VIEWS)},
    "barlow_twins": {"lr": 0.2, "method_config": {"proj_dim": 2048}, "aug": dict(_LONG_VIEWS)},
}


def preset_overrides(method: str, preset: str) -> dict[str, Any]:
    """PretrainConfig fields (method_config and aug as dicts of their own fields) that `preset` sets."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if preset == "paper":
        return {}
    table = _QUICK if preset == "quick" else _LONG
    if method not in table:
        raise ValueError(f"no {preset!r} preset for method {method!r}; it has one for {', '.join(table)} "
                         f"(use --preset paper or quick for {method})")
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in table[method].items()}


def build_config(method: str, preset: str = "paper", method_opts: dict[str, Any] | None = None,
                 aug_opts: dict[str, Any] | None = None, **fields: Any) -> Any:
    """A PretrainConfig for `method` from `preset`, then the caller's own settings on top.

    fields: PretrainConfig fields (None = not given, the preset's or the default value stays);
    method_opts / aug_opts: fields of the method's config and of AugmentConfig, merged over the preset's.
    """
    from engine.ssl.augment import AugmentConfig
    from engine.ssl.pretrain import METHODS, PretrainConfig

    if method not in METHODS:
        raise ValueError(f"unknown SSL method {method!r}; choose one of {', '.join(METHODS)}")
    over = preset_overrides(method, preset)
    mc = {**over.pop("method_config", {}), **(method_opts or {})}
    aug = {**over.pop("aug", {}), **(aug_opts or {})}
    kw = {**over, **{k: v for k, v in fields.items() if v is not None}}
    return PretrainConfig(method=method, method_config=METHODS[method][0](**mc), aug=AugmentConfig(**aug), **kw)
