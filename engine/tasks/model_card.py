"""The markdown model card saved beside each classifier the app builds."""
from __future__ import annotations

from typing import Any

__all__ = ["model_card"]

_LIMITS = [
    "",
    "## Intended use and limits",
    "",
    "- Research and decision-support prototyping only. **Not a medical device; not for diagnosis.** "
    "Every output must be reviewed by a qualified clinician.",
    "- Trained on very few images: it has not been validated on an independent external test set.",
    "- The Grad-CAM heatmaps show which regions drove the score; they are not a segmentation and can highlight "
    "shortcuts (markers, devices, text) rather than the finding.",
    "- Re-estimate the AUC on your own labeled images before relying on it, and whenever the population, "
    "scanner or protocol changes.",
    "",
    "Built with scarce-cxr.",
    "",
]


def model_card(meta: dict[str, Any], init_info: dict[str, Any] | None = None, n_images: int | None = None,
               predictive: list[dict[str, Any]] | None = None) -> str:
    """A short markdown model card for a saved classifier (its metadata dict, Classifier.metadata()).

    init_info: the backbone's registry info (method, n_images, image_size, steps, provenance, shipped, kind);
    n_images: how many labeled images it was built from; predictive: PPV/NPV at the saved operating point
    for some prevalences (`engine.fewshot.classifier.operating.PredictiveValues.to_dict()` each)."""
    info = init_info or {}
    lines = _header(meta, info, n_images)
    lines += _calibration_lines(meta, lines)
    lines += _prevalence_lines(meta, predictive or [])
    lines += _provenance_lines(meta, info)
    lines += _estimate_lines(meta.get("estimate") or {})
    return "\n".join(lines + _LIMITS)


def _usability_lines(meta: dict[str, Any]) -> list[str]:
    u = meta.get("usability") or {}
    if u.get("usable", True):
        return []
    return ["", "> **NOT USABLE - do not use this classifier on patients:** " + "; ".join(u.get("reasons") or [])
            + ". Label more images, or try another backbone or the probe method, and build it again.", ""]


def _ci(op: dict[str, Any], key: str, fmt: str) -> str:
    ci = op.get(f"{key}_ci")
    return f" (95% interval {ci[0]:{fmt}} to {ci[1]:{fmt}})" if ci else ""


def _prevalence_lines(meta: dict[str, Any], predictive: list[dict[str, Any]]) -> list[str]:
    """Training prevalence, the Bayes adjustment, and PPV/NPV at the operating point for a few prevalences."""
    q = meta.get("training_prevalence")
    if q is None:
        return []
    out = [f"- **Training prevalence:** {q:.0%} of the training images have the finding. The calibrated "
           "probabilities hold at that mix; where the finding is rarer they overstate it. At an expected prevalence "
           "pi' a probability p becomes p' with odds(p') = odds(p) x odds(pi') / odds(training prevalence) "
           "(Bayes; Saerens et al. 2002): the Classifier page and `predict --prevalence` show it."]
    for pv in predictive:
        def f(v: float) -> str:
            return "n/a" if v != v else f"{v:.0%}"
        out.append(f"  - at prevalence {pv['prevalence']:.0%}: PPV {f(pv['ppv'])} (95% interval {f(pv['ppv_ci'][0])} "
                   f"to {f(pv['ppv_ci'][1])}), NPV {f(pv['npv'])} ({f(pv['npv_ci'][0])} to {f(pv['npv_ci'][1])})")
    return out


