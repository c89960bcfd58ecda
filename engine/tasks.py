"""The app's job kinds: thin adapters from a JSON params dict + JobContext to engine functions.

`register_all(runner)` registers every kind with an `engine.jobs.JobRunner`:

    import         {source: folder|manifest|folder_tree|nih|padchest, path, images_root?}
    pretrain       {method, arch, image_size, epochs, batch_size, out_name, image_ids? | data?, seed?,
                    preset?, collapse_control? ("erank:TARGET", engine.ssl.monitor.CollapseControl)}
    classify       {finding, image_ids?, init, mode, image_size?, seed?, cv_repeats?, name?}
    sweep          {findings, inits, modes, shots, trials, image_size?, image_ids?, seed?}
    gradcam        {finding, inits?, method, layer?, shots?, n_images?, mode?, image_size?, image_ids?}
    gradcam_image  {finding, image_id, inits?, method, layer?, image_size?}
    similarity     {init, candidates, reference_path? | reference_finding?, layers?, n_images?, image_size?, grid?}
                   (engine.analysis.tasks: SVCCA of a reference set with candidate pools)

Optional `title` is shown in job lists. Each adapter exports what it needs from the store as a
manifest (the one format the engine reads),
calls the engine with `ctx.device`, `ctx.on_event`, `ctx.stop`, `ctx.resume`, records what it made
(a result row, a checkpoint index entry) and returns a small JSON-able dict for the job snapshot.
No streamlit here: jobs run in worker threads.

The first run of the app on a fresh demo workspace starts short CPU pretraining jobs (`DemoSettings`)
only when no backbone ships with the product (checkpoints/shipped/) or SCARCE_CXR_DEMO_PRETRAIN=1:
a shipped backbone makes every page useful at once.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine import paths
from engine.atomic import atomic_write_text
from engine.names import check_name, inside
from engine.store import Store

AUTOPRETRAIN_OFF_ENV = "SCARCE_CXR_NO_AUTOPRETRAIN"  # =1: never start the demo pretraining jobs (tests)
DEMO_PRETRAIN_ENV = "SCARCE_CXR_DEMO_PRETRAIN"  # =1: start the demo pretraining jobs even with a shipped backbone
DEMO_ENV = "SCARCE_CXR_DEMO"  # =1: treat the active workspace as the demo (phantom images + demo pretraining)


# ------------------------------------------------------------------------------------ import


def run_import(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Import images by path: a folder, a manifest CSV, a folder-per-class tree, NIH or PadChest; or a
    large Data-page upload staged by `Store.stage_upload` (source "upload", params `label`: [finding,
    1|0] or None), decoded here with progress instead of in the page request. Results name uploaded
    files `file <k>` (never their original names: they are stored with the job).

    Raises FileNotFoundError for a missing path or a staged upload already imported, ValueError for an
    unknown source or invalid label, Cancelled on stop and DiskFullError on a full disk (its message
    says what was imported)."""
    store = _store(ctx)
    source, path = params["source"], Path(str(params["path"])).expanduser()
    if source == "upload":
        if not path.exists():
            raise FileNotFoundError("the uploaded files of this job are gone (imported already, or removed); "
                                    "upload them again")
        label = params.get("label")
        res = store.import_staged(path, label=(str(label[0]), int(label[1])) if label else None,
                                  on_event=ctx.on_event, stop=ctx.stop)
        ok = [r for r in res if r.error is None]
        return {"images": sum(not r.duplicate for r in ok), "duplicates": sum(r.duplicate for r in ok),
                "labels": len(ok) - sum(r.label_kept for r in ok) if label else 0,
                "label_kept": sum(r.label_kept for r in ok), "regions": 0,
                "errors": [[r.name, r.error] for r in res if r.error][:500]}
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: check the path (it is read on the computer running the app)")
    if source == "folder":
        res = store.import_paths([path], on_event=ctx.on_event, stop=ctx.stop)
        ok = [r for r in res if r.error is None]
        return {"images": sum(not r.duplicate for r in ok), "duplicates": sum(r.duplicate for r in ok),
                "labels": 0, "regions": 0, "errors": [[r.name, r.error] for r in res if r.error][:500]}
    if source == "manifest":
        csv = path
    else:
        from engine.data import adapters

        out = ctx.workdir / "manifest.csv"
        if source == "folder_tree":
            csv = adapters.from_folder_tree(path, out, on_event=ctx.on_event)
        elif source == "nih":
            csv = adapters.from_nih(path, out, on_event=ctx.on_event)
        elif source == "padchest":
            root = params.get("images_root")
            csv = adapters.from_padchest(path, out, images_root=Path(root) if root else None, on_event=ctx.on_event)
        else:
            raise ValueError(f"unknown import source {source!r}; use folder, manifest, folder_tree, nih or padchest")
    s = store.import_manifest(csv, on_event=ctx.on_event, stop=ctx.stop)
    return {"images": s.images, "duplicates": s.duplicates, "labels": s.labels, "regions": s.regions,
            "findings": list(s.findings), "errors": []}


