"""The clinician's path: a handful of labeled images -> a saved classifier with an honest AUC estimate,
calibrated probabilities, a chosen operating point and a warning for images unlike the training set.

`build_classifier` embeds the images with a chosen init, fits the probe (or finetunes the last stage on
cached activations, see `engine.fewshot.finetune.FastFinetune`) on all of them, and estimates how well
that procedure works by **repeated stratified k-fold cross-validation** (k = min(5, images in the smaller
class); patient-grouped when a manifest gives several images per patient):

* each repeat pools the out-of-fold (OOF) scores of all images and computes one AUC; the estimate is the
  mean over `cv_repeats` repeats;
* the 95% interval is a percentile bootstrap over *images*: 500 resamples of the images (the same
  resample for every repeat), the repeat-averaged AUC of each resample, its 2.5-97.5 percentiles.

**Calibration.** The classifier's raw score is a logit fitted on the very images it is scored on, so
`sigmoid(logit)` is overconfident. The probability shown is a map fitted on the *OOF* logits (pooled over
repeats, each repeat weighted 1/R), i.e. on scores of images the scoring model did not see:

* `platt` (default): p = 1 / (1 + exp(-(a * s + b))) fitted by maximum likelihood with Platt's smoothed
  targets t+ = (N+ + 1) / (N+ + 2), t- = 1 / (N- + 2) (Platt 1999, "Probabilistic outputs for support
  vector machines", section 2.2). Two parameters: the right choice with tens of images (Niculescu-Mizil &
  Caruana, ICML 2005, found Platt better than isotonic below ~1000 calibration samples). A slope a <= 0
  (OOF scores no better than chance) is replaced by a = 0: every image then gets the smoothed prevalence.
* `isotonic`: the monotone step function of the OOF scores that best fits the labels (pool adjacent
  violators; Zadrozny & Elkan, KDD 2002), via scikit-learn's IsotonicRegression, interpolated linearly
  between its breakpoints and clipped to [1 / (N + 2), (N + 1) / (N + 2)] so no image is called certain.

**Operating point.** Sensitivity and specificity are computed on the calibrated OOF probabilities (pooled
over repeats) at every candidate cut (midpoints between distinct values); a probability >= the cut is
called positive. The default cut maximizes Youden's J; `Classifier.operating_point("sensitivity", 0.9)`
gives the highest cut whose CV sensitivity is >= 0.9 (the best specificity at that sensitivity), and
`("specificity", v)` the lowest cut whose CV specificity is >= v. The verdict compares the *same*
calibrated probability that is shown with the cut, so the headline number and the verdict always agree.

**Unfamiliar images** (out-of-distribution flag). Features are the backbone's pooled output in probe mode
and, in finetune mode, the pooled input of its last stage (the frozen stages, which finetuning leaves as
pretrained: the finetuned last stage has learned the task and forgets what the images look like; measured
on 23 Kermany training images, it flagged 32 of 60 adult NIH images against 51 of 60 for the frozen
stages), L2-normalized; an image's score is the Euclidean
distance to its k-th nearest training image, k = 1 (the deep nearest-neighbour rule of Sun, Ming, Zhu &
Li, "Out-of-distribution detection with deep nearest neighbors", ICML 2022). The threshold is calibrated
on the training images by leave-one-out: each training image's distance to its nearest *other* training
image, and the cut is the r-th smallest of those n distances with r = ceil((n + 1)(1 - alpha)), alpha =
0.05, capped at n (the conformal rank: Vovk, Gammerman & Shafer 2005; Angelopoulos & Bates 2021). A new
image from the same source as the training images then exceeds the cut with probability about alpha
(at most 1 / (n + 1) more when r is capped, i.e. for n < 19). Such images are flagged `unfamiliar`:
the estimate and calibration say nothing about them.

It refuses (ClassifierDataError, plain words) a single class or fewer than 3 images of either class,
and warns below 10 per class. `Classifier.save` writes one safetensors file: tensors (head, probe,
finetuned backbone when there is one, the OOF probabilities and labels, the training features of the
familiarity rule) plus JSON metadata -- no pickle anywhere. `Classifier.load` checks the metadata against
a schema with bounds and every tensor for non-finite values before using any of it (ClassifierLoadError).
"""
from __future__ import annotations

import copy
import json
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy.special import expit

from engine.events import OnEvent, as_log, check_stop, emit
from engine.fewshot.features import ArrayImages, embed, forward_features, weights_fingerprint
from engine.fewshot.finetune import (FastFinetune, FinetuneConfig, assemble_backbone, build_activation_cache,
                                     cached_features, finetune, finetune_cached, predict_logits)
from engine.fewshot.metrics import N_BOOTSTRAP, auc, bootstrap_auc_samples, percentile_interval
from engine.fewshot.probe import DEFAULT_C, Probe, fit_probe
from engine.models.backbones import ARCHS, DEFAULT_LAYER, build_backbone, prepare_batch
from engine.models.registry import load_backbone

MIN_PER_CLASS = 3  # below this no classifier is built: k-fold CV needs >= 2 training images per class
WARN_PER_CLASS = 10  # below this the estimate is flagged as rough
FORMAT = "scarce-cxr-classifier"
FORMAT_VERSION = 2  # 2: calibration, operating points (cv.* tensors), familiarity (ood.* tensors)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024  # bounds of a saved classifier's input size (pixels per side)
CALIBRATIONS = ("platt", "isotonic")
OOD_ALPHA = 0.05  # target rate of flagging an image from the training images' own source
OOD_K = 1  # k-th nearest training image (few-shot: the nearest)
TARGETS = ("youden", "sensitivity", "specificity")
ImageInput = np.ndarray | str | Path


class ClassifierDataError(ValueError):
    """The labeled images cannot make a classifier (one class, too few of a class, bad labels)."""


class ClassifierLoadError(ValueError):
    """A saved classifier file cannot be used here (not a classifier, crafted or damaged, or its backbone changed)."""


class ClassifierScoreError(ValueError):
    """A score came out NaN or infinite: no answer is given for that image."""


