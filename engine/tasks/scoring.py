"""Job kinds `score_images` (batch scoring, and external validation when the images are labeled) and
`label_advice` (learning curve + "label these next"), over a saved classifier / the workspace's images.

    score_images   ScoreImagesParams   run_score_images   -> result kind "scores"
    label_advice   LabelAdviceParams   run_label_advice   -> result kind "label_advice"

Both report progress, stop on cancel (ctx.stop) and write their files under the job's workdir.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.jobs.context import JobContext
from engine.jobs.params import JobParams
from engine.names import check_name
from engine.tasks.common import store_of

__all__ = ["LabelAdviceParams", "ScoreImagesParams", "run_label_advice", "run_score_images"]


@dataclass(frozen=True, kw_only=True)
class ScoreImagesParams(JobParams):
    """`score_images`: every image of a folder / ZIP, or the given workspace images, through a saved classifier.
    With `finding` and workspace images labeled for it, the labeled ones also give a validation report."""

    kind = "score_images"
    classifier: str                      # the classifier file (a workspace result's path)
    source: str | None = None            # a folder or ZIP archive of images
    image_ids: tuple[int, ...] | None = None  # workspace images instead of `source`
    finding: str | None = None           # validate against the workspace labels of this finding
    threshold: float | None = None       # None: the classifier's operating point
    name: str | None = None              # the result's name (default: from the classifier and the source)

    def validate(self) -> None:
        if (self.source is None) == (self.image_ids is None):
            raise ValueError("give either a folder / ZIP of images or workspace image ids to score")
        if self.finding is not None:
            check_name(self.finding, "finding")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1]; got {self.threshold}")


def _workspace_items(store, ids: tuple[int, ...], finding: str | None) -> tuple[list, np.ndarray | None]:
    """(name, path) items of workspace images and their labels for `finding` (NaN unknown; None without)."""
    df = store.images(finding) if finding else store.images()
    df = df[df["id"].isin(ids)]
    items = [(str(n), Path(f)) for n, f in zip(df["name"], df["file"])]
    return items, (df[finding].to_numpy(dtype=np.float64) if finding else None)


def run_score_images(params: ScoreImagesParams | dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Score the images; write scores.csv (and validation.json for labeled images); record a `scores` result."""
    from engine.fewshot.classifier import Classifier
    from engine.fewshot.classifier.scoring import count_source, iter_source, score_items, write_scores_csv
    from engine.fewshot.classifier.validation import report_from_rows

    p = ScoreImagesParams.from_json(params)
    store = store_of(ctx)
    clf = Classifier.load(p.classifier, device=ctx.device)
    report = None
    if p.image_ids is not None:
        items, y = _workspace_items(store, p.image_ids, p.finding)
        rows = score_items(clf, items, p.threshold, len(items), ctx.on_event, ctx.stop)
        labeled = [i for i in range(len(items)) if y is not None and np.isfinite(y[i])]
        try:  # the labeled images: a validation report (unless a class is missing once training images are out)
            report = report_from_rows(clf, [rows[i] for i in labeled], y[labeled], p.threshold) if labeled else None
        except ValueError as e:
            ctx.log(f"no validation report: {e}", level="warning")
    else:
        rows = score_items(clf, iter_source(p.source), p.threshold, count_source(p.source), ctx.on_event, ctx.stop)
    csv = write_scores_csv(rows, ctx.workdir / "scores.csv")
    t = clf.threshold if p.threshold is None else p.threshold
    summary = {"classifier": p.classifier, "finding": clf.finding, "threshold": t, "csv": str(csv),
               "images": len(rows), "errors": sum(r.error is not None for r in rows),
               "likely": sum(r.probability is not None and r.probability >= t for r in rows),
               "unfamiliar": sum(bool(r.unfamiliar) for r in rows),
               "training_images": sum(r.training_image for r in rows),
               "validation": report.to_dict() if report is not None else None}
    name = p.name or f"{Path(p.classifier).stem} on {len(rows)} images"
    rid = store.add_result("scores", name, ctx.workdir, summary, job_id=ctx.job_id)
    return {"result_id": rid, "csv": str(csv), "images": len(rows),
            "auc": report.auc if report is not None else None}


@dataclass(frozen=True, kw_only=True)
class LabelAdviceParams(JobParams):
    """`label_advice`: the learning curve of the labeled images and the unlabeled ones to label next."""

    kind = "label_advice"
    finding: str
    init: str
    image_ids: tuple[int, ...] | None = None  # the labeled images (None or empty: all labeled for the finding)
    image_size: int | None = None        # None: the init's own input size
    k: int = 10                          # images to suggest
    extra: int = 20                      # the extrapolation's added images
    repeats: int = 5                     # subsets per learning-curve point
    seed: int = 0

    def validate(self) -> None:
        check_name(self.finding, "finding")
        check_name(self.init, "init")
        if not 1 <= self.k <= 200 or not 1 <= self.extra <= 10_000 or not 2 <= self.repeats <= 50:
            raise ValueError("k must be 1-200, extra 1-10000 and repeats 2-50")


def _features(init: str, files: list[str], size: int | None, ctx: JobContext) -> np.ndarray:
    from engine.data.cache import ImageCache
    from engine.events import as_log
    from engine.fewshot.features import embed
    from engine.models import input_size_for

    size = size or input_size_for(init, ctx.device)
    cache = ImageCache.build(files, size, on_event=as_log(ctx.on_event), stop=ctx.stop)
    return embed(init, cache, ctx.device, on_event=as_log(ctx.on_event), stop=ctx.stop)


def run_label_advice(params: LabelAdviceParams | dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Embed the finding's labeled and unlabeled workspace images once; learning curve (engine.fewshot.learning_curve)
    and suggestions (engine.fewshot.active); record a `label_advice` result."""
    from engine.fewshot.active import DEFAULT_RULE, suggest
    from engine.fewshot.learning_curve import learning_curve

    p = LabelAdviceParams.from_json(params)
    store = store_of(ctx)
    df = store.images(p.finding)
    lab = df[df[p.finding].notna()]
    if p.image_ids:
        lab = lab[lab["id"].isin(p.image_ids)]
    unl = df[df[p.finding].isna()]
    X = _features(p.init, list(lab["file"]) + list(unl["file"]), p.image_size, ctx)
    X_lab, X_unl, y = X[:len(lab)], X[len(lab):], lab[p.finding].to_numpy(dtype=np.float64)
    curve = learning_curve(X_lab, y, repeats=p.repeats, extra=p.extra, seed=p.seed, on_event=ctx.on_event,
                           stop=ctx.stop)
    picks = suggest(X_lab, y, X_unl, p.k, p.seed) if len(unl) else []
    ids = unl["id"].to_numpy()
    summary = {"finding": p.finding, "init": p.init, "n_labeled": int(len(lab)), "n_unlabeled": int(len(unl)),
               "curve": curve.to_dict(),
               "suggestions": [{"image_id": int(ids[s.index]), "probability": s.probability, "margin": s.margin,
                                "distance": s.distance} for s in picks],
               "rule": f"{DEFAULT_RULE} (engine.fewshot.active)"}
    rid = store.add_result("label_advice", f"{p.finding}: label advice ({p.init})", ctx.workdir, summary,
                           job_id=ctx.job_id)
    return {"result_id": rid, "sentence": summary["curve"]["sentence"], "suggested": len(picks)}