# ------------------------------------------------------------------------------------ helpers


def _store(ctx: Any) -> Store:
    if ctx.store is None:
        raise RuntimeError("this job needs the workspace store; run it through engine.jobs.JobRunner")
    return ctx.store


def _export(store: Store, ctx: Any, name: str, image_ids: list[int] | None = None,
            findings: list[str] | None = None) -> Path:
    """The job's input manifest, written once: a resumed job reads exactly the images it started with."""
    csv = ctx.workdir / name
    if ctx.resume and csv.exists():
        return csv
    return store.export_manifest(csv, image_ids=image_ids, findings=findings)


def device_label(device: Any) -> str:
    """'CPU (2 cores)' or 'NVIDIA H100 80GB HBM3 (79 GiB)'."""
    from engine.device import describe

    text = describe(device)
    return f"CPU ({os.cpu_count() or 1} cores)" if text == "CPU" else f"GPU: {text}"


# ---------------------------------------------------------------------------------- pretrain


def pretrain_config(params: dict[str, Any], n_images: int) -> Any:
    """PretrainConfig from job params (`preset`: engine/ssl/presets.py, default "paper"), with
    monitor / save intervals scaled to the run's length."""
    from engine.ssl.presets import build_config

    batch = int(params.get("batch_size", 64))
    if n_images < 2:
        raise ValueError(f"pretraining needs at least 2 images and the image set has {n_images}; import more images")
    batch = min(batch, n_images)
    epochs = int(params.get("epochs", 10))
    steps = max(1, n_images // batch) * epochs
    return build_config(
        str(params["method"]), str(params.get("preset", "paper")),
        arch=str(params.get("arch", "resnet18")), epochs=epochs, batch_size=batch,
        image_size=int(params.get("image_size", 224)), seed=int(params.get("seed", 0)),
        # about 25 collapse checks and 10 resumable saves per run, whatever its length
        monitor_every_steps=max(1, steps // 25), save_every_steps=max(1, steps // 10),
        monitor_images=max(2, min(256, n_images)),
        collapse_control=params.get("collapse_control") or None,
    )


def _pretrain_paths(store: Store, ctx: Any, image_ids: list[int] | None) -> list[str]:
    """Stored PNGs to pretrain on (test-split images left out: few-shot test images stay unseen),
    fixed at the job's first run so a resume trains on exactly the same images."""
    listing = ctx.workdir / "pretrain_images.json"
    if ctx.resume and listing.exists():
        return list(json.loads(listing.read_text()))
    df = store.images()
    if image_ids is not None:
        df = df[df["id"].isin([int(i) for i in image_ids])]
    df = df[df["split"].astype(str) != "test"]
    files = [str(f) for f in df["file"]]
    atomic_write_text(listing, json.dumps(files))
    return files


def reserve_pretrain_name(params: dict[str, Any], job_id: int, runner: Any) -> None:
    """`on_submit` of pretrain jobs: reserve `out_name` in the checkpoints folder for this job, so a
    second run with the same name is refused at once (engine.reservations). `replace: true` in the
    params gives the name to this job even when a backbone of that name exists (it is overwritten
    when the run finishes). Raises InvalidNameError / NameTakenError (ValueErrors)."""
    from engine.reservations import job_owner, reserve_checkpoint

    reserve_checkpoint(str(params.get("out_name", "")), job_owner(runner.store.workspace, job_id),
                       paths.checkpoints_dir(), replace=bool(params.get("replace", False)))


def run_pretrain(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Pretrain on the workspace's images (or `params['data']`: a manifest CSV / folder on disk)."""
    from engine.data.cache import ImageCache
    from engine.ssl.pretrain import data_fingerprint, pretrain, resolve_image_paths

    from engine.reservations import job_owner, release_checkpoint, reserve_checkpoint

    store = _store(ctx)
    out_name = check_name(params.get("out_name", ""), "checkpoint")
    owner, ckpts = job_owner(store.workspace, ctx.job_id), paths.checkpoints_dir()
    # reserved at submit; again here (a no-op for this job) so a job from before reservations, or one
    # whose name was handed to another run meanwhile, never overwrites someone else's backbone
    reserve_checkpoint(out_name, owner, ckpts, replace=bool(params.get("replace", False)))
    files = resolve_image_paths(params["data"]) if params.get("data") else _pretrain_paths(store, ctx, params.get("image_ids"))
    cfg = pretrain_config(params, len(files))
    from engine.events import as_log

    # the bar counts pretraining steps; decoding the images reports its counts in log lines only
    cache = ImageCache.build(files, size=cfg.image_size, on_event=as_log(ctx.on_event), stop=ctx.stop)
    if getattr(ctx.device, "type", "cpu") == "cpu":  # a busy machine trains far faster on fewer threads
        from engine.device import configure_cpu_threads
        from engine.events import emit

        emit(ctx.on_event, kind="log", message=configure_cpu_threads("auto", cfg.arch, cfg.image_size,
                                                                     min(cfg.batch_size, 32))[1])
    path = pretrain(cache.array, cfg, out_name, ctx.device, ctx.workdir / "ssl", on_event=ctx.on_event, stop=ctx.stop,
                    resume=ctx.resume, checkpoint_dir=ckpts,
                    data_fingerprint=data_fingerprint(list(cache.keys), cfg.image_size))
    release_checkpoint(out_name, owner, ckpts)  # exported: the file itself now holds the name
    meta = json.loads(path.with_suffix(".json").read_text())
    store.add_checkpoint(out_name, path, {k: meta.get(k) for k in ("method", "arch", "steps", "epochs", "n_images",
                                                                    "image_size", "created")}, job_id=ctx.job_id)
    return {"checkpoint": out_name, "path": str(path), "steps": meta.get("steps"), "n_images": meta.get("n_images"),
            "collapse": (meta.get("collapse") or {}).get("final", {})}


run_pretrain.on_submit = reserve_pretrain_name  # type: ignore[attr-defined]  # JobRunner.register picks it up


# ------------------------------------------------------------------------------------- sweep


def sweep_config(params: dict[str, Any]) -> Any:
    from engine.fewshot.sweep import SweepConfig

    return SweepConfig(
        findings=tuple(params["findings"]), inits=tuple(params["inits"]), modes=tuple(params.get("modes", ["probe"])),
        shots=tuple(int(k) for k in params.get("shots", (1, 5, 10, 20, 50))), trials=int(params.get("trials", 10)),
        image_size=int(params.get("image_size", 224)), seed=int(params.get("seed", 0)),
    )


def run_sweep_job(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """AUC-vs-shots sweep over the workspace's labeled images; recorded as a `sweep` result."""
    from engine.fewshot.sweep import run_sweep

    store = _store(ctx)
    cfg = sweep_config(params)
    for f in cfg.findings:
        check_name(f, "finding")
    for i in cfg.inits:
        check_name(i, "init")
    csv = _export(store, ctx, "sweep_images.csv", params.get("image_ids"), findings=list(cfg.findings))
    out = ctx.workdir / "sweep"
    res = run_sweep(csv, cfg, out, ctx.device, on_event=ctx.on_event, stop=ctx.stop, resume=ctx.resume)
    name = params.get("title") or f"{', '.join(cfg.findings)} · {len(cfg.inits)} inits · {', '.join(cfg.modes)}"
    summary = {"findings": list(cfg.findings), "inits": list(cfg.inits), "modes": list(cfg.modes),
               "shots": list(cfg.shots), "trials": cfg.trials, "image_size": cfg.image_size,
               "n_trials": int(len(res.trials)), "warnings": list(res.warnings)[:50],
               "trials_csv": str(out / "trials.csv"), "summary_csv": str(out / "summary.csv")}
    rid = store.add_result("sweep", name, out, summary, job_id=ctx.job_id)
    return {"result_id": rid, "out_dir": str(out), "n_trials": int(len(res.trials)), "warnings": summary["warnings"]}


# ---------------------------------------------------------------------------------- classify


def model_card(meta: dict[str, Any], init_info: dict[str, Any] | None = None, n_images: int | None = None) -> str:
    """A short markdown model card for a saved classifier (its metadata dict, Classifier.metadata())."""
    est = meta.get("estimate") or {}
    counts = meta.get("counts") or {}
    finding = str(meta.get("finding", "finding")).replace("_", " ")
    info = init_info or {}
    src = ""
    if info.get("method") and meta.get("init") not in ("random", "imagenet"):
        src = (f" It was pretrained with {info.get('method')} on {info.get('n_images', '?')} unlabeled images at "
               f"{info.get('image_size', '?')} px ({info.get('steps', '?')} steps).")
    mode = "a logistic-regression probe on frozen backbone features" if meta.get("mode") == "probe" \
        else "finetuning of the whole backbone with a linear head"
    lines = [
        f"# Model card: {finding} classifier",
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
    cal, op, fam = meta.get("calibration") or {}, meta.get("operating_point") or {}, meta.get("familiarity") or {}
    if cal.get("method") in ("platt", "isotonic"):
        lines[-1] = (f"- **Probabilities:** calibrated by {'Platt scaling (Platt 1999)' if cal['method'] == 'platt' else 'isotonic regression (Zadrozny & Elkan 2002)'}"
                     " on the cross-validated (out-of-fold) scores.")
        lines.append(f"- **Decision threshold:** probability >= {float(op.get('threshold', meta.get('threshold', 0.5))):.3f} "
                     f"(balanced: Youden's J on cross-validated scores); cross-validated sensitivity "
                     f"{float(op.get('sensitivity', float('nan'))):.0%}, specificity {float(op.get('specificity', float('nan'))):.0%}. "
                     "Another operating point (a target sensitivity or specificity) can be chosen on the Classifier page "
                     "or with `predict --sensitivity 0.9`.")
    if fam:
        lines.append(f"- **Unfamiliar images:** {fam.get('rule', '')}. Such images are flagged `unfamiliar` (Sun et al. "
                     "2022 nearest-neighbour rule, conformal leave-one-out threshold); the estimate does not apply to them.")
    if info.get("provenance") or info.get("shipped") or str(meta.get("init", "")).endswith("-demo"):
        prov = info.get("provenance") or ("pretrained on synthetic phantom images of the demo workspace, not real X-rays"
                                          if str(meta.get("init", "")).endswith("-demo") else "")
        if prov:
            lines.append(f"- **Backbone provenance:** {prov}.")
    if est:
        lines += [
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
    lines += [
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
    return "\n".join(lines)


def _default_classifier_name(finding: str, init: str, mode: str, stamp: str) -> str:
    """`<finding>-<init>-<mode>-<stamp>`, parts shortened so the name fits the 64-character limit."""
    name = f"{finding}-{init}-{mode}-{stamp}"
    if len(name) > 64:
        name = f"{finding[:20].rstrip('. ')}-{init[:20].rstrip('. ')}-{mode}-{stamp}"
    return name


def run_classify(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Build a classifier from labeled workspace images; save it with its model card; record a result."""
    from engine.fewshot.classifier import build_classifier
    from engine.models import list_inits

    store = _store(ctx)
    finding = check_name(params.get("finding"), "finding")
    init = check_name(params.get("init", "random"), "init")
    if params.get("name") is not None:
        check_name(params["name"], "classifier")
    ids = [int(i) for i in params["image_ids"]] if params.get("image_ids") else None
    csv = _export(store, ctx, "train.csv", ids, findings=[finding])
    mode = str(params.get("mode", "probe"))
    clf, est = build_classifier(
        manifest=csv, finding=finding, init=init, mode=mode, device=ctx.device,
        image_size=int(params.get("image_size", 224)), seed=int(params.get("seed", 0)),
        cv_repeats=int(params["cv_repeats"]) if params.get("cv_repeats") else None,  # engine default: 10 probe / 1 finetune
        on_event=ctx.on_event, stop=ctx.stop,
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = check_name(params.get("name") or _default_classifier_name(finding, init, mode, stamp), "classifier")
    folder = paths.sub(store.workspace, "results") / "classifiers"
    folder.mkdir(parents=True, exist_ok=True)
    path = clf.save(inside(folder, f"{name}.safetensors"))  # resolved and checked to stay in the folder
    info = next(({**i.info, "provenance": i.provenance} for i in list_inits() if i.name == init), {})
    meta = clf.metadata()
    card = model_card(meta, info, n_images=est.n_positive + est.n_negative)
    card_path = atomic_write_text(inside(folder, f"{name}.md"), card)
    summary = {"finding": finding, "init": init, "mode": mode, "image_size": clf.image_size,
               "counts": meta["counts"], "estimate": est.to_dict(), "threshold": clf.threshold,
               "card": str(card_path), "created": meta["created"]}
    rid = store.add_result("classifier", name, path, summary, job_id=ctx.job_id)
    return {"result_id": rid, "path": str(path), "card": str(card_path), "auc": est.auc, "ci_low": est.ci_low,
            "ci_high": est.ci_high}


# ----------------------------------------------------------------------------------- grad-cam


def available_inits(arch: str | None = None) -> list[str]:
    """Names of the inits that can be loaded here (ImageNet only when its weights file is present)."""
    from engine.models import list_inits

    return [i.name for i in list_inits(arch=arch) if i.available]


def run_gradcam_study_job(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Held-out positives of a finding explained by one k-shot classifier per init (engine.explain.study)."""
    from engine.explain.study import run_gradcam_study

    store = _store(ctx)
    finding = check_name(params.get("finding"), "finding")
    csv = _export(store, ctx, "study_images.csv", params.get("image_ids"), findings=[finding])
    inits = list(params.get("inits") or available_inits())
    out = ctx.workdir / "study"
    loc, summ, grids = run_gradcam_study(
        csv, finding, inits, out, shots=int(params.get("shots", 10)), method=str(params.get("method", "gradcam")),
        mode=str(params.get("mode", "probe")), layer=params.get("layer") or None,
        n_images=int(params.get("n_images", 4)), image_size=int(params.get("image_size", 224)),
        seed=int(params.get("seed", 0)), device=ctx.device, on_event=ctx.on_event, stop=ctx.stop,
    )
    name = params.get("title") or f"{finding} · {params.get('method', 'gradcam')} · {len(inits)} inits"
    summary = {"finding": finding, "inits": inits, "method": params.get("method", "gradcam"),
               "layer": params.get("layer"), "shots": int(params.get("shots", 10)), "images": len(grids),
               "grids": [str(g) for g in grids], "localization_csv": str(out / "localization.csv"),
               "summary_csv": str(out / "summary.csv")}
    rid = store.add_result("gradcam", name, out, summary, job_id=ctx.job_id)
    return {"result_id": rid, "out_dir": str(out), "images": len(grids)}


def run_gradcam_image_job(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """One workspace image explained by every init: a probe per init is built on the finding's other
    labeled images (the image itself is left out), then Grad-CAM on the chosen layer and method."""
    import numpy as np
    from PIL import Image

    from engine.events import check_stop, emit
    from engine.explain.gradcam import CAMExplainer, ExplainModel, explain_image
    from engine.explain.localization import is_empty, region_mask, scores
    from engine.explain.overlay import overlay
    from engine.fewshot.classifier import build_classifier
    from engine.models import InitUnavailableError

    store = _store(ctx)
    finding, image_id = check_name(params.get("finding"), "finding"), int(params["image_id"])
    method, layer = str(params.get("method", "gradcam")), str(params.get("layer") or "layer4")
    labeled = store.images(finding)
    others = [int(i) for i in labeled.loc[labeled[finding].notna() & (labeled["id"] != image_id), "id"]]
    csv = _export(store, ctx, "train.csv", others, findings=[finding])
    img = store.image_array(image_id)  # float32 HxW
    regions = [r for r in store.regions(image_id) if r["finding"] == finding]
    region = None
    if regions:
        region = np.zeros(img.shape, bool)
        for r in regions:
            if r["kind"] == "mask" and r["mask_path"]:
                with Image.open(r["mask_path"]) as im:
                    region |= np.asarray(im.convert("L")) > 127
            else:
                region |= region_mask((r["x"], r["y"], r["w"], r["h"]), img.shape)
    inits = list(params.get("inits") or available_inits())
    out = ctx.workdir / "image"
    out.mkdir(parents=True, exist_ok=True)
    original = out / "original.png"
    Image.fromarray(overlay(img, np.zeros_like(img), alpha=0.0, region=region)).save(original)
    rows: list[dict[str, Any]] = []
    for k, init in enumerate(inits):
        check_stop(ctx.stop)
        emit(ctx.on_event, step=k, total=len(inits), message=f"{init}: building a probe on {len(others)} images")
        try:
            clf, est = build_classifier(manifest=csv, finding=finding, init=init, mode="probe", device=ctx.device,
                                        image_size=int(params.get("image_size", 224)), cv_repeats=1,
                                        seed=int(params.get("seed", 0)), stop=ctx.stop)
        except InitUnavailableError as e:
            emit(ctx.on_event, message=f"skipping {init}: {e}", level="warning", kind="warning")
            continue
        model = ExplainModel(clf.backbone, clf.head.to(clf.device))
        with CAMExplainer(model, layer, method, clf.device, mean=clf.mean, std=clf.std) as ex:
            heat = explain_image(ex, img, clf.image_size)
            logit = float(ex.last_logits[0])
        png = out / f"{k:02d}.png"
        tmp = png.with_name(f".{png.name}.tmp.png")
        Image.fromarray(overlay(img, heat, region=region)).save(tmp)
        os.replace(tmp, png)
        s = scores(heat, region) if region is not None else {}
        rows.append({"init": init, "overlay": str(png), "probability": float(1 / (1 + np.exp(-logit))),
                     "cv_auc": est.auc, "empty_map": is_empty(heat), **{k2: float(v) for k2, v in s.items()}})
        emit(ctx.on_event, step=k + 1, total=len(inits), message=f"{init}: done")
    if not rows:
        raise RuntimeError("none of the inits could be loaded; see the Pretrain page's backbone list")
    return {"image_id": image_id, "finding": finding, "method": method, "layer": layer, "original": str(original),
            "region": regions[0]["kind"] if regions else "none", "n_train": len(others), "rows": rows}


# ------------------------------------------------------------------------------- registration


def register_all(runner: Any) -> None:
    """Register the app's job kinds. Pretraining always takes the runner's one "GPU" slot (two runs
    fighting over the same cores or GPU help nobody); the shorter kinds use it only when there is a
    real GPU, so on a CPU machine a clinician's classifier never waits behind a pretraining run."""
    from engine.atomic import remove_stale_temps

    remove_stale_temps(paths.checkpoints_dir())  # exports killed mid-write (the runner cleans the workspace)
    gpu = getattr(runner.device, "type", "cpu") == "cuda"
    runner.register("import", run_import, uses_gpu=False)
    runner.register("pretrain", run_pretrain, uses_gpu=True)  # its on_submit reserves the checkpoint name
    runner.register("classify", run_classify, uses_gpu=gpu)
    runner.register("sweep", run_sweep_job, uses_gpu=gpu)
    runner.register("gradcam", run_gradcam_study_job, uses_gpu=gpu)
    runner.register("gradcam_image", run_gradcam_image_job, uses_gpu=gpu)
    from engine.analysis.tasks import run_similarity_job

    runner.register("similarity", run_similarity_job, uses_gpu=gpu)  # SVCCA dataset similarity (engine.analysis)


# ------------------------------------------------------------------------------------ demo


@dataclass(frozen=True)
class DemoSettings:
    """First-run demo: short CPU pretraining so every page works end to end within ~10-15 min on a
    2-core laptop (measured: the three runs took 8.1 min on this project's 2-core machine while other
    work ran on it). Not a paper recipe: the studies pretrain for 100-800 epochs at 224 px on GPUs."""

    methods: tuple[str, ...] = ("moco_v2", "barlow_twins", "spark")
    arch: str = "resnet18"
    image_size: int = 96
    epochs: int = 30
    batch_size: int = 32
    seed: int = 0
    preset: str = "quick"  # engine/ssl/presets.py: settings for a few hundred CPU steps
    marker: str = "demo-autopretrain"  # result kind recording that the demo jobs were started once

    def params(self, method: str) -> dict[str, Any]:
        return {"method": method, "arch": self.arch, "image_size": self.image_size, "epochs": self.epochs,
                "batch_size": self.batch_size, "seed": self.seed, "preset": self.preset,
                "out_name": f"{method}-{self.arch}-demo"}


DEMO = DemoSettings()


def autopretrain_enabled() -> bool:
    return os.environ.get(AUTOPRETRAIN_OFF_ENV, "").strip().lower() not in ("1", "true", "yes")


def is_demo_workspace(workspace: Path) -> bool:
    """The default workspace (<repo>/workspace/demo) is the demo, and any workspace when
    SCARCE_CXR_DEMO=1; any other one is the user's own and starts empty."""
    if os.environ.get(DEMO_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    return workspace.resolve() == (paths.REPO_ROOT / "workspace" / "demo").resolve()


def prepare_workspace(workspace: Path) -> None:
    """Fill the demo workspace with phantom radiographs on first use (a no-op for any other workspace,
    and once the demo has images)."""
    if is_demo_workspace(workspace):
        from engine.demo import ensure_demo_workspace

        ensure_demo_workspace(workspace).close()


def start_demo_pretraining(store: Store, runner: Any, settings: DemoSettings = DEMO) -> list[int]:
    """Once per demo workspace: queue the short pretraining jobs (recorded in the store so a restart
    or a second server does not start them again; interrupted ones are resumed from the Pretrain page)."""
    if not is_demo_workspace(store.workspace) or store.results(kind=settings.marker):
        return []
    from engine.models import list_inits, shipped_inits

    if shipped_inits() and os.environ.get(DEMO_PRETRAIN_ENV, "").strip().lower() not in ("1", "true", "yes"):
        return []  # a shipped backbone already knows chest X-rays: no 15-minute wait before a useful one

    have = {i.name for i in list_inits()}
    ids = [runner.submit("pretrain", settings.params(m)) for m in settings.methods
           if settings.params(m)["out_name"] not in have]
    store.add_result(settings.marker, "demo pretraining", store.workspace, {"jobs": ids, **asdict(settings)})
    return ids
