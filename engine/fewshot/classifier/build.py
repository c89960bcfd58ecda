"""Building a classifier: labeled images -> cross-validated estimate, calibration, operating point, final model.

Steps of `build_classifier`, each a function below: check the arguments; collect the labeled images
(`_labeled_images`); load the backbone and prepare what the fits share (`Fitter`: probe features, or the
cached frozen-stage activations of the fast finetune); cross-validate (`_cross_validate`, out-of-fold logits
per repeat); summarize them (`_summarize`: AUC estimate and interval, calibration, Youden operating point);
train the final model on all images with its familiarity rule (`_final_model`). The statistics are described
in the package docstring (`engine.fewshot.classifier`).
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from engine.events import OnEvent, as_log, check_stop, emit
from engine.fewshot.classifier.calibration import CALIBRATIONS, Calibration, OperatingPoint, choose_operating_point
from engine.fewshot.classifier.calibration import fit_calibration
from engine.fewshot.classifier.errors import ClassifierDataError
from engine.fewshot.classifier.estimate import Estimate, check_counts, cv_folds, sentence
from engine.fewshot.classifier.familiarity import Familiarity, fit_familiarity
from engine.fewshot.classifier.inputs import ImageInput, forward_with_frozen, to_uint8
from engine.fewshot.classifier.operating import with_intervals
from engine.fewshot.classifier.model import Classifier
from engine.fewshot.classifier.schema import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from engine.fewshot.classifier.scoring import manifest_image_keys
from engine.fewshot.features import ArrayImages, embed, weights_fingerprint
from engine.fewshot.fast_finetune import (ActivationCache, FastFinetune, assemble_backbone, build_activation_cache,
                                          cached_features, finetune_cached)
from engine.fewshot.finetune import FinetuneConfig, finetune, predict_logits
from engine.fewshot.metrics import N_BOOTSTRAP, auc, bootstrap_auc_samples, floor_interval, percentile_interval
from engine.fewshot.probe import DEFAULT_C, Probe, fit_probe
from engine.models.registry import BackboneMeta, load_backbone

DEFAULT_REPEATS = {"probe": 10, "finetune": 1}  # finetune: one repeat of k folds (each fold a full training)


def default_fast_finetune() -> FastFinetune:
    """The Classifier's finetune settings (cached last stage; see engine.fewshot.finetune)."""
    return FastFinetune()


def estimate_seconds(n_images: int, mode: str, arch: str = "resnet18", image_size: int = 224,
                     cv_repeats: int | None = None, device: torch.device | str = "cpu",
                     fast: FastFinetune | None = None, sample_paths: Sequence[str | Path] = ()) -> dict[str, float]:
    """Expected build time on this machine now: {"seconds", "trainings", "repeats", "k"}, from pieces of the
    chosen work timed at the moment of asking (engine.fewshot.classifier.timing; about 1 s at 224 px)."""
    from engine.fewshot.classifier.timing import estimate_seconds as timed_estimate

    return timed_estimate(n_images, mode, arch, image_size, cv_repeats, device, fast, sample_paths)


# --------------------------------------------------------------------------------------------- fitting

@dataclass
class Fitter:
    """What every fold's fit shares: the backbone, the labels and the mode's precomputed inputs.

    mode "probe": `X` (N, D) frozen features. Fast finetune (`cfg` a FastFinetune): `acts`, the cached
    frozen-stage activations. Whole-image finetune (`cfg` a FinetuneConfig): `u8` (N, S, S) images."""

    mode: str
    model: nn.Module
    meta: BackboneMeta
    y: np.ndarray
    u8: np.ndarray
    device: torch.device
    C: float
    cfg: FinetuneConfig | FastFinetune
    fingerprint: str = ""  # of the backbone's weights, taken before any training
    X: np.ndarray | None = None
    acts: ActivationCache | None = None
    stop: threading.Event | None = None

    @property
    def fast(self) -> bool:
        return isinstance(self.cfg, FastFinetune)

    def fit(self, tr: np.ndarray, seed: int) -> tuple[Probe | None, nn.Module | None, nn.Linear]:
        """(probe or None, trained network or None, head) fitted on rows `tr`."""
        if self.mode == "probe":
            probe = fit_probe(self.X[tr], self.y[tr], C=self.C, seed=seed)
            return probe, None, probe.as_torch_head()
        if self.fast:
            stage, head = finetune_cached((self.model, self.meta), self.acts, tr, self.y[tr], self.cfg, self.device,
                                          seed, self.stop)
            return None, stage, head
        bb, head = finetune((self.model, self.meta), self.u8[tr], self.y[tr], self.cfg, self.device, seed)
        return None, bb, head

    def scores(self, probe: Probe | None, net: nn.Module | None, head: nn.Linear, te: np.ndarray) -> np.ndarray:
        """Logits (len(te),) of rows `te` under one fit."""
        if probe is not None:
            return probe.decision_function(self.X[te])
        if self.fast:
            f = torch.from_numpy(cached_features(net, self.acts, te, self.device)).to(self.device)
            return head(f).double().cpu().numpy()[:, 0]
        return predict_logits(net, head, self.u8, self.device, self.meta.mean, self.meta.std, rows=te)