@dataclass(frozen=True)
class Estimate:
    auc: float
    ci_low: float
    ci_high: float
    n_positive: int
    n_negative: int
    folds: int
    repeats: int
    repeat_aucs: tuple[float, ...] = ()
    sentence: str = ""
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Estimate":
        return cls(**{**d, "repeat_aucs": tuple(d.get("repeat_aucs", ())), "warnings": tuple(d.get("warnings", ()))})


# --------------------------------------------------------------------------------------------- calibration

@dataclass(frozen=True)
class Calibration:
    """Logit -> probability. `platt`: expit(a * s + b); `isotonic`: linear interpolation through the
    breakpoints (x, y), clipped at the ends; `none` (files of format v1): expit(s)."""

    method: str
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def __call__(self, s: np.ndarray) -> np.ndarray:
        """Probabilities (N,) float64 for logits s (N,)."""
        s = np.asarray(s, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(s, self.x, self.y)
        if self.method == "platt":
            return expit(self.a * s + self.b)
        return expit(s)

    @property
    def label(self) -> str:
        return {"platt": "Platt scaling (Platt 1999)", "isotonic": "isotonic regression (Zadrozny & Elkan 2002)",
                "none": "none (logistic of the raw score; saved by an older version)"}[self.method]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "a": self.a, "b": self.b, "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, d: Any) -> "Calibration":
        """Validated: raises ValueError for an unknown method or non-finite / out-of-range parameters."""
        if not isinstance(d, dict) or d.get("method") not in (*CALIBRATIONS, "none"):
            raise ValueError(f"calibration must be an object with method one of {', '.join(CALIBRATIONS)}")
        a, b = _finite(d.get("a", 1.0), "calibration a"), _finite(d.get("b", 0.0), "calibration b")
        x = tuple(_finite(v, "calibration x") for v in _list(d.get("x", []), "calibration x", 100_000))
        y = tuple(_finite(v, "calibration y", 0.0, 1.0) for v in _list(d.get("y", []), "calibration y", 100_000))
        if d["method"] == "isotonic" and (len(x) != len(y) or len(x) < 1 or np.any(np.diff(x) < 0)
                                          or np.any(np.diff(y) < 0)):
            raise ValueError("isotonic calibration needs increasing breakpoints x and y of the same length")
        return cls(d["method"], a, b, x, y)


def fit_calibration(logits: np.ndarray, y: np.ndarray, method: str = "platt", weights: np.ndarray | None = None
                    ) -> Calibration:
    """Fit a logit -> probability map on out-of-fold logits (M,) and labels y (M,) 0/1 (weights (M,), default 1).

    `platt`: Platt (1999) maximum likelihood with smoothed targets, N+ / N- = the weighted class counts;
    slope clamped at 0 (see the module docstring). `isotonic`: Zadrozny & Elkan (2002) via
    sklearn.isotonic.IsotonicRegression, clipped to [1/(N+2), (N+1)/(N+2)]. Raises ValueError for an
    unknown method, non-finite logits or one class.
    """
    from scipy.optimize import minimize

    s = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}; got {method!r}")
    if not np.isfinite(s).all():
        raise ValueError("cannot calibrate: some cross-validated scores are NaN or infinite")
    n_pos, n_neg = float(w[y == 1].sum()), float(w[y == 0].sum())
    if n_pos <= 0 or n_neg <= 0:
        raise ValueError("calibration needs both classes")
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        n = n_pos + n_neg
        iso = IsotonicRegression(y_min=1.0 / (n + 2), y_max=(n + 1) / (n + 2), out_of_bounds="clip")
        iso.fit(s, y, sample_weight=w)
        return Calibration("isotonic", x=tuple(map(float, iso.X_thresholds_)), y=tuple(map(float, iso.y_thresholds_)))
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1.0 / (n_neg + 2))  # Platt's smoothed targets
    mu = float(np.average(s, weights=w))
    sd = float(np.sqrt(np.average((s - mu) ** 2, weights=w))) or 1.0
    z = (s - mu) / sd  # conditioning only; a, b are mapped back below

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        u = theta[0] * z + theta[1]
        loss = np.sum(w * (np.logaddexp(0.0, u) - t * u))
        g = w * (expit(u) - t)
        return float(loss), np.array([np.sum(g * z), np.sum(g)])

    prior = math.log((n_pos + 1) / (n_neg + 1))
    res = minimize(nll, np.array([0.0, prior]), jac=True, method="L-BFGS-B", bounds=[(0.0, None), (None, None)])
    a_z, b_z = float(res.x[0]), float(res.x[1])
    return Calibration("platt", a=a_z / sd, b=b_z - a_z * mu / sd)


# --------------------------------------------------------------------------------------------- operating points

@dataclass(frozen=True)
class OperatingPoint:
    """A cut on the calibrated probability with its cross-validated sensitivity and specificity."""

    rule: str  # "youden" | "sensitivity" | "specificity"
    target: float | None  # the requested sensitivity / specificity (None for youden)
    threshold: float  # probability >= threshold -> "suggests the finding"
    sensitivity: float
    specificity: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        head = {"youden": "balanced (Youden's J)", "sensitivity": f"target sensitivity {self.target:.0%}",
                "specificity": f"target specificity {self.target:.0%}"}[self.rule]
        return (f"{head}: cut-off {self.threshold:.3f}; in cross-validation {self.sensitivity:.0%} of images "
                f"with the finding were called positive (sensitivity) and {self.specificity:.0%} of images without "
                f"it were called negative (specificity)")


