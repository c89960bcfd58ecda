"""The one head recipe (issue 23): fit a classifier head on an episode (backbone, images, labels, mode, seed).

The Classifier (engine.fewshot.classifier.build), the Benchmark sweep (engine.fewshot.sweep), the Grad-CAM
study (engine.explain.classifiers) and the study (through those two) all train their heads here, so a
Benchmark trial and a Classifier built on the same images, backbone and seed are the same model (tested).
Modes (what each name means: engine.fewshot.modes):

* `probe`: `fit_probe` (C = `HeadSettings.C`, the Classifier's DEFAULT_C) on the frozen pooled features.
* `finetune`: the product's finetune, `finetune_cached` (last stage + head) on the activation cache of the
  images (`build_activation_cache`: the clean view and `views` augmented ones, drawn from the prepare seed).
* `full_finetune`: `finetune_many` (whole network + head, `FinetuneConfig`) on the images themselves.

Two steps, so that work shared by many fits on the same images is done once:

    prep = prepare(backbone, images, mode, device, settings=..., seed=s)   # features / activation cache
    fitted = fit(prep, rows, labels, seed)                                # one head on prep's `rows`

The Classifier prepares once over its images and fits every cross-validation fold and the final model on
it; the sweep prepares probe features once per init (all the images its trials use) and full finetune's
images once per init (`fit_many` vmaps a shot count's trials on CUDA), while the product finetune prepares per
episode (the augmented views are drawn from the episode's seed, as the Classifier draws them from its
seed). `fit_episode` = prepare on the episode's images + fit on all of them: the Classifier's final model.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from engine.events import OnEvent
from engine.fewshot.fast_finetune import (ActivationCache, FastFinetune, LastStage, assemble_backbone,
                                          build_activation_cache, cached_features, finetune_cached)
from engine.fewshot.finetune import FinetuneConfig, finetune_many, predict_logits
from engine.fewshot.modes import MODES, check_modes
from engine.fewshot.probe import DEFAULT_C, Probe, fit_probe
from engine.models.registry import BackboneMeta

__all__ = ["MODES", "FittedHead", "HeadSettings", "Prepared", "fit", "fit_episode", "fit_many", "prepare"]

Backbone = tuple[nn.Module, BackboneMeta]


@dataclass(frozen=True)
class HeadSettings:
    """The recipe's settings: the probe's C, the product finetune's and the full finetune's."""

    C: float = DEFAULT_C
    fast: FastFinetune = field(default_factory=FastFinetune)
    full: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class Prepared:
    """What every fit on the same images shares. `images` uint8 (N, S, S) (a memmap is fine); `features`
    (N, D) float32 for probe; `acts` for finetune (its views drawn from `seed`)."""

    mode: str
    backbone: Backbone  # (model on `device`, meta): the init the heads start from, never changed
    device: torch.device
    settings: HeadSettings
    images: np.ndarray
    features: np.ndarray | None = None
    acts: ActivationCache | None = None
    seed: int = 0

    def __len__(self) -> int:
        return int(self.images.shape[0])


def prepare(backbone: Backbone, images: Any, mode: str, device: torch.device | str, *,
            settings: HeadSettings = HeadSettings(), seed: int = 0, feature_dir: Path | None = None,
            batch_size: int = 64, on_event: OnEvent | None = None, stop: threading.Event | None = None) -> Prepared:
    """Precompute what `mode`'s fits on `images` share.

    images: uint8 (N, S, S), or an image source with `.array` and content `.keys` (an ImageCache or
    ArrayImages): probe features are then cached on disk by content under `feature_dir` (engine.fewshot.
    features.embed; None = the workspace's). probe: the pooled features of every image; finetune: the
    activation cache (N x (views + 1) frozen forwards, views drawn from `seed`); full_finetune: nothing.
    Raises ValueError for an unknown mode, Cancelled when `stop` is set."""
    from engine.fewshot.features import ArrayImages, embed

    check_modes([mode], MODES)
    device = torch.device(device)
    model, meta = backbone
    model = model.to(device).eval()
    is_source = hasattr(images, "keys") and hasattr(images, "array")
    prep = Prepared(mode, (model, meta), device, settings, images.array if is_source else np.asarray(images),
                    seed=int(seed))
    if mode == "probe":  # keyed by content: an in-memory array is hashed, a memmap source is not read twice
        src = images if is_source else ArrayImages.from_uint8(prep.images)
        prep.features = embed(meta.name, src, device, batch_size, on_event=on_event, stop=stop,
                              backbone=(model, meta), feature_dir=feature_dir)
    elif mode == "finetune":
        prep.acts = build_activation_cache((model, meta), np.array(prep.images), settings.fast, device, seed,
                                           on_event=on_event, stop=stop)  # a writable copy (memmaps are read-only)
    return prep


@dataclass
class FittedHead:
    """One fitted head: `head` nn.Linear(D, 1) on the pooled features of the network it was trained with
    (the frozen init for probe; the init with its trained last stage `stage` for finetune; the trained
    `network` for full_finetune). `probe`: the probe itself (probe mode)."""

    mode: str
    head: nn.Linear
    backbone: Backbone  # the init (frozen), as prepared
    device: torch.device
    probe: Probe | None = None
    stage: LastStage | None = None
    network: nn.Module | None = None
    _assembled: nn.Module | None = field(default=None, repr=False)

    def trained_backbone(self) -> nn.Module | None:
        """The whole backbone the head reads when training changed it (finetune: the init's frozen stages +
        the trained last stage, on `device`; full_finetune: the trained network), None for probe."""
        if self.mode == "finetune" and self._assembled is None:
            self._assembled = assemble_backbone(self.backbone, self.stage).to(self.device)
        return self._assembled if self.mode == "finetune" else self.network

    def scores(self, prep: Prepared, rows: np.ndarray) -> np.ndarray:
        """Logits (len(rows),) of `prep`'s rows the cheap way (the fit's own `prep`): probe features; the clean
        cached activations through the trained stage (float16 activations); whole images otherwise."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.mode == "probe":
            return self.probe.decision_function(prep.features[rows])
        if self.mode == "finetune":
            f = torch.from_numpy(cached_features(self.stage, prep.acts, rows, self.device)).to(self.device)
            with torch.inference_mode():
                return self.head(f).double().cpu().numpy()[:, 0]
        return self.logits(prep.images, rows)

    def logits(self, images: np.ndarray, rows: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        """Logits (N,) of uint8 (N, S, S) images (or `images[rows]`) through the whole network + head (float64
        for probe, whose head is the probe itself on the features)."""
        model, meta = self.backbone
        if self.mode == "probe":
            from engine.fewshot.features import forward_features

            out = [f for _, f in forward_features(model, images, self.device, tuple(meta.mean), tuple(meta.std),
                                                  batch_size, rows)]
            return self.probe.decision_function(np.concatenate(out)) if out else np.zeros(0)
        return predict_logits(self.trained_backbone(), self.head, images, self.device, meta.mean, meta.std,
                              batch_size, rows=rows)


def _check_labels(rows: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, y = np.asarray(rows, dtype=np.int64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if rows.shape != y.shape:
        raise ValueError(f"{rows.size} rows but {y.size} labels; give one 0/1 label per row")
    return rows, y


def fit(prep: Prepared, rows: np.ndarray, labels: np.ndarray, seed: int,
        stop: threading.Event | None = None) -> FittedHead:
    """One head on `prep`'s `rows` (labels 0/1, both classes), trained with `seed`. Raises ValueError for
    one-class or non-0/1 labels, Cancelled when `stop` is set."""
    return fit_many(prep, [(rows, labels, seed)], stop=stop, batched=False)[0]


def fit_many(prep: Prepared, episodes: Sequence[tuple[np.ndarray, np.ndarray, int]], *,
             stop: threading.Event | None = None, batched: bool = False,
             on_event: OnEvent | None = None) -> list[FittedHead]:
    """`fit` of each (rows, labels, seed) on `prep`. full_finetune with `batched` trains them in one vmapped
    pass (same number of rows each; batched and one-by-one give the same models up to rounding:
    engine.fewshot.finetune.finetune_many); the other modes fit one after the other."""
    eps = [(*_check_labels(r, y), int(s)) for r, y, s in episodes]
    model, meta = prep.backbone
    mk = lambda **kw: FittedHead(prep.mode, backbone=prep.backbone, device=prep.device, **kw)  # noqa: E731
    if prep.mode == "probe":
        out = []
        for rows, y, s in eps:
            probe = fit_probe(prep.features[rows], y, C=prep.settings.C, seed=s)
            out.append(mk(head=probe.as_torch_head().requires_grad_(False).to(prep.device), probe=probe))
        return out
    if prep.mode == "finetune":
        return [mk(head=h, stage=st) for st, h in
                (finetune_cached(prep.backbone, prep.acts, rows, y, prep.settings.fast, prep.device, s, stop)
                 for rows, y, s in eps)]
    nets = finetune_many(prep.backbone, [np.asarray(prep.images[rows]) for rows, _, _ in eps], [y for _, y, _ in eps],
                         prep.settings.full, prep.device, [s for _, _, s in eps], on_event=on_event, stop=stop,
                         batched=batched)
    return [mk(head=h, network=bb) for bb, h in nets]


def fit_episode(backbone: Backbone, images: Any, labels: np.ndarray, mode: str, seed: int,
                device: torch.device | str, *, settings: HeadSettings = HeadSettings(),
                feature_dir: Path | None = None, on_event: OnEvent | None = None,
                stop: threading.Event | None = None) -> tuple[FittedHead, Prepared]:
    """The head of `mode` fitted on all of `images` (uint8 (N, S, S) or an image source, see `prepare`) with
    labels (N,) 0/1 and `seed` (the prepare seed too): a Benchmark trial, and the Classifier's final model.
    Returns (fitted head, its Prepared). Errors as `prepare` and `fit`."""
    prep = prepare(backbone, images, mode, device, settings=settings, seed=seed, feature_dir=feature_dir,
                   on_event=on_event, stop=stop)
    return fit(prep, np.arange(len(prep)), labels, seed, stop), prep