def _load_fitter(init: str, images_src: Any, y: np.ndarray, mode: str, cfg: FinetuneConfig | FastFinetune,
                 device: torch.device, C: float, arch: str | None, checkpoint_dir: Path | None,
                 stop: threading.Event | None) -> Fitter:
    """Load the backbone (UnknownInitError / InitUnavailableError before any work) into a Fitter."""
    model, meta = load_backbone(init, device, arch=arch, checkpoint_dir=checkpoint_dir)
    return Fitter(mode, model, meta, y, np.asarray(images_src.array), device, C, cfg,
                  fingerprint=meta.fingerprint or weights_fingerprint(model), stop=stop)


def _prepare_inputs(fitter: Fitter, init: str, images_src: Any, arch: str | None, seed: int,
                    on_event: OnEvent | None) -> None:
    """Compute what the mode's fits share: probe features, or the fast finetune's cached activations."""
    model, meta = fitter.model, fitter.meta
    if fitter.mode == "probe":
        fitter.X = embed(init, images_src, fitter.device, arch=arch, on_event=as_log(on_event), stop=fitter.stop,
                         backbone=(model, meta))
    elif fitter.fast:
        fitter.acts = build_activation_cache((model, meta), fitter.u8, fitter.cfg, fitter.device, seed,
                                             on_event=as_log(on_event), stop=fitter.stop)


def _cross_validate(fitter: Fitter, groups: np.ndarray | None, k: int, repeats: int, seed: int, total: int,
                    on_event: OnEvent | None, stop: threading.Event | None) -> np.ndarray:
    """Out-of-fold logits (R, N): repeat r uses folds seeded `seed + r`. Raises ClassifierDataError when a
    fold loses a class or a score is not finite."""
    y = fitter.y
    oof = np.zeros((repeats, len(y)))
    for r in range(repeats):
        for j, (tr, te) in enumerate(cv_folds(y, groups, k, seed + r)):
            check_stop(stop)
            if len(np.unique(y[tr])) < 2:
                raise ClassifierDataError("a cross-validation fold lost one class (several images per patient); "
                                          "label images of more patients")
            probe, net, head = fitter.fit(tr, seed + r)
            oof[r, te] = fitter.scores(probe, net, head, te)
            emit(on_event, step=r * k + j + 1, total=total,
                 message=f"cross-validation: trained {r * k + j + 1} of {total - 1} fold models "
                         f"(repeat {r + 1} of {repeats}, fold {j + 1} of {k})")
    if not np.isfinite(oof).all():
        raise ClassifierDataError("cross-validated scores came out NaN or infinite: the images or the backbone give "
                                  "non-finite features; check the backbone on the Pretrain page")
    return oof


def _summarize(oof: np.ndarray, y: np.ndarray, k: int, finding: str, calibration: str, n_bootstrap: int, seed: int,
               warnings: list[str]) -> tuple[Estimate, Calibration, np.ndarray, OperatingPoint]:
    """(estimate, calibration, calibrated OOF probabilities (R, N), Youden operating point) from OOF logits."""
    R = oof.shape[0]
    rep_auc = np.array([auc(y, oof[r]) for r in range(R)])
    boots = np.mean([bootstrap_auc_samples(y, oof[r], n_bootstrap, seed) for r in range(R)], axis=0)
    lo, hi = percentile_interval(boots)
    fl = floor_interval(float(rep_auc.mean()), lo, hi, int((y == 1).sum()), int((y == 0).sum()))  # all images
    cal = fit_calibration(oof.ravel(), np.tile(y, R), calibration, np.full(oof.size, 1.0 / R))
    cv_probs = cal(oof.ravel()).reshape(oof.shape)  # (R, N)
    op = with_intervals(choose_operating_point(np.tile(y, R), cv_probs.ravel(), "youden"), y, cv_probs, seed=seed)[0]
    est = Estimate(auc=float(rep_auc.mean()), ci_low=fl.low, ci_high=fl.high, n_positive=int((y == 1).sum()),
                   n_negative=int((y == 0).sum()), folds=k, repeats=R, repeat_aucs=tuple(float(a) for a in rep_auc),
                   warnings=tuple(warnings), ci_note=fl.note)
    est = Estimate(**{**est.to_dict(), "sentence": sentence(est, finding), "repeat_aucs": est.repeat_aucs,
                      "warnings": est.warnings})
    return est, cal, cv_probs, op