def operating_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cuts (C,), sensitivity (C,), specificity (C,)) for labels y (M,) and probabilities p (M,).

    Cuts: one below all values, the midpoints between consecutive distinct values, one above all
    (capped to [0, 1]); increasing, so sensitivity is non-increasing and specificity non-decreasing.
    """
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    u = np.unique(p)
    cuts = np.r_[max(0.0, u[0] - 1e-6), (u[1:] + u[:-1]) / 2.0, min(1.0, u[-1] + 1e-6)]
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    sens = 1.0 - np.searchsorted(pos, cuts, side="left") / max(len(pos), 1)  # share of positives >= cut
    spec = np.searchsorted(neg, cuts, side="left") / max(len(neg), 1)  # share of negatives < cut
    return cuts, sens, spec


def choose_operating_point(y: np.ndarray, p: np.ndarray, rule: str = "youden", target: float | None = None
                           ) -> OperatingPoint:
    """The cut for `rule` on calibrated OOF probabilities p (M,) with labels y (M,) (see the module docstring).

    youden: maximum sensitivity + specificity (ties: the middle candidate, as metrics.youden_threshold);
    sensitivity: the highest cut with sensitivity >= target; specificity: the lowest cut with
    specificity >= target. Raises ValueError for an unknown rule or a target outside (0, 1].
    """
    if rule not in TARGETS:
        raise ValueError(f"operating point rule must be one of {', '.join(TARGETS)}; got {rule!r}")
    cuts, sens, spec = operating_curve(y, p)
    if rule == "youden":
        j = sens + spec
        best = np.flatnonzero(j >= j.max() - 1e-12)
        i = int(best[len(best) // 2])
        target = None
    else:
        if target is None or not (0.0 < float(target) <= 1.0):
            raise ValueError(f"target {rule} must be a number in (0, 1], e.g. 0.9; got {target!r}")
        target = float(target)
        if rule == "sensitivity":
            i = int(np.flatnonzero(sens >= target - 1e-12).max())  # the lowest cut always has sensitivity 1
        else:
            i = int(np.flatnonzero(spec >= target - 1e-12).min())  # the highest cut always has specificity 1
    return OperatingPoint(rule, target, float(cuts[i]), float(sens[i]), float(spec[i]))


# --------------------------------------------------------------------------------------------- familiarity

@dataclass(frozen=True)
class Familiarity:
    """Deep k-NN out-of-distribution rule (Sun et al. 2022) with a leave-one-out conformal threshold."""

    train: np.ndarray  # (n, D) float32, L2-normalized training features
    threshold: float  # distances above this are flagged
    k: int = OOD_K
    alpha: float = OOD_ALPHA
    rank: int = 0  # r: the threshold is the r-th smallest leave-one-out distance
    space: str = "features"  # "features": the backbone's pooled output; "frozen": pooled input of its last stage

    @staticmethod
    def _normalize(F: np.ndarray) -> np.ndarray:
        F = np.asarray(F, dtype=np.float64)
        return F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)

    def distances(self, F: np.ndarray) -> np.ndarray:
        """Distance (N,) of each feature row F (N, D) to its k-th nearest training image."""
        d = np.sqrt(np.maximum(_sqdist(self._normalize(F), self.train.astype(np.float64)), 0.0))  # (N, n)
        return np.sort(d, axis=1)[:, self.k - 1]

    def rule(self) -> str:
        where = "backbone features" if self.space == "features" else "features of the frozen stages"
        return (f"flagged when the distance (L2-normalized {where}) to the nearest of the {len(self.train)} "
                f"training images exceeds {self.threshold:.4f}, the {self.rank}-th smallest of the training images' "
                f"leave-one-out nearest-neighbour distances (about {max(self.alpha, 1 / (len(self.train) + 1)):.0%} "
                "of new images from the same source are flagged)")

    def meta(self) -> dict[str, Any]:
        return {"k": self.k, "alpha": self.alpha, "threshold": self.threshold, "rank": self.rank,
                "n": int(len(self.train)), "space": self.space, "rule": self.rule()}


def _sqdist(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T


def fit_familiarity(features: np.ndarray, alpha: float = OOD_ALPHA, k: int = OOD_K, space: str = "features"
                    ) -> Familiarity:
    """Familiarity rule from training features (n, D), n >= k + 1 (see the module docstring).
    Raises ValueError for non-finite features or too few images."""
    F = np.asarray(features, dtype=np.float64)
    if F.ndim != 2 or F.shape[0] < k + 1:
        raise ValueError(f"the familiarity rule needs at least {k + 1} training feature rows; got {F.shape}")
    if not np.isfinite(F).all():
        raise ValueError("training features hold NaN or infinite values")
    Z = Familiarity._normalize(F)
    d = np.sqrt(np.maximum(_sqdist(Z, Z), 0.0))
    np.fill_diagonal(d, np.inf)
    loo = np.sort(d, axis=1)[:, k - 1]  # (n,) each image's k-th nearest *other* training image
    n = len(loo)
    r = min(n, int(math.ceil((n + 1) * (1.0 - alpha))))
    return Familiarity(Z.astype(np.float32), float(np.sort(loo)[r - 1]), k, float(alpha), r, space)


# --------------------------------------------------------------------------------------------- validation

def _finite(v: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or not lo <= v <= hi:
        raise ValueError(f"{what} must be a finite number in [{lo}, {hi}]; got {v!r}")
    return float(v)


def _list(v: Any, what: str, max_len: int) -> list:
    if not isinstance(v, list) or len(v) > max_len:
        raise ValueError(f"{what} must be a list of at most {max_len} values; got {type(v).__name__}")
    return v


def _check_metadata(m: Any) -> dict[str, Any]:
    """The metadata of a saved classifier, checked field by field; raises ValueError naming the field."""
    from engine.names import InvalidNameError, check_name

    if not isinstance(m, dict):
        raise ValueError(f"its metadata is a JSON {type(m).__name__}, not an object")
    if m.get("format") != FORMAT:
        raise ValueError(f"its format is {m.get('format')!r}, not {FORMAT!r}")
    version = m.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"it has format version {version!r}; this app reads versions 1 to {FORMAT_VERSION} "
                         "(a newer file needs a newer scarce-cxr)")
    for key, kind in (("init", "init"), ("finding", "finding")):
        try:
            check_name(m.get(key), kind)
        except InvalidNameError as e:
            raise ValueError(str(e)) from None
    for key in ("arch", "fingerprint", "mode", "image_size", "mean", "std", "threshold"):
        if key not in m:
            raise ValueError(f"the field '{key}' is missing")
    if m["arch"] not in ARCHS:
        raise ValueError(f"arch {m['arch']!r} is not one of {', '.join(ARCHS)}")
    if not isinstance(m["fingerprint"], str) or not 0 < len(m["fingerprint"]) <= 128:
        raise ValueError("fingerprint must be a short text")
    if m["mode"] not in ("probe", "finetune"):
        raise ValueError(f"mode {m['mode']!r} is not 'probe' or 'finetune'")
    size = m["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size {size!r} is not a whole number of pixels in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    for key, lo in (("mean", -10.0), ("std", 1e-6)):
        vals = m[key]
        if not isinstance(vals, list) or len(vals) != 3:
            raise ValueError(f"{key} must be a list of 3 numbers (one per input channel)")
        for v in vals:
            _finite(v, key, lo, 10.0)  # std >= 1e-6: a zero std would divide by zero
    _finite(m["threshold"], "threshold", 0.0, 1.0)
    counts = m.get("counts") or {}
    if not isinstance(counts, dict) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0
                                           for v in counts.values()):
        raise ValueError("counts must map class names to whole numbers")
    est = m.get("estimate")
    if est is not None:
        if not isinstance(est, dict):
            raise ValueError("estimate must be an object")
        try:
            e = Estimate.from_dict(est)
        except TypeError as err:
            raise ValueError(f"estimate has unexpected or missing fields ({err})") from None
        for key in ("auc", "ci_low", "ci_high"):
            _finite(getattr(e, key), f"estimate {key}", 0.0, 1.0)
    if m.get("calibration") is not None:
        Calibration.from_dict(m["calibration"])
    op = m.get("operating_point")
    if op is not None:
        if not isinstance(op, dict) or op.get("rule") not in TARGETS:
            raise ValueError("operating_point must be an object with a known rule")
        for key in ("threshold", "sensitivity", "specificity"):
            _finite(op.get(key), f"operating_point {key}", 0.0, 1.0)
    fam = m.get("familiarity")
    if fam is not None:
        if not isinstance(fam, dict):
            raise ValueError("familiarity must be an object")
        _finite(fam.get("threshold"), "familiarity threshold", 0.0, 2.0)  # distances of unit vectors lie in [0, 2]
        _finite(fam.get("alpha"), "familiarity alpha", 0.0, 1.0)
        if fam.get("k") != OOD_K:
            raise ValueError(f"familiarity k must be {OOD_K}")
        if fam.get("space", "features") not in ("features", "frozen"):
            raise ValueError("familiarity space must be 'features' or 'frozen'")
    return m


class ExplainModule(nn.Module):
    """backbone + head as one module: (B, 3, S, S) normalized -> (B, 1) logit. Grad-CAM layer: `backbone.layer4`."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, D) -> (B, 1)


