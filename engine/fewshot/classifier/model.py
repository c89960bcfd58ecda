"""The saved classifier: backbone + linear head, calibration, operating points, familiarity rule; prediction."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from engine.fewshot.classifier.calibration import Calibration, OperatingPoint, choose_operating_point
from engine.fewshot.classifier.checks import finite_number
from engine.fewshot.classifier.errors import ClassifierLoadError, ClassifierScoreError
from engine.fewshot.classifier.estimate import Estimate
from engine.fewshot.classifier.familiarity import Familiarity
from engine.fewshot.classifier.inputs import ImageInput, forward_with_frozen, to_uint8
from engine.fewshot.classifier.operating import Replicates, with_intervals
from engine.fewshot.classifier.schema import FORMAT, FORMAT_VERSION, read_classifier, write_classifier
from engine.fewshot.classifier.usability import Usability, assess
from engine.fewshot.features import weights_fingerprint
from engine.fewshot.probe import Probe
from engine.models.backbones import ARCHS, DEFAULT_LAYER, build_backbone, prepare_batch
from engine.models.registry import load_backbone


TRAINING_MATCH = 0.01  # feature distance (unit vectors) at or below which an image counts as a training image


class Classifier:
    """A backbone (registry init, or finetuned weights) + a linear head on its pooled features, with a
    calibration map, cross-validated operating points and a familiarity rule (see engine.fewshot.classifier)."""

    def __init__(self, *, init: str, arch: str, fingerprint: str, mean: Sequence[float], std: Sequence[float],
                 image_size: int, mode: str, finding: str, threshold: float, head: nn.Linear,
                 probe: Probe | None = None, backbone_state: dict[str, torch.Tensor] | None = None,
                 counts: dict[str, int] | None = None, estimate: Estimate | None = None, created: str = "",
                 device: torch.device | str = "cpu", backbone: nn.Module | None = None,
                 calibration: Calibration | None = None, cv_probs: np.ndarray | None = None,
                 cv_labels: np.ndarray | None = None, operating: OperatingPoint | None = None,
                 familiarity: Familiarity | None = None, version: int = FORMAT_VERSION,
                 checkpoint_dir: Path | None = None, training_keys: Sequence[str] = ()):
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
        self.checkpoint_dir = checkpoint_dir  # where a registry init is looked up (None: engine.paths default)
        self.training_keys = tuple(training_keys)  # content keys of the training images (scoring.image_key)
        self._op_cache: dict[tuple[str, float | None], tuple[OperatingPoint, Replicates | None]] = {}

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
                m, meta = load_backbone(self.init, self.device, arch=self.arch, checkpoint_dir=self.checkpoint_dir)
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
        from engine.models.classifier_net import ExplainModel

        return ExplainModel(self.backbone, self.head.to(self.device)).eval().requires_grad_(True)

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
        u8 = to_uint8(list(images), self.image_size)  # (N, S, S)
        space = self.familiarity.space if self.familiarity is not None else "features"
        return forward_with_frozen(self.backbone, self.arch, u8, self.device, self.mean, self.std, space == "frozen")

    def logits(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Raw scores (N,) float64 (the head's logit; uncalibrated)."""
        return self._logits(self.features(images))

    def _logits(self, F: np.ndarray) -> np.ndarray:
        w = self.head.weight.detach().cpu().double().numpy()[0]  # (D,)
        return np.asarray(F, dtype=np.float64) @ w + float(self.head.bias.detach().cpu().double()[0])

    def probability(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N,) for raw logits (N,) (Platt / isotonic; see engine.fewshot.classifier)."""
        return self.calibration(logits)

    def operating_point(self, rule: str = "youden", target: float | None = None) -> OperatingPoint:
        """The cut for `rule` ("youden" | "equal" | "sensitivity" | "specificity" with `target` in (0, 1]) with
        its cross-validated sensitivity and specificity and their 95% intervals (repeats x bootstrap, see
        engine.fewshot.classifier.operating). Files of format v1 have only their saved cut."""
        return self.operating_point_replicates(rule, target)[0]

    def operating_point_replicates(self, rule: str = "youden", target: float | None = None
                                   ) -> tuple[OperatingPoint, Replicates | None]:
        """(operating point with intervals, its bootstrap x repeat replicates; None for v1 files). Memoized."""
        key = (rule, None if target is None else float(target))
        if key in self._op_cache:
            return self._op_cache[key]
        if self.cv_probs is None or self.cv_labels is None:
            if rule != "youden":
                raise ClassifierLoadError("this classifier was saved by an older version without cross-validated "
                                          "scores; rebuild it to choose an operating point")
            return self.operating or OperatingPoint("youden", None, self.threshold, math.nan, math.nan), None
        R = self.cv_probs.shape[0]
        op = choose_operating_point(np.tile(self.cv_labels, R), self.cv_probs.ravel(), rule, target)
        self._op_cache[key] = with_intervals(op, self.cv_labels, self.cv_probs)
        return self._op_cache[key]

    @property
    def usability(self) -> Usability:
        """Usable or not, with plain-language reasons (engine.fewshot.classifier.usability), recomputed from the
        cross-validated probabilities, the AUC estimate and the saved operating point."""
        return assess(self.cv_probs, self.estimate, self.operating)

    @property
    def training_prevalence(self) -> float:
        """Share of training images with the finding (the mix the calibrated probabilities hold at)."""
        if self.cv_labels is not None:
            return float(np.mean(self.cv_labels))
        pos, neg = int(self.counts.get("positive", 0)), int(self.counts.get("negative", 0))
        return pos / (pos + neg) if pos + neg else math.nan

    def predict(self, images: Sequence[ImageInput], threshold: float | None = None) -> list[dict[str, Any]]:
        """One dict per image (float32 HxW arrays in [0, 1] or paths): `probability` (calibrated), `label`
        (1 = probability >= threshold), `threshold`, `finding`, `calibration`, `unfamiliar` (bool, or None for
        files without the rule), `familiarity_distance`, `familiarity_threshold`.
        `threshold` (default: the saved operating point's) is a cut on the calibrated probability.
        `training_image` (files with the rule): True when the image is (nearly) one of the training images (distance
        <= TRAINING_MATCH): its score is not a test of the classifier (issue 21).
        Raises ClassifierScoreError when a score is NaN or infinite (never returns a non-finite number)."""
        t = self.threshold if threshold is None else finite_number(threshold, "threshold", 0.0, 1.0)
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
                 "familiarity_threshold": None, "training_image": None}
            if d is not None:
                r.update(unfamiliar=bool(d[i] > self.familiarity.threshold), familiarity_distance=float(d[i]),
                         familiarity_threshold=self.familiarity.threshold, training_image=bool(d[i] <= TRAINING_MATCH))
            out.append(r)
        return out

    # -- file
    def metadata(self) -> dict[str, Any]:
        """The JSON metadata saved with the tensors (schema: engine.fewshot.classifier.schema)."""
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "init": self.init, "arch": self.arch,
            "fingerprint": self.fingerprint, "mean": list(self.mean), "std": list(self.std),
            "image_size": self.image_size, "fit_mode": "pad", "mode": self.mode, "finding": self.finding,
            "threshold": self.threshold, "counts": self.counts, "finetuned_backbone": self.backbone_state is not None,
            "estimate": self.estimate.to_dict() if self.estimate else None, "created": self.created,
            "calibration": self.calibration.to_dict(),
            "operating_point": self.operating.to_dict() if self.operating else None,
            "familiarity": self.familiarity.meta() if self.familiarity is not None else None,
            "training_keys": list(self.training_keys),
            "usability": self.usability.to_dict(),
            "training_prevalence": self.training_prevalence if math.isfinite(self.training_prevalence) else None,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors saved in the file (CPU, contiguous; names in engine.fewshot.classifier.schema)."""
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
        return t

    def save(self, path: str | Path) -> Path:
        """One safetensors file (tensors + JSON metadata), written atomically."""
        return write_classifier(path, self.tensors(), self.metadata())

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu",
             checkpoint_dir: Path | None = None) -> "Classifier":
        """Read a classifier file. Raises FileNotFoundError, or ClassifierLoadError when the file is not a
        classifier, its metadata fails the schema (missing fields, out-of-range sizes, zero std, wrong
        types), a tensor is missing, misshapen or holds NaN/infinity. Nothing in it is used before it is checked.
        `checkpoint_dir`: where its registry init is looked up (default: engine.paths.checkpoints_dir())."""
        return cls(**read_classifier(path), device=device, checkpoint_dir=checkpoint_dir)