def _final_model(fitter: Fitter, seed: int) -> tuple[Probe | None, nn.Module | None, nn.Linear, Familiarity]:
    """(probe, finetuned backbone or None, head, familiarity rule) trained on all images."""
    probe, net, head = fitter.fit(np.arange(len(fitter.y)), seed)
    if fitter.mode == "probe":
        return probe, None, head, fit_familiarity(fitter.X)
    if fitter.fast:
        bb = assemble_backbone((fitter.model, fitter.meta), net)
        return probe, bb, head, fit_familiarity(fitter.acts.clean.float().mean(dim=(2, 3)).numpy(), space="frozen")
    frozen = forward_with_frozen(net, fitter.meta.arch, fitter.u8, fitter.device, fitter.meta.mean, fitter.meta.std,
                                 True)[1]
    return probe, net, head, fit_familiarity(frozen, space="frozen")


def _assemble(fitter: Fitter, init: str, finding: str, image_size: int, est: Estimate, cal: Calibration,
              cv_probs: np.ndarray, op: OperatingPoint, seed: int, checkpoint_dir: Path | None) -> Classifier:
    """Train the final model on all images (`_final_model`) and wrap it with the CV results as a Classifier."""
    probe, bb, head, fam = _final_model(fitter, seed)
    model, meta, device = fitter.model, fitter.meta, fitter.device
    return Classifier(
        init=init, arch=meta.arch, fingerprint=fitter.fingerprint, mean=meta.mean,
        std=meta.std, image_size=image_size, mode=fitter.mode, finding=finding, threshold=op.threshold,
        head=head.requires_grad_(False).cpu().to(device), probe=probe,
        backbone_state=None if bb is None else {k: v.detach().cpu() for k, v in bb.state_dict().items()},
        counts={"positive": est.n_positive, "negative": est.n_negative}, estimate=est, device=device,
        backbone=copy.deepcopy(bb).to(device) if bb is not None else model,
        calibration=cal, cv_probs=cv_probs, cv_labels=fitter.y.copy(), operating=op, familiarity=fam,
        checkpoint_dir=checkpoint_dir,
    )


# --------------------------------------------------------------------------------------------- inputs

def _check_arguments(mode: str, calibration: str, cv_repeats: int | None, image_size: int) -> int:
    """The number of CV repeats; ValueError for a bad mode, calibration, repeat count or image size."""
    if mode not in ("probe", "finetune"):
        raise ValueError(f"mode must be 'probe' or 'finetune', got {mode!r}")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}; got {calibration!r}")
    cv_repeats = DEFAULT_REPEATS[mode] if cv_repeats is None else int(cv_repeats)
    if cv_repeats < 1:
        raise ValueError("cv_repeats must be at least 1")
    if not MIN_IMAGE_SIZE <= int(image_size) <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] pixels; got {image_size}")
    return cv_repeats


def _from_manifest(manifest: str | Path, finding: str | None, image_size: int, on_event: OnEvent | None,
                   stop: threading.Event | None) -> tuple[np.ndarray, np.ndarray, Any]:
    """(labels y (N,), patient ids (N,), image cache) of the manifest's rows with a known label for `finding`."""
    from engine.data.cache import ImageCache
    from engine.data.manifest import load_manifest

    if not finding:
        raise ValueError("building from a manifest needs the finding to classify")
    man = load_manifest(manifest)
    if finding not in man.findings:
        raise ClassifierDataError(f"'{finding}' is not a finding of {manifest}; it has: {', '.join(man.findings)}")
    lab = man.labels(finding)
    rows = np.flatnonzero(~np.isnan(lab))
    y = lab[rows].astype(np.float64)
    check_counts(y, finding)
    groups = man.df["patient_id"].astype(str).to_numpy()[rows]
    images = ImageCache.build(list(man.df["path"].iloc[rows]), image_size, on_event=as_log(on_event), stop=stop)
    return y, groups, images


