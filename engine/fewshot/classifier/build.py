"""Building a classifier: labeled images -> cross-validated estimate, calibration, operating point, final model.

Steps of `build_classifier`, each a function below: check the arguments; collect the labeled images
(`_from_manifest` / `_from_arrays`); load the backbone and prepare what the fits share (the head recipe's
`prepare`, engine.fewshot.head_recipe: probe features, or the cached frozen-stage activations of the
finetune); cross-validate (`_cross_validate`, out-of-fold logits per repeat); summarize them (`_summarize`:
AUC estimate and interval, calibration, Youden operating point); train the final model on all images with its
familiarity rule (`_final_model`). The statistics are described in the package docstring
(`engine.fewshot.classifier`).
"""
from __future__ import annotations

import copy
import threading
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
from engine.fewshot.features import ArrayImages, weights_fingerprint
from engine.fewshot.fast_finetune import FastFinetune
from engine.fewshot.finetune import FinetuneConfig
from engine.fewshot.head_recipe import HeadSettings, Prepared, fit, prepare
from engine.fewshot.metrics import N_BOOTSTRAP, auc, bootstrap_auc_samples, floor_interval, percentile_interval
from engine.fewshot.probe import DEFAULT_C, Probe
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

def recipe_of(mode: str, cfg: FinetuneConfig | FastFinetune, C: float) -> tuple[str, HeadSettings]:
    """The head recipe's mode and settings of a build: probe; "finetune" with a FastFinetune (the product's,
    engine.fewshot.head_recipe); "finetune" with a FinetuneConfig = the recipe's full_finetune (whole network,
    kept for bench/classifier_finetune.py's comparison; the saved file says "finetune" with its backbone)."""
    if mode == "probe":
        return "probe", HeadSettings(C=C)
    if isinstance(cfg, FastFinetune):
        return "finetune", HeadSettings(C=C, fast=cfg)
    return "full_finetune", HeadSettings(C=C, full=cfg)


def _load(init: str, device: torch.device, arch: str | None, checkpoint_dir: Path | None
          ) -> tuple[tuple[nn.Module, BackboneMeta], str]:
    """((model, meta), weights fingerprint taken before any training); UnknownInitError / InitUnavailableError
    before any work."""
    model, meta = load_backbone(init, device, arch=arch, checkpoint_dir=checkpoint_dir)
    return (model, meta), meta.fingerprint or weights_fingerprint(model)


def _cross_validate(prep: Prepared, y: np.ndarray, groups: np.ndarray | None, k: int, repeats: int, seed: int,
                    total: int, on_event: OnEvent | None, stop: threading.Event | None) -> np.ndarray:
    """Out-of-fold logits (R, N): repeat r uses folds seeded `seed + r`, each fold's head fitted by the head
    recipe on the shared `prep` with seed `seed + r`. Raises ClassifierDataError when a fold loses a class or a
    score is not finite."""
    oof = np.zeros((repeats, len(y)))
    for r in range(repeats):
        for j, (tr, te) in enumerate(cv_folds(y, groups, k, seed + r)):
            check_stop(stop)
            if len(np.unique(y[tr])) < 2:
                raise ClassifierDataError("a cross-validation fold lost one class (several images per patient); "
                                          "label images of more patients")
            oof[r, te] = fit(prep, tr, y[tr], seed + r, stop).scores(prep, te)
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


def _final_model(prep: Prepared, y: np.ndarray, seed: int, stop: threading.Event | None
                 ) -> tuple[Probe | None, nn.Module | None, nn.Linear, Familiarity]:
    """(probe, finetuned backbone or None, head, familiarity rule) trained on all images: the head recipe's
    fit on every row with `seed` (engine.fewshot.head_recipe.fit_episode's model)."""
    fitted = fit(prep, np.arange(len(y)), y, seed, stop)
    if prep.mode == "probe":
        return fitted.probe, None, fitted.head, fit_familiarity(prep.features)
    bb = fitted.trained_backbone()
    if prep.mode == "finetune":
        return None, bb, fitted.head, fit_familiarity(prep.acts.clean.float().mean(dim=(2, 3)).numpy(), space="frozen")
    meta = prep.backbone[1]
    frozen = forward_with_frozen(bb, meta.arch, prep.images, prep.device, meta.mean, meta.std, True)[1]
    return None, bb, fitted.head, fit_familiarity(frozen, space="frozen")


def _assemble(prep: Prepared, y: np.ndarray, fingerprint: str, init: str, mode: str, finding: str, image_size: int,
              est: Estimate, cal: Calibration, cv_probs: np.ndarray, op: OperatingPoint, seed: int,
              checkpoint_dir: Path | None, stop: threading.Event | None) -> Classifier:
    """Train the final model on all images (`_final_model`) and wrap it with the CV results as a Classifier."""
    probe, bb, head, fam = _final_model(prep, y, seed, stop)
    (model, meta), device = prep.backbone, prep.device
    return Classifier(
        init=init, arch=meta.arch, fingerprint=fingerprint, mean=meta.mean,
        std=meta.std, image_size=image_size, mode=mode, finding=finding, threshold=op.threshold,
        head=head.requires_grad_(False).cpu().to(device), probe=probe,
        backbone_state=None if bb is None else {k: v.detach().cpu() for k, v in bb.state_dict().items()},
        counts={"positive": est.n_positive, "negative": est.n_negative}, estimate=est, device=device,
        backbone=copy.deepcopy(bb).to(device) if bb is not None else model,
        calibration=cal, cv_probs=cv_probs, cv_labels=y.copy(), operating=op, familiarity=fam,
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
    FinetuneConfig, the whole network on whole images (the head recipe's full_finetune, kept for comparison; see
    bench/classifier_finetune.py). Every fit is the head recipe's (engine.fewshot.head_recipe), so the final model
    equals a Benchmark trial of the same mode on the same images with `seed` (tested).
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

    backbone, fingerprint = _load(init, device, arch, checkpoint_dir)
    recipe, settings = recipe_of(mode, ft_cfg, C)
    k = min(5, int((y == 1).sum()), int((y == 0).sum()))
    total = cv_repeats * k + 1  # trainings: the progress bar counts these, one unit each
    emit(on_event, step=0, total=total, message=f"{total} trainings to run ({cv_repeats} x {k}-fold cross-validation "
                                                 "and the final model)")
    # what every fit shares, once: probe features, or the finetune's activation cache (views drawn from `seed`)
    prep = prepare(backbone, images_src, recipe, device, settings=settings, seed=seed, on_event=as_log(on_event),
                   stop=stop)
    oof = _cross_validate(prep, y, groups, k, cv_repeats, seed, total, on_event, stop)
    est, cal, cv_probs, op = _summarize(oof, y, k, finding, calibration, n_bootstrap, seed, warnings)

    check_stop(stop)
    emit(on_event, step=total - 1, total=total, message="training the final model on all images")
    clf = _assemble(prep, y, fingerprint, init, mode, finding, image_size, est, cal, cv_probs, op, seed,
                    checkpoint_dir, stop)
    if manifest is not None:  # recorded so scoring marks training images (engine.fewshot.classifier.scoring)
        clf.training_keys = manifest_image_keys(manifest, finding)
    emit(on_event, step=total, total=total, kind="result", message=est.sentence,
         metrics={"auc": est.auc, "ci_low": est.ci_low, "ci_high": est.ci_high})
    return clf, est