def _header(meta: dict[str, Any], info: dict[str, Any], n_images: int | None) -> list[str]:
    counts = meta.get("counts") or {}
    finding = str(meta.get("finding", "finding")).replace("_", " ")
    src = ""
    if info.get("method") and meta.get("init") not in ("random", "imagenet"):
        src = (f" It was pretrained with {info.get('method')} on {info.get('n_images', '?')} unlabeled images at "
               f"{info.get('image_size', '?')} px ({info.get('steps', '?')} steps).")
    mode = "a logistic-regression probe on frozen backbone features" if meta.get("mode") == "probe" \
        else "finetuning of the whole backbone with a linear head"
    return [
        f"# Model card: {finding} classifier",
        *_usability_lines(meta),
        "",
        f"- **Created:** {str(meta.get('created', '')).replace('T', ' ')}",
        f"- **Task:** {finding} present vs absent on a chest radiograph (one finding, one-vs-rest).",
        f"- **Training data:** {counts.get('positive', '?')} images with {finding}, {counts.get('negative', '?')} without"
        + (f" ({n_images} in total)" if n_images else "") + ".",
        f"- **Backbone:** `{meta.get('init')}` ({meta.get('arch')}).{src}",
        f"- **Method:** {mode}; input {meta.get('image_size')} px, letterboxed (padded, nothing cropped).",
        f"- **Decision threshold:** {float(meta.get('threshold', 0.5)):.3f} on the probability "
        "(Youden's cut on cross-validated scores).",
    ]


def _calibration_lines(meta: dict[str, Any], lines: list[str]) -> list[str]:
    """Calibrated probabilities replace the threshold line (the last of `lines`, changed in place) with
    two lines; familiarity adds the unfamiliar-image rule."""
    cal, op, fam = meta.get("calibration") or {}, meta.get("operating_point") or {}, meta.get("familiarity") or {}
    out = []
    if cal.get("method") in ("platt", "isotonic"):
        lines[-1] = (f"- **Probabilities:** calibrated by {'Platt scaling (Platt 1999)' if cal['method'] == 'platt' else 'isotonic regression (Zadrozny & Elkan 2002)'}"
                     " on the cross-validated (out-of-fold) scores.")
        out.append(f"- **Decision threshold:** probability >= {float(op.get('threshold', meta.get('threshold', 0.5))):.3f}"
                   f"{_ci(op, 'threshold', '.3f')} (Youden's J: the highest sensitivity + specificity on cross-validated "
                   f"scores); cross-validated sensitivity {float(op.get('sensitivity', float('nan'))):.0%}"
                   f"{_ci(op, 'sensitivity', '.0%')}, specificity {float(op.get('specificity', float('nan'))):.0%}"
                   f"{_ci(op, 'specificity', '.0%')}. Intervals: bootstrap of the images x cross-validation repeats. "
                   "Another operating point (equal sensitivity and specificity, a target sensitivity or specificity) "
                   "can be chosen on the Classifier page or with `predict --equal` / `--sensitivity 0.9`.")
    if fam:
        out.append(f"- **Unfamiliar images:** {fam.get('rule', '')}. Such images are flagged `unfamiliar` (Sun et al. "
                   "2022 nearest-neighbour rule, conformal leave-one-out threshold); the estimate does not apply to them.")
    return out


def _provenance_lines(meta: dict[str, Any], info: dict[str, Any]) -> list[str]:
    demo = info.get("kind") == "synthetic"  # the registry's kind: the recorded training data, never the name
    if not (info.get("provenance") or info.get("shipped") or demo):
        return []
    prov = info.get("provenance") or ("pretrained on synthetic phantom images of the demo workspace, not real X-rays"
                                      if demo else "")
    return [f"- **Backbone provenance:** {prov}."] if prov else []


def _estimate_lines(est: dict[str, Any]) -> list[str]:
    if not est:
        return []
    lines = [
        f"- **Estimated AUC:** {est['auc']:.3f} (95% interval {est['ci_low']:.3f} to {est['ci_high']:.3f}), "
        f"from {est.get('repeats')} repeats of {est.get('folds')}-fold cross-validation.",
        "",
        "## What the estimate means",
        "",
        est.get("sentence", ""),
        "",
        "The AUC is the chance that the classifier scores a random image with the finding higher than a random "
        "image without it. It was estimated on the same small set of images the classifier was built from, by "
        "cross-validation; the interval shows how much it could differ on new images from the same source. "
        "Images from another hospital, scanner, population or prevalence can do worse.",
    ]
    for w in est.get("warnings") or []:
        lines += ["", f"> **Warning:** {w}"]
    return lines