def _from_arrays(images: Sequence[ImageInput] | None, labels: Any, finding: str, image_size: int
                 ) -> tuple[np.ndarray, ArrayImages]:
    """(labels y (N,), in-memory images) from images + 0/1 labels; ClassifierDataError for bad labels."""
    if images is None or labels is None:
        raise ValueError("give images and labels, or a manifest and a finding")
    y = np.asarray(labels, dtype=np.float64).ravel()
    if len(y) != len(images):
        raise ClassifierDataError(f"{len(images)} images but {len(y)} labels; give one label per image")
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise ClassifierDataError("labels must be 1 (finding present) or 0 (absent) for every image; "
                                  "leave unlabeled images out")
    check_counts(y, finding)
    return y, ArrayImages.from_uint8(to_uint8(list(images), image_size))


# --------------------------------------------------------------------------------------------- the build

def build_classifier(
    images: Sequence[ImageInput] | None = None,
    labels: Sequence[float] | np.ndarray | None = None,
    init: str = "random",
    mode: str = "probe",
    device: torch.device | str = "cpu",
    image_size: int | None = None,
    seed: int = 0,
    cv_repeats: int | None = None,
    on_event: OnEvent | None = None,
    stop: threading.Event | None = None,
    *,
    manifest: str | Path | None = None,
    finding: str | None = None,
    arch: str | None = None,
    C: float = DEFAULT_C,
    finetune_cfg: FinetuneConfig | FastFinetune | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    calibration: str = "platt",
    checkpoint_dir: Path | None = None,
) -> tuple[Classifier, Estimate]:
    """Build a classifier from `images` + `labels` (1 = finding present, 0 = absent), or from the rows of
    `manifest` with a known label for `finding`. Returns the classifier (fit on all images, calibrated on
    the out-of-fold scores, Youden operating point, familiarity rule) and the cross-validated AUC estimate.

    mode "probe": logistic regression on frozen features. mode "finetune": with `finetune_cfg` None or a
    FastFinetune, the last stage + head on cached frozen-stage activations (minutes on a CPU); with a
    FinetuneConfig, today's `finetune()` on whole images (kept for comparison; see bench/classifier_finetune.py).
    cv_repeats: default 10 (probe) / 1 (finetune). calibration: "platt" | "isotonic". checkpoint_dir: where
    `init` is looked up (default: engine.paths.checkpoints_dir()). image_size: None = the init's own input
    size on `device` (engine.models.input_size_for).
    Raises ClassifierDataError for unusable label sets, ValueError for bad arguments, Cancelled on `stop`.
    """
    device = torch.device(device)
    if image_size is None:
        from engine.models import input_size_for

        image_size = input_size_for(init, device, checkpoint_dir, arch)
    cv_repeats = _check_arguments(mode, calibration, cv_repeats, image_size)
    ft_cfg = finetune_cfg if finetune_cfg is not None else default_fast_finetune()
    groups = None
    if manifest is not None:
        y, groups, images_src = _from_manifest(manifest, finding, image_size, on_event, stop)
    else:
        finding = finding or "finding"
        y, images_src = _from_arrays(images, labels, finding, image_size)
    warnings = check_counts(y, finding)
    for w in warnings:
        emit(on_event, message=w, level="warning", kind="warning")

    fitter = _load_fitter(init, images_src, y, mode, ft_cfg, device, C, arch, checkpoint_dir, stop)
    k = min(5, int((y == 1).sum()), int((y == 0).sum()))
    total = cv_repeats * k + 1  # trainings: the progress bar counts these, one unit each
    emit(on_event, step=0, total=total, message=f"{total} trainings to run ({cv_repeats} x {k}-fold cross-validation "
                                                 "and the final model)")
    _prepare_inputs(fitter, init, images_src, arch, seed, on_event)
    oof = _cross_validate(fitter, groups, k, cv_repeats, seed, total, on_event, stop)
    est, cal, cv_probs, op = _summarize(oof, y, k, finding, calibration, n_bootstrap, seed, warnings)

    check_stop(stop)
    emit(on_event, step=total - 1, total=total, message="training the final model on all images")
    clf = _assemble(fitter, init, finding, image_size, est, cal, cv_probs, op, seed, checkpoint_dir)
    if manifest is not None:  # recorded so scoring marks training images (engine.fewshot.classifier.scoring)
        clf.training_keys = manifest_image_keys(manifest, finding)
    emit(on_event, step=total, total=total, kind="result", message=est.sentence,
         metrics={"auc": est.auc, "ci_low": est.ci_low, "ci_high": est.ci_high})
    return clf, est
