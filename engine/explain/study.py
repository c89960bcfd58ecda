"""The Grad-CAM study: one finding, several inits, one k-shot classifier each, localization scored.

`run_gradcam_study` trains one classifier per init on each of `episodes` k-shot episodes (the few-shot
sampler's trial 0, 1, ... draws; within an episode every init trains on identical images), explains the
first N held-out positives that have a region (box or mask; the same images in every episode), and
writes to `out_dir`:

    grid_<image>.png   original at left (region outlined), one overlay column per init (episode 0)
    localization.csv   image, path, finding, init, episode, method, layer, region, logit, prob, empty_map,
                       the scores energy_in_region, energy_ratio, pointing_hit, topq_iou (see localization),
                       their yardsticks chance_<score>, trainmean_<score>, gauss_<score> (engine.explain.
                       yardstick) and the sanity-check rank correlations rho_head, rho_top, rho_backbone (sanity)
    summary.csv        per finding x init: n (images x episodes), mean and 95% bootstrap interval of each
                       score over those, paired differences against `random` when it is among the inits
                       (d_<score>_*), and `yardstick.across_episodes`' columns: each score's mean and
                       t-interval across episodes, chance level, baselines, gains over them, rho_*
    study.json         parameters, inits used / skipped, episodes' seeds and training images, warnings

Each init's classifier is the head recipe's (engine.fewshot.head_recipe; `mode` probe, finetune = the Classifier's
last stage, full_finetune = the whole backbone). study.json records `recipe_version`; one without it was written
when the study's `finetune` meant the whole backbone (now `full_finetune`, engine.fewshot.modes).

Resumable: trained heads (probe) or backbone + head (either finetune) are saved under `out_dir/.state/`
keyed by everything that determines them (the mode by `classifiers.STATE_MODE`), and finished images' rows are
kept there too, so a run stopped through `stop` (or killed) continues where it was when started again with the
same arguments.
Image and embedding caches: `cache_dir` (default `<out_dir>/.cache`, never the default workspace).

Settings are one frozen `GradCAMStudyConfig`; `run_gradcam_study_from_config(cfg, device, ...)` runs it in
steps (select the episode and images, load the inits, train one classifier each, explain chunk by chunk,
write the outputs). `run_gradcam_study(manifest_csv, finding, inits, out_dir, **keywords)` is the same with
the settings as keywords (the CLI's and the job runner's call).
"""
from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from engine.atomic import atomic_write
from engine.events import OnEvent, as_log, check_stop, emit
from engine.explain.classifiers import STATE_MODE, train_or_reuse_classifier
from engine.explain.gradcam import METHODS, resolve_layer
from engine.explain.localization import TOPQ, aggregate
from engine.explain.regions import load_regions, region_for  # noqa: F401  (public here too)
from engine.explain.study_explain import _image_names, _key, _safe, _write_csv, explain_episode, train_mean_maps
from engine.explain.yardstick import across_episodes
from engine.fewshot.modes import RECIPE_VERSION
from engine.fewshot.sizes import init_sizes, shared_size
from engine.models.classifier_net import ExplainModel

DEFAULT_SHOTS = 20  # the example; the seed study's largest common k
DEFAULT_N_IMAGES = 8
DEFAULT_EPISODES = 3  # training episodes per init: the across-episode interval needs at least 2
STATE_VERSION = 1
Backbone = tuple[nn.Module, Any]


