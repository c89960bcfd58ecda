"""Job kinds `gradcam` (the Grad-CAM study of a finding's held-out positives) and `gradcam_image`
(one workspace image explained by every init)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.jobs.context import JobContext
from engine.tasks.common import available_inits, export_once, store_of
from engine.tasks.params import GradcamImageParams, GradcamStudyParams

__all__ = ["run_gradcam_image_job", "run_gradcam_study_job"]


def run_gradcam_study_job(params: GradcamStudyParams | dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Held-out positives of a finding explained by one k-shot classifier per init (engine.explain.study)."""
    from engine.explain.study import run_gradcam_study

    p = GradcamStudyParams.from_json(params)
    store = store_of(ctx)
    csv = export_once(store, ctx, "study_images.csv", None if p.image_ids is None else list(p.image_ids),
                      findings=[p.finding])
    inits = list(p.inits or available_inits())
    out = ctx.workdir / "study"
    imgs = store.images(p.finding)  # grids and rows carry the stored names (image-000042), as every page shows
    shown = tuple((str(Path(f).resolve()), str(n)) for f, n in zip(imgs["file"], imgs["name"]))
    loc, summ, grids = run_gradcam_study(
        csv, p.finding, inits, out, shots=p.shots, method=p.method, mode=p.mode, layer=p.layer or None,
        n_images=p.n_images, image_size=p.image_size, seed=p.seed, device=ctx.device, on_event=ctx.on_event,
        stop=ctx.stop, cache_dir=store.workspace, image_names=shown,  # the workspace's image and embedding caches
    )
    name = p.title or f"{p.finding} · {p.method} · {len(inits)} inits"
    summary = {"finding": p.finding, "inits": inits, "method": p.method, "layer": p.layer, "shots": p.shots,
               "image_size": p.image_size,
               "images": len(grids), "grids": [str(g) for g in grids],
               "localization_csv": str(out / "localization.csv"), "summary_csv": str(out / "summary.csv")}
    rid = store.add_result("gradcam", name, out, summary, job_id=ctx.job_id)
    return {"result_id": rid, "out_dir": str(out), "images": len(grids)}


def run_gradcam_image_job(params: GradcamImageParams | dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """One workspace image explained by every init: a probe per init is built on the finding's other
    labeled images (the image itself is left out), then Grad-CAM on the chosen layer and method
    (engine.explain.single_image.explain_across_inits)."""
    import numpy as np
    from PIL import Image

    from engine.explain.overlay import overlay
    from engine.explain.single_image import ImageStudySettings, explain_across_inits, region_from_rows

    p = GradcamImageParams.from_json(params)
    store = store_of(ctx)
    layer = p.layer or "layer4"
    labeled = store.images(p.finding)
    others = [int(i) for i in labeled.loc[labeled[p.finding].notna() & (labeled["id"] != p.image_id), "id"]]
    csv = export_once(store, ctx, "train.csv", others, findings=[p.finding])
    img = store.image_array(p.image_id)  # float32 HxW
    regions = [r for r in store.regions(p.image_id) if r["finding"] == p.finding]
    region = region_from_rows(regions, img.shape)
    out = ctx.workdir / "image"
    out.mkdir(parents=True, exist_ok=True)
    original = out / "original.png"
    Image.fromarray(overlay(img, np.zeros_like(img), alpha=0.0, region=region)).save(original)
    rows = explain_across_inits(csv, p.finding, img, list(p.inits or available_inits()), out,
                                ImageStudySettings(method=p.method, layer=layer, image_size=p.image_size, seed=p.seed),
                                ctx.device, region=region, n_train=len(others), on_event=ctx.on_event, stop=ctx.stop)
    return {"image_id": p.image_id, "finding": p.finding, "method": p.method, "layer": layer, "image_size": p.image_size,
            "original": str(original), "region": regions[0]["kind"] if regions else "none", "n_train": len(others),
            "rows": rows}
