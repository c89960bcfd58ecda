"""One image explained: by a built classifier (`classifier_heatmap`), and by a probe per init built on
the finding's other labeled images (`explain_across_inits`, the app's "explain this image" job).

Composes engine.fewshot.classifier (build_classifier, Classifier.explain_module), engine.explain.gradcam
(CAMExplainer, explain_image), engine.explain.localization and engine.explain.overlay; no new logic.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.events import OnEvent, check_stop, emit

if TYPE_CHECKING:
    import torch

    from engine.fewshot.classifier import Classifier

__all__ = ["ImageStudySettings", "classifier_heatmap", "explain_across_inits", "heatmap_caveat", "region_from_rows"]

LAYER_STRIDE = {"layer4": 32, "layer3": 16, "layer2": 8}  # input pixels per map cell (ResNet / DenseNet stages)


def heatmap_caveat(image_size: int, layer: str = "layer4") -> str:
    """The one-line caveat shown beside every heatmap: how coarse it is and what it is not."""
    n = max(1, int(image_size) // LAYER_STRIDE.get(layer.rsplit(".", 1)[-1], 32))
    return (f"A coarse {n}x{n} map of what raised the score, smoothed up to the image: it can point at shortcuts "
            "(markers, text, tubes, the heart) and is not an outline of the lesion.")


def classifier_heatmap(clf: Classifier, img: np.ndarray, method: str = "gradcam",
                       layer: str | None = None) -> tuple[np.ndarray, float]:
    """(heatmap float32 HxW in [0, 1] at the image's size, positive logit) of one image (float32 HxW in
    [0, 1]) under a classifier; `layer` defaults to the classifier's target layer.

    Raises ValueError for an unknown CAM method or non-finite logits / maps (CAMExplainer)."""
    from engine.explain import gradcam  # looked up at call time: tests replace gradcam.explain_image

    with gradcam.CAMExplainer(clf.explain_module(), layer or clf.target_layer, method, clf.device,
                              mean=clf.mean, std=clf.std) as ex:
        heat = gradcam.explain_image(ex, img, clf.image_size)
        logit = float(ex.last_logits[0])
    return heat, logit


def region_from_rows(rows: Iterable[Mapping[str, Any]], shape: tuple[int, int]) -> np.ndarray | None:
    """Union of stored regions (Store.regions rows: kind "mask" with mask_path, else a box x, y, w, h in
    pixels) as a bool mask of `shape`; None when there are none. Mask PNGs count where > 127."""
    from PIL import Image

    from engine.explain.localization import region_mask

    region = None
    for r in rows:
        if region is None:
            region = np.zeros(shape, bool)
        if r["kind"] == "mask" and r["mask_path"]:
            with Image.open(r["mask_path"]) as im:
                region |= np.asarray(im.convert("L")) > 127
        else:
            region |= region_mask((r["x"], r["y"], r["w"], r["h"]), shape)
    return region


@dataclass(frozen=True)
class ImageStudySettings:
    """How each init's probe is built and explained (one image, several inits)."""

    method: str = "gradcam"
    layer: str = "layer4"
    image_size: int | None = None  # None: each init's own input size (engine.models.input_size_for)
    seed: int = 0


def explain_across_inits(manifest: str | Path, finding: str, img: np.ndarray, inits: Sequence[str], out_dir: Path,
                         settings: ImageStudySettings, device: torch.device | str, *, region: np.ndarray | None = None,
                         n_train: int | None = None, on_event: OnEvent | None = None,
                         stop: threading.Event | None = None) -> list[dict[str, Any]]:
    """For each init: a probe on the manifest's labeled images (cv_repeats=1), then its Grad-CAM of `img`
    written as `<out_dir>/<k:02d>.png` (region outlined when given).

    Returns one row per init that could be loaded: init, overlay (path), probability (the probe's
    calibrated probability: Platt on its cross-validated scores, as on the Classifier page), cv_auc, empty_map, and the localization scores when `region` is given. Inits that cannot be
    loaded are skipped with a warning event. Progress: one step per init. Raises Cancelled on stop and
    RuntimeError when no init could be loaded."""
    from PIL import Image

    from engine.atomic import atomic_write
    from engine.explain.localization import is_empty, scores
    from engine.explain.overlay import overlay
    from engine.fewshot.classifier import build_classifier
    from engine.models import InitUnavailableError

    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    n = f"{n_train} images" if n_train is not None else "the labeled images"
    for k, init in enumerate(inits):
        check_stop(stop)
        emit(on_event, step=k, total=len(inits), message=f"{init}: building a probe on {n}")
        try:
            clf, est = build_classifier(manifest=manifest, finding=finding, init=init, mode="probe", device=device,
                                        image_size=settings.image_size, cv_repeats=1, seed=settings.seed, stop=stop)
        except InitUnavailableError as e:
            emit(on_event, message=f"skipping {init}: {e}", level="warning", kind="warning")
            continue
        heat, logit = classifier_heatmap(clf, img, settings.method, settings.layer)
        rgb = overlay(img, heat, region=region)
        png = atomic_write(out_dir / f"{k:02d}.png", lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))
        s = scores(heat, region) if region is not None else {}
        rows.append({"init": init, "overlay": str(png), "probability": float(clf.probability(np.array([logit]))[0]),
                     "cv_auc": est.auc, "empty_map": is_empty(heat), **{k2: float(v) for k2, v in s.items()}})
        emit(on_event, step=k + 1, total=len(inits), message=f"{init}: done")
    if not rows:
        raise RuntimeError("none of the inits could be loaded; see the Pretrain page's backbone list")
    return rows
