"""Job kinds `sweep` (the AUC-vs-shots benchmark) and `classify` (a clinician's classifier with its
model card), over the workspace's labeled images."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from engine import paths
from engine.atomic import atomic_write_text
from engine.jobs.context import JobContext
from engine.names import check_name, inside
from engine.tasks.common import export_once, store_of
from engine.tasks.model_card import model_card
from engine.tasks.params import ClassifyParams, SweepParams

if TYPE_CHECKING:
    import pandas as pd

    from engine.fewshot.sweep import SweepConfig

__all__ = ["default_classifier_name", "partial_sweep_trials", "run_classify", "run_sweep_job", "sweep_config"]

SWEEP_DIR = "sweep"  # the sweep job's output folder inside its work folder


def sweep_config(params: SweepParams | dict[str, Any]) -> SweepConfig:
    """The engine's SweepConfig of sweep job params. Raises ValueError for invalid params."""
    return SweepParams.from_json(params).config()


def run_sweep_job(params: SweepParams | dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """AUC-vs-shots sweep over the workspace's labeled images; recorded as a `sweep` result."""
    from engine.fewshot.sweep import run_sweep

    p = SweepParams.from_json(params)
    store = store_of(ctx)
    cfg = p.config()
    csv = export_once(store, ctx, "sweep_images.csv", None if p.image_ids is None else list(p.image_ids),
                      findings=list(cfg.findings))
    out = ctx.workdir / SWEEP_DIR
    res = run_sweep(csv, cfg, out, ctx.device, on_event=ctx.on_event, stop=ctx.stop, resume=ctx.resume,
                    cache_dir=store.workspace)  # the workspace's image and embedding caches, shared by its jobs
    name = p.title or f"{', '.join(cfg.findings)} · {len(cfg.inits)} inits · {', '.join(cfg.modes)}"
    summary = {"findings": list(cfg.findings), "inits": list(cfg.inits), "modes": list(cfg.modes),
               "shots": list(cfg.shots), "trials": cfg.trials, "image_size": cfg.image_size,
               "input_sizes": res.input_sizes,  # the size each init ran at (engine.fewshot.sizes)
               "n_trials": int(len(res.trials)), "warnings": list(res.warnings)[:50],
               "trials_csv": str(out / "trials.csv"), "summary_csv": str(out / "summary.csv")}
    rid = store.add_result("sweep", name, out, summary, job_id=ctx.job_id)
    return {"result_id": rid, "out_dir": str(out), "n_trials": int(len(res.trials)), "warnings": summary["warnings"]}


def partial_sweep_trials(runner: Any, job_id: int) -> pd.DataFrame | None:
    """The trials a (running) sweep job has finished so far: its trials.csv (written atomically after each
    group of trials), None before the first group or when it cannot be read. `runner`: the JobRunner
    that knows the job's work folder; pages call this instead of reading that folder."""
    import pandas as pd

    path = runner.workdir(job_id) / SWEEP_DIR / "trials.csv"
    try:
        trials = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError, OSError):
        return None
    return trials if len(trials) else None


def default_classifier_name(finding: str, init: str, mode: str, stamp: str) -> str:
    """`<finding>-<init>-<mode>-<stamp>`, parts shortened so the name fits the 64-character limit."""
    name = f"{finding}-{init}-{mode}-{stamp}"
    if len(name) > 64:
        name = f"{finding[:20].rstrip('. ')}-{init[:20].rstrip('. ')}-{mode}-{stamp}"
    return name


def _predictive(clf) -> list[dict[str, Any]]:
    """PPV/NPV at the saved (Youden) operating point at 5%, 10%, 20% and the training prevalence."""
    from engine.fewshot.classifier.operating import predictive_at

    op, rep = clf.operating_point_replicates("youden")
    if rep is None:
        return []
    qs = sorted({0.05, 0.1, 0.2, round(clf.training_prevalence, 4)})
    return [predictive_at(op, rep, q).to_dict() for q in qs if 0 < q < 1]


def _row_ids(store, csv, finding: str) -> list[int | None]:
    """Workspace image id of each row of the exported manifest `csv` labeled for `finding`: the classifier's
    cross-validation rows, in order (None for a row whose file is not found)."""
    import pandas as pd

    imgs = store.images()
    ids = {str(f): int(i) for f, i in zip(imgs["file"], imgs["id"])}
    df = pd.read_csv(csv)
    return [ids.get(str(f)) for f in df.loc[df[finding].notna(), "path"]]


def run_classify(params: ClassifyParams | dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Build a classifier from labeled workspace images; save it with its model card; record a result.

    Raises InvalidNameError (before any work) for a finding, init or name that is not a safe name."""
    from engine.fewshot.classifier import build_classifier
    from engine.models import list_inits

    p = ClassifyParams.from_json(params)
    store = store_of(ctx)
    ids = list(p.image_ids) if p.image_ids else None
    csv = export_once(store, ctx, "train.csv", ids, findings=[p.finding])
    clf, est = build_classifier(
        manifest=csv, finding=p.finding, init=p.init, mode=p.mode, device=ctx.device, image_size=p.image_size,
        seed=p.seed, cv_repeats=p.cv_repeats or None,  # None: engine default, 10 probe / 1 finetune
        on_event=ctx.on_event, stop=ctx.stop,
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = check_name(p.name or default_classifier_name(p.finding, p.init, p.mode, stamp), "classifier")
    folder = paths.sub(store.workspace, "results") / "classifiers"
    folder.mkdir(parents=True, exist_ok=True)
    path = clf.save(inside(folder, f"{name}.safetensors"))  # resolved and checked to stay in the folder
    info = next(({**i.info, "provenance": i.provenance, "kind": i.kind} for i in list_inits() if i.name == p.init), {})
    meta = clf.metadata()
    card = model_card(meta, info, n_images=est.n_positive + est.n_negative, predictive=_predictive(clf))
    card_path = atomic_write_text(inside(folder, f"{name}.md"), card)
    summary = {"finding": p.finding, "init": p.init, "mode": p.mode, "image_size": clf.image_size,
               "counts": meta["counts"], "estimate": est.to_dict(), "threshold": clf.threshold,
               "card": str(card_path), "created": meta["created"], "usable": meta["usability"]["usable"],
               "unusable_reasons": meta["usability"]["reasons"], "comparison": bool(p.comparison),
               "image_ids": _row_ids(store, csv, p.finding)}  # the CV rows' workspace images (error analysis thumbnails)
    rid = store.add_result("classifier", name, path, summary, job_id=ctx.job_id)
    return {"result_id": rid, "path": str(path), "card": str(card_path), "auc": est.auc, "ci_low": est.ci_low,
            "ci_high": est.ci_high}
