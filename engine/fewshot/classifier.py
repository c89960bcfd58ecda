"""The clinician's path: a handful of labeled images -> a saved classifier with an honest AUC estimate.

`build_classifier` embeds the images with a chosen init, fits the probe (or finetunes) on all of
them, and estimates how well that procedure works by **repeated stratified k-fold cross-validation**
(k = min(5, images in the smaller class); patient-grouped when a manifest gives several images per
patient):

* each repeat pools the out-of-fold scores of all images and computes one AUC; the estimate is the
  mean over `cv_repeats` repeats;
* the 95% interval is a percentile bootstrap over *images*: 500 resamples of the images (the same
  resample for every repeat), the repeat-averaged AUC of each resample, its 2.5-97.5 percentiles.
  So it reflects both how few images there are and how the folds fell;
* the decision threshold is Youden's cut on the pooled out-of-fold scores (not on training scores,
  which are separated perfectly at these sizes and would give an overconfident cut).

It refuses (ClassifierDataError, plain words) a single class or fewer than 3 images of either class,
and warns below 10 per class. `Classifier.save` writes one safetensors file: tensors (head, probe,
finetuned backbone when there is one) plus JSON metadata (init name + weights fingerprint,
normalization, threshold, image size, finding, counts, estimate, created) -- no pickle anywhere.
"""
from __future__ import annotations

import copy
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy.special import expit

from engine.events import OnEvent, check_stop, emit
from engine.fewshot.features import ArrayImages, embed, weights_fingerprint
from engine.fewshot.finetune import FinetuneConfig, finetune, predict_logits
from engine.fewshot.metrics import N_BOOTSTRAP, auc, bootstrap_auc_samples, percentile_interval, youden_threshold
from engine.fewshot.probe import DEFAULT_C, Probe, fit_probe
from engine.models.backbones import DEFAULT_LAYER, build_backbone, prepare_batch
from engine.models.registry import BackboneMeta, load_backbone

MIN_PER_CLASS = 3  # below this no classifier is built: k-fold CV needs >= 2 training images per class
WARN_PER_CLASS = 10  # below this the estimate is flagged as rough
FORMAT = "scarce-cxr-classifier"
FORMAT_VERSION = 1
ImageInput = np.ndarray | str | Path


class ClassifierDataError(ValueError):
    """The labeled images cannot make a classifier (one class, too few of a class, bad labels)."""


class ClassifierLoadError(ValueError):
    """A saved classifier file cannot be used here (not a classifier, or its backbone changed)."""


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
        out[i] = fit_square(img, size)[0]
    return out


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
            f"'{finding}' from images without, from {e.repeats} repeats of {e.folds}-fold cross-validation on "
            f"{e.n_positive + e.n_negative} images ({e.n_positive} with, {e.n_negative} without). "
            f"0.5 is a coin flip and 1.0 is perfect.")
    if e.ci_low <= 0.5:
        text += " The interval includes 0.5: with these images the classifier may be no better than chance."
    elif min(e.n_positive, e.n_negative) < WARN_PER_CLASS:
        text += " With so few images, treat this as a rough guide."
    return text


# --------------------------------------------------------------------------------------------- the classifier