@dataclass(frozen=True)
class GradCAMStudyConfig:
    """Everything that defines a Grad-CAM study (see the module docstring). Raises ValueError on creation for
    an unknown method or mode, n_images or shots below 1, or no init named."""

    manifest_csv: str | Path
    finding: str
    inits: tuple[str, ...]  # names as given; blanks are dropped, surrounding spaces stripped
    out_dir: str | Path
    shots: int = DEFAULT_SHOTS  # training images per class of the shared episode
    method: str = "gradcam"  # engine.explain.gradcam.METHODS
    mode: str = "probe"  # the head recipe's mode (engine.fewshot.modes.MODES): the classifier trained on each init
    layer: str | None = None  # target layer; None = the arch's last stage (DEFAULT_LAYER)
    n_images: int = DEFAULT_N_IMAGES  # held-out positives to explain
    image_size: int | None = None  # None: the largest of the inits' own sizes (engine.fewshot.sizes.shared_size)
    fit_mode: str = "pad"  # how images are fitted to the square (engine.data.transforms.fit_square)
    boxes_csv: str | Path | None = None  # explicit regions (else the manifest's masks, then boxes)
    masks_csv: str | Path | None = None
    seed: int = 0
    test_fraction: float = 0.3
    q: float = TOPQ  # top-q share of the map for topq_iou
    finetune_steps: int | None = None  # None = the recipe's default (FastFinetune / FinetuneConfig: 50)
    arch: str | None = None  # arch of random / imagenet
    batch_size: int = 16  # images per explained chunk and per CAM pass
    alpha: float = 0.4  # overlay opacity
    colormap: str = "jet"
    image_names: tuple[tuple[str, str], ...] = ()  # (manifest path, name shown in grids and rows); else the file stem
    episodes: int = DEFAULT_EPISODES  # training episodes per init (trial 0 .. episodes-1 of the sampler)
    sanity: bool = True  # Adebayo et al.'s randomization check: head and backbone randomized

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown CAM method {self.method!r}; choose one of {', '.join(METHODS)}")
        from engine.fewshot.modes import MODES, check_modes

        check_modes([self.mode], MODES)
        if self.n_images < 1 or self.shots < 1 or self.episodes < 1:
            raise ValueError("n_images, shots and episodes must be at least 1")
        inits = tuple(s.strip() for s in self.inits if s.strip())
        if not inits:
            raise ValueError("name at least one init (e.g. --inits random,imagenet)")
        object.__setattr__(self, "inits", inits)

    def layer_of(self, meta: Any) -> str:
        """The target layer for a backbone with metadata `meta`."""
        from engine.models import DEFAULT_LAYER

        return self.layer or DEFAULT_LAYER[meta.arch]


# ------------------------------------------------------------------------------------------ study
def run_gradcam_study(
    manifest_csv: str | Path,
    finding: str,
    inits: Sequence[str],
    out_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    on_event: OnEvent | None = None,
    stop: threading.Event | None = None,
    checkpoint_dir: Path | None = None,
    cache_dir: Path | None = None,
    **settings: Any,
) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """Run the study (see module docstring); returns (localization rows, summary, grid PNG paths).

    `settings` are the other fields of `GradCAMStudyConfig` as keywords (shots, method, mode, layer,
    n_images, image_size, fit_mode, boxes_csv, masks_csv, seed, test_fraction, q, finetune_steps, arch,
    batch_size, alpha, colormap, episodes, sanity); an unknown keyword raises TypeError. Errors as
    `run_gradcam_study_from_config`."""
    cfg = GradCAMStudyConfig(manifest_csv, finding, tuple(inits), out_dir, **settings)
    return run_gradcam_study_from_config(cfg, device, on_event, stop, checkpoint_dir, cache_dir)