# --------------------------------------------------------------------------------------------- inputs

def _to_uint8(images: Sequence[ImageInput], size: int) -> np.ndarray:
    """float32 HxW arrays in [0, 1] or image paths -> (N, S, S) uint8 squares (pad mode)."""
    from engine.data.io import read_image
    from engine.data.transforms import fit_square

    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        if isinstance(img, (str, Path)):
            img = read_image(img)[0]
        img = np.asarray(img, dtype=np.float32)
        if img.ndim == 3 and img.shape[-1] in (3, 4):
            img = img[..., :3].mean(-1)
        if not np.isfinite(img).all():
            raise ClassifierScoreError(f"image {i + 1} holds NaN or infinite pixel values; give pixels in [0, 1]")
        out[i] = fit_square(img, size)[0]
    return out


def _frozen_output_module(model: nn.Module, arch: str) -> nn.Module:
    """The module whose output feeds the last stage (resnet: layer3; densenet: transition3)."""
    return model.layer3 if arch.startswith("resnet") else model.features.transition3


def _forward_with_frozen(model: nn.Module, arch: str, u8: np.ndarray, device: torch.device, mean: Sequence[float],
                         std: Sequence[float], frozen: bool) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features (N, D), and when `frozen` the pooled last-stage input (N, C) else the same features)."""
    caught: list[np.ndarray] = []
    hook = _frozen_output_module(model, arch).register_forward_hook(
        lambda _m, _i, out: caught.append(out.float().mean(dim=(2, 3)).cpu().numpy())) if frozen else None
    try:
        out = [f for _, f in forward_features(model, u8, device, tuple(mean), tuple(std))]
    finally:
        if hook is not None:
            hook.remove()
    F = np.concatenate(out) if out else np.zeros((0, ARCHS[arch]), dtype=np.float32)
    return F, (np.concatenate(caught) if frozen and caught else F)


def check_counts(y: np.ndarray, finding: str) -> list[str]:
    """Refuse unusable label sets; return warnings for small ones."""
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        have = "with" if n_neg == 0 else "without"
        raise ClassifierDataError(
            f"All {len(y)} images are labeled {have} '{finding}'. A classifier needs examples of both: "
            f"add at least {MIN_PER_CLASS} images {'without' if n_neg == 0 else 'with'} the finding.")
    if n_pos < MIN_PER_CLASS or n_neg < MIN_PER_CLASS:
        raise ClassifierDataError(
            f"You gave {n_pos} image(s) with '{finding}' and {n_neg} without. At least {MIN_PER_CLASS} of each are "
            f"needed to build a classifier and check how well it works; please label more images.")
    if n_pos < WARN_PER_CLASS or n_neg < WARN_PER_CLASS:
        return [f"Only {n_pos} image(s) with '{finding}' and {n_neg} without: the accuracy estimate is rough "
                f"(its interval is wide). {WARN_PER_CLASS} or more of each give a more reliable classifier."]
    return []


def _folds(y: np.ndarray, groups: np.ndarray | None, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if groups is not None and len(np.unique(groups)) < len(groups):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y, groups))
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def sentence(e: Estimate, finding: str) -> str:
    text = (f"Estimated AUC {e.auc:.2f} (95% interval {e.ci_low:.2f} to {e.ci_high:.2f}) for telling images with "
            f"'{finding}' from images without, from {e.repeats} repeat{'s' if e.repeats != 1 else ''} of "
            f"{e.folds}-fold cross-validation on {e.n_positive + e.n_negative} images ({e.n_positive} with, "
            f"{e.n_negative} without). 0.5 is a coin flip and 1.0 is perfect.")
    if e.ci_low <= 0.5:
        text += " The interval includes 0.5: with these images the classifier may be no better than chance."
    elif min(e.n_positive, e.n_negative) < WARN_PER_CLASS:
        text += " With so few images, treat this as a rough guide."
    return text


# --------------------------------------------------------------------------------------------- the classifier

class Classifier:
    """A backbone (registry init, or finetuned weights) + a linear head on its pooled features, with a
    calibration map, cross-validated operating points and a familiarity rule (see the module docstring)."""

    def __init__(self, *, init: str, arch: str, fingerprint: str, mean: Sequence[float], std: Sequence[float],
                 image_size: int, mode: str, finding: str, threshold: float, head: nn.Linear,
                 probe: Probe | None = None, backbone_state: dict[str, torch.Tensor] | None = None,
                 counts: dict[str, int] | None = None, estimate: Estimate | None = None, created: str = "",
                 device: torch.device | str = "cpu", backbone: nn.Module | None = None,
                 calibration: Calibration | None = None, cv_probs: np.ndarray | None = None,
                 cv_labels: np.ndarray | None = None, operating: OperatingPoint | None = None,
                 familiarity: Familiarity | None = None, version: int = FORMAT_VERSION):
        self.init, self.arch, self.fingerprint = init, arch, fingerprint
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.image_size, self.mode, self.finding = int(image_size), mode, finding
        self.threshold = float(threshold)  # on the calibrated probability
        self.head, self.probe, self.backbone_state = head, probe, backbone_state
        self.counts = counts or {}
        self.estimate = estimate
        self.created = created or time.strftime("%Y-%m-%dT%H:%M:%S")
        self.device = torch.device(device)
        self._backbone = backbone
        self.calibration = calibration or Calibration("none")
        self.cv_probs = cv_probs  # (R, N) calibrated out-of-fold probabilities
        self.cv_labels = cv_labels  # (N,) 0/1
        self.operating = operating
        self.familiarity = familiarity
        self.version = version

    # -- model
    @property
    def backbone(self) -> nn.Module:
        if self._backbone is None:
            if self.backbone_state is not None:
                m = build_backbone(self.arch)
                try:
                    m.load_state_dict(self.backbone_state, strict=True)
                except RuntimeError as e:
                    raise ClassifierLoadError(f"the finetuned backbone in this classifier does not fit {self.arch} "
                                              f"({str(e).splitlines()[0]}); rebuild the classifier") from None
            else:
                m, meta = load_backbone(self.init, self.device, arch=self.arch)
                fp = meta.fingerprint or weights_fingerprint(m)
                if fp != self.fingerprint:
                    raise ClassifierLoadError(
                        f"the backbone '{self.init}' has changed since this classifier was built (weights "
                        f"fingerprint {fp} != {self.fingerprint}); rebuild the classifier")
            if ARCHS[self.arch] != self.head.weight.shape[1]:
                raise ClassifierLoadError(f"the head takes {self.head.weight.shape[1]} features but {self.arch} gives "
                                          f"{ARCHS[self.arch]}; the file is damaged, rebuild the classifier")
            self._backbone = m.to(self.device).eval()
        return self._backbone

    @property
    def target_layer(self) -> str:
        """Name (in `explain_module()`) of the layer Grad-CAM should use."""
        return "backbone." + DEFAULT_LAYER[self.arch]

    def explain_module(self) -> nn.Module:
        """backbone + head as one module: (B, 3, S, S) normalized input -> (B, 1) logit; eval mode, grads on."""
        return ExplainModule(self.backbone, self.head.to(self.device)).eval().requires_grad_(True)

    def prepare(self, img: ImageInput) -> tuple[torch.Tensor, Any]:
        """One image (float32 HxW in [0, 1], or a path) -> (normalized (1, 3, S, S) tensor, Letterbox)."""
        from engine.data.io import read_image
        from engine.data.transforms import fit_square

        if isinstance(img, (str, Path)):
            img = read_image(img)[0]
        sq, lb = fit_square(np.asarray(img, dtype=np.float32), self.image_size)
        x = prepare_batch(torch.from_numpy(sq)[None], self.device, self.mean, self.std)  # (1, 3, S, S)
        return x, lb

    def features(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Pooled backbone features (N, D) float32 of images (float32 HxW arrays in [0, 1] or paths)."""
        return self._features(images)[0]

    def _features(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, np.ndarray]:
        """(pooled features (N, D), features of the familiarity rule's space (N, D')) in one forward pass."""
        u8 = _to_uint8(list(images), self.image_size)  # (N, S, S)
        space = self.familiarity.space if self.familiarity is not None else "features"
        return _forward_with_frozen(self.backbone, self.arch, u8, self.device, self.mean, self.std, space == "frozen")

    def logits(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Raw scores (N,) float64 (the head's logit; uncalibrated)."""
        return self._logits(self.features(images))

    def _logits(self, F: np.ndarray) -> np.ndarray:
        w = self.head.weight.detach().cpu().double().numpy()[0]  # (D,)
        return np.asarray(F, dtype=np.float64) @ w + float(self.head.bias.detach().cpu().double()[0])

    def probability(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N,) for raw logits (N,) (Platt / isotonic; see the module docstring)."""
        return self.calibration(logits)

    def operating_point(self, rule: str = "youden", target: float | None = None) -> OperatingPoint:
        """The cut for `rule` ("youden" | "sensitivity" | "specificity" with `target` in (0, 1]) with its
        cross-validated sensitivity and specificity. Files of format v1 have only their saved cut."""
        if self.cv_probs is None or self.cv_labels is None:
            if rule != "youden":
                raise ClassifierLoadError("this classifier was saved by an older version without cross-validated "
                                          "scores; rebuild it to choose an operating point")
            return self.operating or OperatingPoint("youden", None, self.threshold, math.nan, math.nan)
        R = self.cv_probs.shape[0]
        return choose_operating_point(np.tile(self.cv_labels, R), self.cv_probs.ravel(), rule, target)

    def predict(self, images: Sequence[ImageInput], threshold: float | None = None) -> list[dict[str, Any]]:
        """One dict per image (float32 HxW arrays in [0, 1] or paths): `probability` (calibrated), `label`
        (1 = probability >= threshold), `threshold`, `finding`, `calibration`, `unfamiliar` (bool, or None for
        files without the rule), `familiarity_distance`, `familiarity_threshold`.
        `threshold` (default: the saved operating point's) is a cut on the calibrated probability.
        Raises ClassifierScoreError when a score is NaN or infinite (never returns a non-finite number)."""
        t = self.threshold if threshold is None else _finite(threshold, "threshold", 0.0, 1.0)
        F, G = self._features(images)  # (N, D), (N, D')
        s = self._logits(F)
        p = self.probability(s)
        bad = [i for i in range(len(p)) if not (np.isfinite(s[i]) and np.isfinite(p[i]) and np.isfinite(G[i]).all())]
        if bad:
            raise ClassifierScoreError(
                f"the classifier's score is NaN or infinite for image {bad[0] + 1} of {len(p)}: no answer can be "
                "given; the image may be blank or the classifier damaged -- rebuild the classifier")
        d = self.familiarity.distances(G) if self.familiarity is not None else None
        out = []
        for i, v in enumerate(p):
            r = {"probability": float(v), "label": int(v >= t), "threshold": t, "finding": self.finding,
                 "calibration": self.calibration.method, "unfamiliar": None, "familiarity_distance": None,
                 "familiarity_threshold": None}
            if d is not None:
                r.update(unfamiliar=bool(d[i] > self.familiarity.threshold), familiarity_distance=float(d[i]),
                         familiarity_threshold=self.familiarity.threshold)
            out.append(r)
        return out

    # -- file
    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "init": self.init, "arch": self.arch,
            "fingerprint": self.fingerprint, "mean": list(self.mean), "std": list(self.std),
            "image_size": self.image_size, "fit_mode": "pad", "mode": self.mode, "finding": self.finding,
            "threshold": self.threshold, "counts": self.counts, "finetuned_backbone": self.backbone_state is not None,
            "estimate": self.estimate.to_dict() if self.estimate else None, "created": self.created,
            "calibration": self.calibration.to_dict(),
            "operating_point": self.operating.to_dict() if self.operating else None,
            "familiarity": self.familiarity.meta() if self.familiarity is not None else None,
        }

    def save(self, path: str | Path) -> Path:
        """One safetensors file (tensors + JSON metadata), written atomically."""
        from safetensors.torch import save_file

        from engine.fewshot.sweep import _atomic_write

        path = Path(path)
        t: dict[str, torch.Tensor] = {"head.weight": self.head.weight.detach().cpu().float().contiguous(),
                                      "head.bias": self.head.bias.detach().cpu().float().contiguous()}
        if self.probe is not None:
            t.update({f"probe.{k}": v for k, v in self.probe.state_dict().items()})
        if self.backbone_state is not None:
            t.update({f"backbone.{k}": v.detach().cpu().contiguous() for k, v in self.backbone_state.items()})
        if self.cv_probs is not None and self.cv_labels is not None:
            t["cv.probs"] = torch.from_numpy(np.ascontiguousarray(self.cv_probs, dtype=np.float64))
            t["cv.labels"] = torch.from_numpy(np.ascontiguousarray(self.cv_labels, dtype=np.float64))
        if self.familiarity is not None:
            t["ood.train"] = torch.from_numpy(np.ascontiguousarray(self.familiarity.train, dtype=np.float32))
        meta = {"scarce_cxr": json.dumps(self.metadata(), allow_nan=False)}
        _atomic_write(path, lambda tmp: save_file(t, tmp, metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "Classifier":
        """Read a classifier file. Raises FileNotFoundError, or ClassifierLoadError when the file is not a
        classifier, its metadata fails the schema (missing fields, out-of-range sizes, zero std, wrong
        types), a tensor is missing, misshapen or holds NaN/infinity. Nothing in it is used before it is checked."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no classifier file at {path}")

        def refuse(why: str) -> ClassifierLoadError:
            return ClassifierLoadError(f"{path} is not a usable classifier file: {why}. Build the classifier again "
                                       "(Classifier page, or `python -m engine classify`)")

        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("scarce_cxr")
            tensors = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for non-safetensors bytes
            raise ClassifierLoadError(f"{path} is not a classifier file saved by this app ({e})") from e
        if raw is None:
            raise ClassifierLoadError(f"{path} is a safetensors file but not a classifier saved by this app")
        try:
            parsed = json.loads(raw, parse_constant=lambda c: float("nan"))
        except (json.JSONDecodeError, RecursionError) as e:
            raise refuse(f"its metadata is not valid JSON ({e})") from None
        try:
            m = _check_metadata(parsed)
        except ValueError as e:
            raise refuse(str(e)) from None
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise refuse(f"it holds non-finite weights (NaN or infinity) in {', '.join(sorted(bad)[:5])}")
        w, b = tensors.get("head.weight"), tensors.get("head.bias")
        D = ARCHS[m["arch"]]
        if w is None or b is None or tuple(w.shape) != (1, D) or tuple(b.shape) != (1,):
            raise refuse(f"its head must be head.weight (1, {D}) and head.bias (1,) for {m['arch']}")
        head = nn.Linear(D, 1)
        with torch.no_grad():
            head.weight.copy_(w)
            head.bias.copy_(b)
        probe_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("probe.")}
        try:
            probe = Probe.from_state_dict(probe_sd) if probe_sd else None
        except KeyError as e:
            raise refuse(f"its probe lacks the tensor {e}") from None
        bb = {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
        if m["mode"] == "finetune" and not bb:
            raise refuse("it is a finetuned classifier without its backbone weights")
        cv_probs, cv_labels = tensors.get("cv.probs"), tensors.get("cv.labels")
        if (cv_probs is None) != (cv_labels is None) or (cv_probs is not None and (
                cv_probs.ndim != 2 or cv_labels.ndim != 1 or cv_probs.shape[1] != cv_labels.shape[0]
                or not bool(((cv_labels == 0) | (cv_labels == 1)).all()) or len(torch.unique(cv_labels)) < 2
                or not bool(((cv_probs >= 0) & (cv_probs <= 1)).all()))):
            raise refuse("its cross-validation tensors cv.probs (R, N) in [0, 1] and cv.labels (N,) 0/1 do not match")
        fam = None
        if m.get("familiarity") is not None:
            tr = tensors.get("ood.train")
            if tr is None or tr.ndim != 2 or tr.shape[0] < 2 or tr.shape[1] > 8192:
                raise refuse("its familiarity rule needs ood.train (n >= 2, D) training features")
            fm = m["familiarity"]
            fam = Familiarity(tr.float().numpy().copy(), float(fm["threshold"]), OOD_K, float(fm["alpha"]),
                              int(fm.get("rank", 0)) if isinstance(fm.get("rank"), int) else 0,
                              str(fm.get("space", "features")))
        op = m.get("operating_point")
        est = m.get("estimate")
        return cls(init=m["init"], arch=m["arch"], fingerprint=m["fingerprint"], mean=m["mean"], std=m["std"],
                   image_size=m["image_size"], mode=m["mode"], finding=m["finding"], threshold=m["threshold"],
                   head=head.requires_grad_(False), probe=probe, backbone_state=bb or None,
                   counts=m.get("counts"), estimate=Estimate.from_dict(est) if est else None,
                   created=str(m.get("created", "")), device=device,
                   calibration=Calibration.from_dict(m["calibration"]) if m.get("calibration") else None,
                   cv_probs=None if cv_probs is None else cv_probs.double().numpy().copy(),
                   cv_labels=None if cv_labels is None else cv_labels.double().numpy().copy(),
                   operating=OperatingPoint(**{k: op.get(k) for k in ("rule", "target", "threshold", "sensitivity",
                                                                     "specificity")}) if op else None,
                   familiarity=fam, version=m["version"])


# --------------------------------------------------------------------------------------------- building

def default_fast_finetune() -> FastFinetune:
    """The Classifier's finetune settings (cached last stage; see engine.fewshot.finetune)."""
    return FastFinetune()


def estimate_seconds(n_images: int, mode: str, arch: str = "resnet18", image_size: int = 224,
                     cv_repeats: int | None = None, device: torch.device | str = "cpu",
                     fast: FastFinetune | None = None) -> dict[str, float]:
    """Expected build time on this machine, from costs measured here (`finetune.step_costs`, ~1-3 s once per
    process): {"seconds", "trainings", "repeats"}. probe: one forward per image (the probe fits are
    negligible); finetune: (views + 1) frozen forwards per image + (repeats * k + 1) trainings of `steps`
    last-stage steps. An estimate within a factor of ~1.5 when the machine is otherwise idle."""
    from engine.fewshot.finetune import step_costs

    fast = fast or default_fast_finetune()
    repeats = cv_repeats or (DEFAULT_REPEATS[mode])
    t_frozen, t_last, _ = step_costs(arch, image_size, min(fast.batch_size, max(2, n_images)), device)
    k = 5
    trainings = repeats * k + 1
    if mode == "probe":
        return {"seconds": n_images * t_frozen * 1.35, "trainings": trainings, "repeats": repeats}
    secs = n_images * t_frozen * (fast.views + 1) + trainings * fast.steps * t_last + n_images * t_frozen * 0.35
    return {"seconds": secs, "trainings": trainings, "repeats": repeats}


DEFAULT_REPEATS = {"probe": 10, "finetune": 1}  # finetune: one repeat of k folds (each fold a full training)


def build_classifier(
    images: Sequence[ImageInput] | None = None,
    labels: Sequence[float] | np.ndarray | None = None,
    init: str = "random",
    mode: str = "probe",
    device: torch.device | str = "cpu",
    image_size: int = 224,
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
) -> tuple[Classifier, Estimate]:
    """Build a classifier from `images` + `labels` (1 = finding present, 0 = absent), or from the rows of
    `manifest` with a known label for `finding`. Returns the classifier (fit on all images, calibrated on
    the out-of-fold scores, Youden operating point, familiarity rule) and the cross-validated AUC estimate.

    mode "probe": logistic regression on frozen features. mode "finetune": with `finetune_cfg` None or a
    FastFinetune, the last stage + head on cached frozen-stage activations (minutes on a CPU); with a
    FinetuneConfig, today's `finetune()` on whole images (kept for comparison; see bench/classifier_finetune.py).
    cv_repeats: default 10 (probe) / 1 (finetune). calibration: "platt" | "isotonic".
    Raises ClassifierDataError for unusable label sets, ValueError for bad arguments, Cancelled on `stop`.
    """
    if mode not in ("probe", "finetune"):
        raise ValueError(f"mode must be 'probe' or 'finetune', got {mode!r}")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}; got {calibration!r}")
    cv_repeats = DEFAULT_REPEATS[mode] if cv_repeats is None else int(cv_repeats)
    if cv_repeats < 1:
        raise ValueError("cv_repeats must be at least 1")
    if not MIN_IMAGE_SIZE <= int(image_size) <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] pixels; got {image_size}")
    device = torch.device(device)
    ft_cfg = finetune_cfg if finetune_cfg is not None else default_fast_finetune()
    fast = isinstance(ft_cfg, FastFinetune)
    groups = None
    if manifest is not None:
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
        images_src: Any = ImageCache.build(list(man.df["path"].iloc[rows]), image_size, on_event=as_log(on_event),
                                           stop=stop)
    else:
        if images is None or labels is None:
            raise ValueError("give images and labels, or a manifest and a finding")
        finding = finding or "finding"
        y = np.asarray(labels, dtype=np.float64).ravel()
        if len(y) != len(images):
            raise ClassifierDataError(f"{len(images)} images but {len(y)} labels; give one label per image")
        if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
            raise ClassifierDataError("labels must be 1 (finding present) or 0 (absent) for every image; "
                                      "leave unlabeled images out")
        check_counts(y, finding)
        images_src = ArrayImages.from_uint8(_to_uint8(list(images), image_size))
    warnings = check_counts(y, finding)
    for w in warnings:
        emit(on_event, message=w, level="warning", kind="warning")

    model, meta = load_backbone(init, device, arch=arch)
    fp = meta.fingerprint or weights_fingerprint(model)
    u8 = np.asarray(images_src.array)  # (N, S, S)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    k = min(5, n_pos, n_neg)
    total = cv_repeats * k + 1  # trainings: the progress bar counts these, one unit each
    emit(on_event, step=0, total=total, message=f"{total} trainings to run ({cv_repeats} x {k}-fold cross-validation "
                                                 "and the final model)")
    X, acts = None, None
    if mode == "probe":
        X = embed(init, images_src, device, arch=arch, on_event=as_log(on_event), stop=stop, backbone=(model, meta))
    elif fast:
        acts = build_activation_cache((model, meta), u8, ft_cfg, device, seed, on_event=as_log(on_event), stop=stop)

    def fit(tr: np.ndarray, r_seed: int):
        if mode == "probe":
            probe = fit_probe(X[tr], y[tr], C=C, seed=r_seed)
            return probe, None, probe.as_torch_head()
        if fast:
            stage, head = finetune_cached((model, meta), acts, tr, y[tr], ft_cfg, device, r_seed, stop)
            return None, stage, head
        bb, head = finetune((model, meta), u8[tr], y[tr], ft_cfg, device, r_seed)
        return None, bb, head

    def scores(probe, net, head, te: np.ndarray) -> np.ndarray:
        if probe is not None:
            return probe.decision_function(X[te])
        if fast:
            return head(torch.from_numpy(cached_features(net, acts, te, device)).to(device)).double().cpu().numpy()[:, 0]
        return predict_logits(net, head, u8, device, meta.mean, meta.std, rows=te)

    oof = np.zeros((cv_repeats, len(y)))  # (R, N) out-of-fold logits per repeat
    for r in range(cv_repeats):
        for j, (tr, te) in enumerate(_folds(y, groups, k, seed + r)):
            check_stop(stop)
            if len(np.unique(y[tr])) < 2:
                raise ClassifierDataError("a cross-validation fold lost one class (several images per patient); "
                                          "label images of more patients")
            probe, net, head = fit(tr, seed + r)
            oof[r, te] = scores(probe, net, head, te)
            emit(on_event, step=r * k + j + 1, total=total,
                 message=f"cross-validation: trained {r * k + j + 1} of {total - 1} fold models "
                         f"(repeat {r + 1} of {cv_repeats}, fold {j + 1} of {k})")
    if not np.isfinite(oof).all():
        raise ClassifierDataError("cross-validated scores came out NaN or infinite: the images or the backbone give "
                                  "non-finite features; check the backbone on the Pretrain page")
    rep_auc = np.array([auc(y, oof[r]) for r in range(cv_repeats)])
    boots = np.mean([bootstrap_auc_samples(y, oof[r], n_bootstrap, seed) for r in range(cv_repeats)], axis=0)
    lo, hi = percentile_interval(boots)
    cal = fit_calibration(oof.ravel(), np.tile(y, cv_repeats), calibration, np.full(oof.size, 1.0 / cv_repeats))
    cv_probs = cal(oof.ravel()).reshape(oof.shape)  # (R, N)
    op = choose_operating_point(np.tile(y, cv_repeats), cv_probs.ravel(), "youden")
    est = Estimate(auc=float(rep_auc.mean()), ci_low=lo, ci_high=hi, n_positive=n_pos, n_negative=n_neg, folds=k,
                   repeats=cv_repeats, repeat_aucs=tuple(float(a) for a in rep_auc), warnings=tuple(warnings))
    est = Estimate(**{**est.to_dict(), "sentence": sentence(est, finding), "repeat_aucs": est.repeat_aucs,
                      "warnings": est.warnings})

    check_stop(stop)
    emit(on_event, step=total - 1, total=total, message="training the final model on all images")
    probe, net, head = fit(np.arange(len(y)), seed)
    if mode == "probe":
        bb, fam = None, fit_familiarity(X)
    elif fast:
        bb = assemble_backbone((model, meta), net)
        fam = fit_familiarity(acts.clean.float().mean(dim=(2, 3)).numpy(), space="frozen")
    else:
        bb = net
        fam = fit_familiarity(_forward_with_frozen(bb, meta.arch, u8, device, meta.mean, meta.std, True)[1],
                              space="frozen")
    clf = Classifier(
        init=init, arch=meta.arch, fingerprint=fp, mean=meta.mean, std=meta.std, image_size=image_size, mode=mode,
        finding=finding, threshold=op.threshold, head=head.requires_grad_(False).cpu().to(device), probe=probe,
        backbone_state=None if bb is None else {k_: v.detach().cpu() for k_, v in bb.state_dict().items()},
        counts={"positive": n_pos, "negative": n_neg}, estimate=est, device=device,
        backbone=copy.deepcopy(bb).to(device) if bb is not None else model,
        calibration=cal, cv_probs=cv_probs, cv_labels=y.copy(), operating=op,
        familiarity=fam,
    )
    emit(on_event, step=total, total=total, kind="result", message=est.sentence,
         metrics={"auc": est.auc, "ci_low": est.ci_low, "ci_high": est.ci_high})
    return clf, est
