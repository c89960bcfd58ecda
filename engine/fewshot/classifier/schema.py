"""The classifier file (format v2): one safetensors file, tensors + JSON metadata, checked before use.

Tensors: `head.weight/bias`, `probe.*` (probe mode), `backbone.*` (finetune mode), `cv.probs` (R, N) calibrated
out-of-fold probabilities + `cv.labels` (N,), `ood.train` (n, D) normalized training features. Metadata key
`scarce_cxr` = JSON (format, version, init, arch, fingerprint, mean, std, image_size, fit_mode, mode, finding,
threshold, counts, estimate, created, calibration, operating_point, familiarity). v1 files load without
calibration, operating points or flag. No pickle anywhere. `read_classifier` checks the metadata against a
schema with bounds and every tensor for non-finite values before using any of it (ClassifierLoadError naming the
field and saying to rebuild).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from engine.atomic import atomic_write
from engine.fewshot.classifier.calibration import TARGETS, Calibration, OperatingPoint
from engine.fewshot.classifier.checks import finite_number
from engine.fewshot.classifier.errors import ClassifierLoadError
from engine.fewshot.classifier.estimate import Estimate
from engine.fewshot.classifier.familiarity import OOD_K, Familiarity
from engine.fewshot.probe import Probe
from engine.models.backbones import ARCHS

FORMAT = "scarce-cxr-classifier"
FORMAT_VERSION = 2  # 2: calibration, operating points (cv.* tensors), familiarity (ood.* tensors)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024  # bounds of a saved classifier's input size (pixels per side)
METADATA_KEY = "scarce_cxr"


# --------------------------------------------------------------------------------------------- metadata

def check_metadata(m: Any) -> dict[str, Any]:
    """The metadata of a saved classifier, checked field by field; raises ValueError naming the field."""
    if not isinstance(m, dict):
        raise ValueError(f"its metadata is a JSON {type(m).__name__}, not an object")
    _check_identity(m)
    _check_input(m)
    _check_estimate(m.get("estimate"))
    if m.get("calibration") is not None:
        Calibration.from_dict(m["calibration"])
    _check_operating_point(m.get("operating_point"))
    _check_familiarity(m.get("familiarity"))
    _check_training_keys(m.get("training_keys"))
    _check_usability(m.get("usability"), m.get("training_prevalence"))
    return m


def _check_identity(m: dict[str, Any]) -> None:
    """format, version, names, arch, fingerprint, mode."""
    from engine.names import InvalidNameError, check_name

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


def _check_input(m: dict[str, Any]) -> None:
    """image_size, mean/std, threshold, counts."""
    size = m["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size {size!r} is not a whole number of pixels in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    for key, lo in (("mean", -10.0), ("std", 1e-6)):
        vals = m[key]
        if not isinstance(vals, list) or len(vals) != 3:
            raise ValueError(f"{key} must be a list of 3 numbers (one per input channel)")
        for v in vals:
            finite_number(v, key, lo, 10.0)  # std >= 1e-6: a zero std would divide by zero
    finite_number(m["threshold"], "threshold", 0.0, 1.0)
    counts = m.get("counts") or {}
    if not isinstance(counts, dict) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0
                                           for v in counts.values()):
        raise ValueError("counts must map class names to whole numbers")


def _check_estimate(est: Any) -> None:
    if est is None:
        return
    if not isinstance(est, dict):
        raise ValueError("estimate must be an object")
    try:
        e = Estimate.from_dict(est)
    except TypeError as err:
        raise ValueError(f"estimate has unexpected or missing fields ({err})") from None
    for key in ("auc", "ci_low", "ci_high"):
        finite_number(getattr(e, key), f"estimate {key}", 0.0, 1.0)


def _check_operating_point(op: Any) -> None:
    if op is None:
        return
    if not isinstance(op, dict) or op.get("rule") not in TARGETS:
        raise ValueError("operating_point must be an object with a known rule")
    for key in ("threshold", "sensitivity", "specificity"):
        finite_number(op.get(key), f"operating_point {key}", 0.0, 1.0)
    for key in ("threshold_ci", "sensitivity_ci", "specificity_ci"):
        ci = op.get(key)
        if ci is not None and (not isinstance(ci, list) or len(ci) != 2):
            raise ValueError(f"operating_point {key} must be a (low, high) pair")
        for v in ci or ():
            finite_number(v, f"operating_point {key}", 0.0, 1.0)


def _check_usability(u: Any, prevalence: Any) -> None:
    """The saved verdict (informative only: `Classifier.usability` recomputes it) and training prevalence."""
    if prevalence is not None:
        finite_number(prevalence, "training_prevalence", 0.0, 1.0)
    if u is None:
        return
    if not isinstance(u, dict) or not isinstance(u.get("usable"), bool) or not isinstance(u.get("reasons", []), list) \
            or not all(isinstance(r, str) and len(r) < 1000 for r in u.get("reasons", [])[:20]):
        raise ValueError("usability must be an object with usable (true/false) and reasons (texts)")


def _check_familiarity(fam: Any) -> None:
    if fam is None:
        return
    if not isinstance(fam, dict):
        raise ValueError("familiarity must be an object")
    finite_number(fam.get("threshold"), "familiarity threshold", 0.0, 2.0)  # distances of unit vectors lie in [0, 2]
    finite_number(fam.get("alpha"), "familiarity alpha", 0.0, 1.0)
    if fam.get("k") != OOD_K:
        raise ValueError(f"familiarity k must be {OOD_K}")
    if fam.get("space", "features") not in ("features", "frozen"):
        raise ValueError("familiarity space must be 'features' or 'frozen'")


def _check_training_keys(keys: Any) -> None:
    """training_keys: absent, or a list of sha256 hex digests (engine.fewshot.classifier.scoring.image_key)."""
    if keys is None:
        return
    hexdigits = set("0123456789abcdef")
    if not isinstance(keys, list) or len(keys) > 1_000_000 or any(
            not isinstance(k, str) or len(k) != 64 or not set(k) <= hexdigits for k in keys):
        raise ValueError("training_keys must be a list of sha256 hex digests")


# --------------------------------------------------------------------------------------------- writing

def write_classifier(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write tensors + metadata (strict JSON: NaN/inf refused) as one safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {METADATA_KEY: json.dumps(metadata, allow_nan=False)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


# --------------------------------------------------------------------------------------------- reading

def read_classifier(path: str | Path) -> dict[str, Any]:
    """A classifier file's contents, checked, as keyword arguments of `Classifier` (device excluded).

    Raises FileNotFoundError, or ClassifierLoadError when the file is not a classifier, its metadata fails
    the schema (missing fields, out-of-range sizes, zero std, wrong types), a tensor is missing, misshapen
    or holds NaN/infinity. Nothing in it is used before it is checked."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no classifier file at {path}")

    def refuse(why: str) -> ClassifierLoadError:
        return ClassifierLoadError(f"{path} is not a usable classifier file: {why}. Build the classifier again "
                                   "(Classifier page, or `python -m engine classify`)")

    m, tensors = _read_raw(path, refuse)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise refuse(f"it holds non-finite weights (NaN or infinity) in {', '.join(sorted(bad)[:5])}")
    head = _head(tensors, m["arch"], refuse)
    probe_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("probe.")}
    try:
        probe = Probe.from_state_dict(probe_sd) if probe_sd else None
    except KeyError as e:
        raise refuse(f"its probe lacks the tensor {e}") from None
    bb = {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
    if m["mode"] == "finetune" and not bb:
        raise refuse("it is a finetuned classifier without its backbone weights")
    cv_probs, cv_labels = _cv_tensors(tensors, refuse)
    op, est = m.get("operating_point"), m.get("estimate")
    return dict(init=m["init"], arch=m["arch"], fingerprint=m["fingerprint"], mean=m["mean"], std=m["std"],
                image_size=m["image_size"], mode=m["mode"], finding=m["finding"], threshold=m["threshold"],
                head=head.requires_grad_(False), probe=probe, backbone_state=bb or None,
                counts=m.get("counts"), estimate=Estimate.from_dict(est) if est else None,
                created=str(m.get("created", "")),
                calibration=Calibration.from_dict(m["calibration"]) if m.get("calibration") else None,
                cv_probs=cv_probs, cv_labels=cv_labels,
                operating=_operating(op) if op else None,
                familiarity=_familiarity(m, tensors, refuse), version=m["version"],
                training_keys=tuple(m.get("training_keys") or ()))


def _operating(op: dict[str, Any]) -> OperatingPoint:
    """The saved operating point (checked by `_check_operating_point`), intervals as tuples."""
    ci = {k: tuple(op[k]) if op.get(k) is not None else None for k in ("threshold_ci", "sensitivity_ci",
                                                                       "specificity_ci")}
    return OperatingPoint(**{k: op.get(k) for k in ("rule", "target", "threshold", "sensitivity", "specificity")},
                          **ci)


def _read_raw(path: Path, refuse) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(checked metadata, tensors) of a safetensors file; refuses non-classifier or unparsable files."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
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
        return check_metadata(parsed), tensors
    except ValueError as e:
        raise refuse(str(e)) from None


def _head(tensors: dict[str, torch.Tensor], arch: str, refuse) -> nn.Linear:
    w, b = tensors.get("head.weight"), tensors.get("head.bias")
    D = ARCHS[arch]
    if w is None or b is None or tuple(w.shape) != (1, D) or tuple(b.shape) != (1,):
        raise refuse(f"its head must be head.weight (1, {D}) and head.bias (1,) for {arch}")
    head = nn.Linear(D, 1)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    return head


def _cv_tensors(tensors: dict[str, torch.Tensor], refuse) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(cv.probs (R, N) float64, cv.labels (N,) float64), both None in files without them."""
    cv_probs, cv_labels = tensors.get("cv.probs"), tensors.get("cv.labels")
    if (cv_probs is None) != (cv_labels is None) or (cv_probs is not None and (
            cv_probs.ndim != 2 or cv_labels.ndim != 1 or cv_probs.shape[1] != cv_labels.shape[0]
            or not bool(((cv_labels == 0) | (cv_labels == 1)).all()) or len(torch.unique(cv_labels)) < 2
            or not bool(((cv_probs >= 0) & (cv_probs <= 1)).all()))):
        raise refuse("its cross-validation tensors cv.probs (R, N) in [0, 1] and cv.labels (N,) 0/1 do not match")
    if cv_probs is None:
        return None, None
    return cv_probs.double().numpy().copy(), cv_labels.double().numpy().copy()


def _familiarity(m: dict[str, Any], tensors: dict[str, torch.Tensor], refuse) -> Familiarity | None:
    if m.get("familiarity") is None:
        return None
    tr = tensors.get("ood.train")
    if tr is None or tr.ndim != 2 or tr.shape[0] < 2 or tr.shape[1] > 8192:
        raise refuse("its familiarity rule needs ood.train (n >= 2, D) training features")
    fm = m["familiarity"]
    return Familiarity(tr.float().numpy().copy(), float(fm["threshold"]), OOD_K, float(fm["alpha"]),
                       int(fm.get("rank", 0)) if isinstance(fm.get("rank"), int) else 0,
                       str(fm.get("space", "features")))