def run_gradcam_study_from_config(
    cfg: GradCAMStudyConfig,
    device: torch.device | str = "cpu",
    on_event: OnEvent | None = None,
    stop: threading.Event | None = None,
    checkpoint_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """Run the study `cfg` on `device`; returns (localization rows, summary, grid PNG paths).

    Unknown inits raise `UnknownInitError` before any work; unavailable ones (ImageNet weights
    offline) are skipped with a warning event. Raises `Cancelled` when `stop` is set (state saved).
    `checkpoint_dir`: where inits are looked up (default: engine.paths.checkpoints_dir()). `cache_dir`: the
    caches' folder (`cache/`, `features/`; default `<out_dir>/.cache`; the app's job passes its workspace)."""
    from engine.data.cache import ImageCache

    device = torch.device(device)
    out = Path(cfg.out_dir)
    caches = Path(cache_dir) if cache_dir is not None else out / ".cache"
    warnings: list[str] = []

    def warn(msg: str) -> None:  # one line: keeps the warning list and its events together
        warnings.append(msg)
        emit(on_event, message=msg, level="warning", kind="warning")

    why = "the grid's one size: the largest of the inits' own" if cfg.image_size is None else "the size asked for"
    cfg = replace(cfg, image_size=cfg.image_size or shared_size(cfg.inits, device, cfg.arch, checkpoint_dir))
    init_sizes(cfg.inits, cfg.image_size, device, cfg.arch, checkpoint_dir, warnings, on_event, why)  # off-size: warned
    sel = _select(cfg, warn)
    backbones, skipped = _load_inits(cfg, warn, checkpoint_dir)
    episodes = [_episode(cfg, sel, e, warn) for e in range(cfg.episodes)]
    episodes = [ep for ep in episodes if ep is not None]
    bar = _Bar(len(episodes) * (len(backbones) + len(sel.chosen)), on_event)
    rows: list[dict[str, Any]] = []
    for e, ep in enumerate(episodes):
        cache = ImageCache.build([ep.path(i) for i in ep.train_idx], cfg.image_size, cache_dir=caches / "cache",
                                 mode=cfg.fit_mode, on_event=as_log(on_event), stop=stop)  # its image counts only as messages
        base_key = {"v": STATE_VERSION, "manifest": str(ep.manifest.csv_path), "train": sorted(cache.keys),
                    "y": ep.y_train.tolist(), "size": cfg.image_size, "fit": cfg.fit_mode, "mode": STATE_MODE[cfg.mode],
                    "finetune_steps": cfg.finetune_steps, "seed": ep.tseed}
        models = _train_models(cfg, ep, backbones, cache, base_key, out / ".state", device, bar, on_event, stop,
                               caches / "features")
        means = train_mean_maps(cfg, ep, models, base_key, out, device) if sel.kind != "none" else {}
        rows += explain_episode(cfg, ep, models, means, base_key, out, device, bar, stop, e)
        del models
    return _write_outputs(cfg, episodes, list(backbones), skipped, rows, warnings, out, bar)


@dataclass
class _Bar:
    """The study's progress bar: one unit per trained classifier and per explained image."""

    total: int
    on_event: OnEvent | None
    step: int = 0

    def show(self, message: str) -> None:
        emit(self.on_event, step=self.step, total=self.total, message=message)

    def advance(self, message: str) -> None:
        self.step += 1
        self.show(message)


@dataclass
class _Selection:
    """The study's data: manifest, regions, the shared training episode and the held-out images to explain."""

    manifest: Any
    kind: str  # "mask" | "box" | "none"
    region_rows: pd.DataFrame | None
    tseed: int  # the episode's seed: trial_seed(seed, finding, shots, episode)
    train_idx: np.ndarray  # (2k,) manifest rows
    y_train: np.ndarray  # (2k,) float64 0/1
    pool: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # manifest rows episodes are drawn from
    chosen: list[int] = field(default_factory=list)  # manifest rows of the images to explain
    with_region: set[str] = field(default_factory=set)  # paths that have a region

    def path(self, i: int) -> str:
        return self.manifest.df["path"].iat[i]


def _select(cfg: GradCAMStudyConfig, warn) -> _Selection:
    """Load the manifest and regions, draw the episode every init trains on, choose the images to explain:
    the first n_images held-out positives with a region (all positives, unscored, when none has one)."""
    from engine.data.manifest import load_manifest
    from engine.fewshot.episodes import sample_episode, test_split, trial_seed

    m = load_manifest(cfg.manifest_csv)
    m.validate_finding(cfg.finding)
    kind, region_rows = load_regions(m, cfg.finding, cfg.boxes_csv, cfg.masks_csv)
    df, labels = m.df, m.labels(cfg.finding)
    pids = df["patient_id"].astype(str).to_numpy()
    pool, test = test_split(df, cfg.finding, seed=cfg.seed, test_fraction=cfg.test_fraction)
    tseed = trial_seed(cfg.seed, cfg.finding, cfg.shots, 0)
    train_idx = sample_episode(labels, pids, pool, cfg.shots, tseed)
    sel = _Selection(m, kind, region_rows, tseed, train_idx, labels[train_idx].astype(np.float64), pool=pool)
    positives = [int(i) for i in test if labels[i] == 1]
    sel.with_region = set(region_rows["path"]) if region_rows is not None else set()
    sel.chosen = [i for i in positives if df["path"].iat[i] in sel.with_region][:cfg.n_images]
    if not sel.chosen:
        sel.chosen = positives[:cfg.n_images]
        warn(f"no held-out {cfg.finding} positive has a box or mask: heatmaps are drawn but not scored"
             if kind == "none" or region_rows is None else
             f"none of the {len(positives)} held-out {cfg.finding} positives has a region; nothing is scored")
    elif len(sel.chosen) < cfg.n_images:
        warn(f"only {len(sel.chosen)} held-out {cfg.finding} positives have a region (asked for {cfg.n_images})")
    return sel


def _episode(cfg: GradCAMStudyConfig, sel: _Selection, e: int, warn) -> _Selection | None:
    """The selection with episode `e`'s training images (trial `e` of the few-shot sampler); episode 0 is
    `sel` itself. None, with a warning, when the pool cannot give a further distinct episode."""
    from dataclasses import replace

    from engine.fewshot.episodes import sample_episode, trial_seed

    if e == 0:
        return sel
    m = sel.manifest
    labels = m.labels(cfg.finding)
    tseed = trial_seed(cfg.seed, cfg.finding, cfg.shots, e)
    idx = sample_episode(labels, m.df["patient_id"].astype(str).to_numpy(), sel.pool, cfg.shots, tseed)
    if sorted(idx.tolist()) == sorted(sel.train_idx.tolist()):
        warn(f"episode {e + 1} drew the same {len(idx)} training images as episode 1 (the pool holds no others); "
             "it is left out")
        return None
    return replace(sel, tseed=tseed, train_idx=idx, y_train=labels[idx].astype(np.float64))


def _load_inits(cfg: GradCAMStudyConfig, warn, checkpoint_dir: Path | None
                ) -> tuple[dict[str, Backbone], dict[str, str]]:
    """Every init loaded first, so a typo (UnknownInitError) or a wrong layer (ValueError) fails before any
    work; unavailable ones are skipped with a warning. RuntimeError when none is available."""
    from engine.models import InitUnavailableError, load_backbone

    backbones: dict[str, Backbone] = {}
    skipped: dict[str, str] = {}
    for name in cfg.inits:
        try:
            backbones[name] = load_backbone(name, "cpu", arch=cfg.arch, checkpoint_dir=checkpoint_dir)
        except InitUnavailableError as e:
            skipped[name] = str(e)
            warn(f"skipping init {name}: {e}")
    if not backbones:
        raise RuntimeError("none of the inits is available: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    for model, meta in backbones.values():  # a wrong layer name fails now, not after training
        resolve_layer(model, cfg.layer_of(meta))
    return backbones, skipped


def _train_models(cfg: GradCAMStudyConfig, sel: _Selection, backbones: dict[str, Backbone], cache: Any,
                  base_key: dict[str, Any], state_dir: Path, device: torch.device, bar: _Bar,
                  on_event: OnEvent | None, stop: threading.Event | None,
                  feature_dir: Path) -> dict[str, tuple[ExplainModel, Any]]:
    """One classifier per init on the shared episode (reused from `state_dir` when saved), as ExplainModels."""
    models: dict[str, tuple[ExplainModel, Any]] = {}
    for name, (model, meta) in backbones.items():
        check_stop(stop)
        bar.show(f"training the {cfg.mode} classifier for {name} ({2 * cfg.shots} images)")
        fp = meta.fingerprint or _weights_key(model)
        state = state_dir / f"clf-{_safe(name)}-{_key({**base_key, 'init': name, 'fp': fp})}.safetensors"
        own = copy.deepcopy(model).to(device)  # each episode trains (or loads) its own copy of the backbone
        bb, head = train_or_reuse_classifier(name, (own, meta), cache, sel.y_train, cfg.mode, device,
                                             sel.tseed, cfg.finetune_steps, state, on_event, stop,
                                             feature_dir=feature_dir)
        models[name] = (ExplainModel(bb, head).to(device).eval(), meta)
        bar.advance(f"{name}: classifier ready")
    return models


def _write_outputs(cfg: GradCAMStudyConfig, episodes: list[_Selection], inits: list[str], skipped: dict[str, str],
                   rows: list[dict[str, Any]], warnings: list[str], out: Path, bar: _Bar
                   ) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """localization.csv (episode, image, init order), summary.csv and study.json; the result event."""
    sel = episodes[0]
    paths = [sel.path(i) for i in sel.chosen]
    names = _image_names(paths, dict(cfg.image_names))
    grid_paths = [out / f"grid_{names[p]}.png" for p in paths]
    loc = pd.DataFrame(rows)
    if len(loc):
        loc["_order"] = loc["path"].map({p: k for k, p in enumerate(paths)})
        loc["_init"] = loc["init"].map({n: k for k, n in enumerate(inits)})
        loc = loc.sort_values(["episode", "_order", "_init"]).drop(columns=["_order", "_init"]).reset_index(drop=True)
    scored = loc[loc["region"] != "none"] if len(loc) else loc
    summary = _summary(scored, "random" if "random" in inits else None, cfg.seed)
    _write_csv(loc, out / "localization.csv")
    _write_csv(summary, out / "summary.csv")
    meta_out = {"manifest": str(sel.manifest.csv_path), "finding": cfg.finding, "inits": inits,
                "skipped": skipped, "shots": cfg.shots, "method": cfg.method, "mode": cfg.mode,
                "recipe_version": RECIPE_VERSION, "layer": cfg.layer,
                "n_images": len(sel.chosen), "image_size": cfg.image_size, "fit_mode": cfg.fit_mode,
                "region": sel.kind, "seed": cfg.seed, "episodes": len(episodes), "sanity": cfg.sanity,
                "trial_seeds": [ep.tseed for ep in episodes],
                "train_images": [[ep.path(i) for i in ep.train_idx] for ep in episodes], "q": cfg.q,
                "warnings": warnings}
    atomic_write(out / "study.json", lambda tmp: Path(tmp).write_text(json.dumps(meta_out, indent=2)))
    emit(bar.on_event, step=bar.total, total=bar.total, kind="result", message=f"wrote {len(grid_paths)} grids and "
         f"{len(loc)} localization rows to {out}", metrics=_headline(summary))
    return loc, summary, grid_paths


def _summary(scored: pd.DataFrame, reference: str | None, seed: int) -> pd.DataFrame:
    """The bootstrap summary over (episode, image) units, paired within an episode and image, joined with the
    across-episode yardsticks (engine.explain.yardstick.across_episodes)."""
    if not len(scored):
        return pd.DataFrame(columns=["finding", "init", "n"])
    units = scored.assign(image=scored["episode"].astype(str) + "/" + scored["image"].astype(str))
    boot = aggregate(units, reference=reference, seed=seed)
    return boot.merge(across_episodes(scored), on=["finding", "init"], how="left")


def _headline(summary: pd.DataFrame) -> dict[str, float]:
    if not len(summary) or "energy_ratio_mean" not in summary:
        return {}
    return {f"energy_ratio/{r.init}": float(r.energy_ratio_mean) for r in summary.itertuples()}


def _weights_key(model: nn.Module) -> str:
    from engine.fewshot.features import weights_fingerprint

    return weights_fingerprint(model)