class Classifier:
    """A backbone (registry init, or finetuned weights) + a linear head on its pooled features."""

    def __init__(self, *, init: str, arch: str, fingerprint: str, mean: Sequence[float], std: Sequence[float],
                 image_size: int, mode: str, finding: str, threshold: float, head: nn.Linear,
                 probe: Probe | None = None, backbone_state: dict[str, torch.Tensor] | None = None,
                 counts: dict[str, int] | None = None, estimate: Estimate | None = None, created: str = "",
                 device: torch.device | str = "cpu", backbone: nn.Module | None = None):
        self.init, self.arch, self.fingerprint = init, arch, fingerprint
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.image_size, self.mode, self.finding = int(image_size), mode, finding
        self.threshold = float(threshold)  # on the probability
        self.head, self.probe, self.backbone_state = head, probe, backbone_state
        self.counts = counts or {}
        self.estimate = estimate
        self.created = created or time.strftime("%Y-%m-%dT%H:%M:%S")
        self.device = torch.device(device)
        self._backbone = backbone

    # -- model
    @property
    def backbone(self) -> nn.Module:
        if self._backbone is None:
            if self.backbone_state is not None:
                m = build_backbone(self.arch)
                m.load_state_dict(self.backbone_state, strict=True)
            else:
                m, meta = load_backbone(self.init, self.device, arch=self.arch)
                fp = meta.fingerprint or weights_fingerprint(m)
                if fp != self.fingerprint:
                    raise ClassifierLoadError(
                        f"the backbone '{self.init}' has changed since this classifier was built (weights "
                        f"fingerprint {fp} != {self.fingerprint}); rebuild the classifier")
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

    def logits(self, images: Sequence[ImageInput]) -> np.ndarray:
        u8 = _to_uint8(list(images), self.image_size)  # (N, S, S)
        return predict_logits(self.backbone, self.head.to(self.device), u8, self.device, self.mean, self.std)

    def predict(self, images: Sequence[ImageInput]) -> list[dict[str, Any]]:
        """[{probability, label (1 = finding present), threshold, finding}] per image (arrays or paths)."""
        p = expit(self.logits(images).astype(np.float64))
        return [{"probability": float(v), "label": int(v >= self.threshold), "threshold": self.threshold,
                 "finding": self.finding} for v in p]

    # -- file
    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "init": self.init, "arch": self.arch,
            "fingerprint": self.fingerprint, "mean": list(self.mean), "std": list(self.std),
            "image_size": self.image_size, "fit_mode": "pad", "mode": self.mode, "finding": self.finding,
            "threshold": self.threshold, "counts": self.counts, "finetuned_backbone": self.backbone_state is not None,
            "estimate": self.estimate.to_dict() if self.estimate else None, "created": self.created,
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
        meta = {"scarce_cxr": json.dumps(self.metadata())}
        _atomic_write(path, lambda tmp: save_file(t, tmp, metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "Classifier":
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no classifier file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("scarce_cxr")
            tensors = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for non-safetensors bytes
            raise ClassifierLoadError(f"{path} is not a classifier file saved by this app ({e})") from e
        if raw is None:
            raise ClassifierLoadError(f"{path} is a safetensors file but not a classifier saved by this app")
        m = json.loads(raw)
        if m.get("format") != FORMAT or int(m.get("version", 0)) > FORMAT_VERSION:
            raise ClassifierLoadError(f"{path} has format {m.get('format')} v{m.get('version')}; this app reads "
                                      f"{FORMAT} up to v{FORMAT_VERSION}")
        from engine.names import InvalidNameError, check_name

        try:  # names inside the file pass the one validator before anything uses them
            check_name(m.get("init"), "init")
            check_name(m.get("finding"), "finding")
        except InvalidNameError as e:
            raise ClassifierLoadError(f"{path} is not a valid classifier file: {e}") from None
        w = tensors["head.weight"]
        head = nn.Linear(w.shape[1], 1)
        with torch.no_grad():
            head.weight.copy_(w)
            head.bias.copy_(tensors["head.bias"])
        probe_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("probe.")}
        bb = {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
        est = m.get("estimate")
        return cls(init=m["init"], arch=m["arch"], fingerprint=m["fingerprint"], mean=m["mean"], std=m["std"],
                   image_size=m["image_size"], mode=m["mode"], finding=m["finding"], threshold=m["threshold"],
                   head=head.requires_grad_(False), probe=Probe.from_state_dict(probe_sd) if probe_sd else None,
                   backbone_state=bb or None, counts=m.get("counts"),
                   estimate=Estimate.from_dict(est) if est else None, created=m.get("created", ""), device=device)


# --------------------------------------------------------------------------------------------- building

def _fit(mode: str, X: np.ndarray | None, u8: np.ndarray, y: np.ndarray, backbone: tuple[nn.Module, BackboneMeta],
         C: float, ft_cfg: FinetuneConfig, device: torch.device, seed: int
         ) -> tuple[Probe | None, nn.Module | None, nn.Linear]:
    if mode == "probe":
        probe = fit_probe(X, y, C=C, seed=seed)
        return probe, None, probe.as_torch_head()
    bb, head = finetune(backbone, u8, y, ft_cfg, device, seed)
    return None, bb, head


def build_classifier(
    images: Sequence[ImageInput] | None = None,
    labels: Sequence[float] | np.ndarray | None = None,
    init: str = "random",
    mode: str = "probe",
    device: torch.device | str = "cpu",
    image_size: int = 224,
    seed: int = 0,
    cv_repeats: int = 10,
    on_event: OnEvent | None = None,
    stop: threading.Event | None = None,
    *,
    manifest: str | Path | None = None,
    finding: str | None = None,
    arch: str | None = None,
    C: float = DEFAULT_C,
    finetune_cfg: FinetuneConfig | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
) -> tuple[Classifier, Estimate]:
    """Build a classifier from `images` + `labels` (1 = finding present, 0 = absent), or from the rows of
    `manifest` with a known label for `finding`. Returns the classifier (fit on all images) and the
    cross-validated estimate of its AUC. Raises ClassifierDataError for unusable label sets.
    """
    if mode not in ("probe", "finetune"):
        raise ValueError(f"mode must be 'probe' or 'finetune', got {mode!r}")
    if cv_repeats < 1:
        raise ValueError("cv_repeats must be at least 1")
    device = torch.device(device)
    ft_cfg = finetune_cfg or FinetuneConfig()
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
        images_src: Any = ImageCache.build(list(man.df["path"].iloc[rows]), image_size, on_event=on_event, stop=stop)
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
    X = embed(init, images_src, device, arch=arch, on_event=on_event, stop=stop, backbone=(model, meta)) \
        if mode == "probe" else None

    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    k = min(5, n_pos, n_neg)
    oof = np.zeros((cv_repeats, len(y)))  # (R, N) out-of-fold logits per repeat
    total = cv_repeats * k + 1
    for r in range(cv_repeats):
        for j, (tr, te) in enumerate(_folds(y, groups, k, seed + r)):
            check_stop(stop)
            if len(np.unique(y[tr])) < 2:
                raise ClassifierDataError("a cross-validation fold lost one class (several images per patient); "
                                          "label images of more patients")
            probe, bb, head = _fit(mode, None if X is None else X[tr], u8[tr], y[tr], (model, meta), C, ft_cfg,
                                   device, seed + r)
            oof[r, te] = probe.decision_function(X[te]) if probe is not None else \
                predict_logits(bb, head, u8, device, meta.mean, meta.std, rows=te)
            emit(on_event, step=r * k + j + 1, total=total, message=f"cross-validation repeat {r + 1}, fold {j + 1}/{k}")
    rep_auc = np.array([auc(y, oof[r]) for r in range(cv_repeats)])
    boots = np.mean([bootstrap_auc_samples(y, oof[r], n_bootstrap, seed) for r in range(cv_repeats)], axis=0)
    lo, hi = percentile_interval(boots)
    cut = youden_threshold(np.tile(y, cv_repeats), oof.ravel())
    est = Estimate(auc=float(rep_auc.mean()), ci_low=lo, ci_high=hi, n_positive=n_pos, n_negative=n_neg, folds=k,
                   repeats=cv_repeats, repeat_aucs=tuple(float(a) for a in rep_auc), warnings=tuple(warnings))
    est = Estimate(**{**est.to_dict(), "sentence": sentence(est, finding), "repeat_aucs": est.repeat_aucs,
                      "warnings": est.warnings})

    check_stop(stop)
    probe, bb, head = _fit(mode, X, u8, y, (model, meta), C, ft_cfg, device, seed)
    clf = Classifier(
        init=init, arch=meta.arch, fingerprint=fp, mean=meta.mean, std=meta.std, image_size=image_size, mode=mode,
        finding=finding, threshold=float(expit(cut)), head=head.requires_grad_(False), probe=probe,
        backbone_state=None if bb is None else {k_: v.detach().cpu() for k_, v in bb.state_dict().items()},
        counts={"positive": n_pos, "negative": n_neg}, estimate=est, device=device,
        backbone=copy.deepcopy(bb) if bb is not None else model,
    )
    emit(on_event, step=total, total=total, kind="result", message=est.sentence,
         metrics={"auc": est.auc, "ci_low": est.ci_low, "ci_high": est.ci_high})
    return clf, est
