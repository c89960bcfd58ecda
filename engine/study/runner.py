"""Run a study stage by stage into one folder; every stage resumable, the whole run too.

Stages, in order (one unit each on the job's bar):

    pretrain:<method>           pretrain_from_data -> checkpoint `<name>-<method>` (skipped for reused ones)
    sweep:<tag>                 run_sweep on one eval manifest: baselines + every method's checkpoint
    gradcam:<tag>:<finding>     run_gradcam_study, where the manifest has lesion boxes or masks for the
                                finding (e.g. an NIH manifest's boxes.csv from BBox_List_2017); where it
                                has none, the reason is kept in study.json's `gradcam_skipped` and reported
    report                      write_report -> report.md, report.html

`<out>/study.json` holds the settings and each finished stage. Started again with `resume=True` and
the same settings, finished stages are skipped and the running one resumes from its own state
(pretraining's state.pt, the sweep's trials.csv, the Grad-CAM study's .state/). Layout:

    <out>/study.json   <out>/runs/<method>/ (pretraining run)   <out>/pretrain/<method>.json
    <out>/sweeps/<tag>/   <out>/gradcam/<tag>/<finding>/   <out>/report.md   <out>/report.html
    <out>/.cache/      decoded images and embeddings of the pretraining and sweep stages
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.atomic import atomic_write_text
from engine.events import OnEvent, as_log, check_stop, emit
from engine.resume import check_same_settings
from engine.fewshot.modes import RECIPE_VERSION
from engine.study.config import StudyConfig, current_state, eval_tag

STUDY_VERSION = 1
CACHE_DIR = ".cache"  # <out>/.cache: the study's image and embedding caches (never the default workspace)


class StudyExistsError(ValueError):
    """The output folder already holds a study with other settings (or one not resumed)."""


@dataclass(frozen=True)
class Stage:
    """One unit of work: `kind` is pretrain | sweep | gradcam | report."""

    name: str
    kind: str
    method: str = ""
    manifest: str = ""
    tag: str = ""
    finding: str = ""


@dataclass
class StudyResult:
    """Where the study wrote its report, and each stage's record from study.json."""

    out_dir: Path
    report_md: Path
    report_html: Path
    stages: dict[str, dict[str, Any]]


def _findings_of(cfg: StudyConfig, manifests: dict[str, Any]) -> dict[str, list[str]]:
    """Findings evaluated per eval manifest; a requested finding no manifest has raises ValueError."""
    out = {p: [f for f in (cfg.findings or m.findings) if f in m.findings] for p, m in manifests.items()}
    missing = [f for f in cfg.findings if not any(f in fs for fs in out.values())]
    if missing:
        have = sorted({f for m in manifests.values() for f in m.findings})
        raise ValueError(f"finding(s) {missing} are in none of the eval manifests; they have: {', '.join(have)}")
    return out


def _has_regions(manifest: Any, finding: str) -> bool:
    return any(t is not None and len(t) and (t["finding"] == finding).any() for t in (manifest.boxes, manifest.masks))


def gradcam_skip_reason(cfg: StudyConfig, manifest: Any, finding: str) -> str | None:
    """Why the study runs no Grad-CAM for `finding` on `manifest` (None: it runs it)."""
    if not cfg.gradcam_images:
        return "Grad-CAM is off (--gradcam-images 0)"
    if _has_regions(manifest, finding):
        return None
    have = sorted({f for t in (manifest.boxes, manifest.masks) if t is not None for f in t["finding"]})
    if have:
        return (f"its boxes/masks cover {', '.join(have)} but no {finding} image, so Grad-CAM's localization "
                "could not be scored")
    return ("its manifest has no boxes.csv or masks.csv beside it, so Grad-CAM's localization could not be scored "
            "(NIH ChestX-ray14: `python -m engine data nih` writes boxes.csv when BBox_List_2017.csv is in the folder)")


def gradcam_skips(cfg: StudyConfig) -> dict[str, str]:
    """{"<tag> / <finding>": reason} for every evaluated finding the study runs no Grad-CAM for."""
    from engine.data.manifest import load_manifest

    manifests = {p: load_manifest(p) for p in cfg.eval_manifests}
    findings, out, tags = _findings_of(cfg, manifests), {}, set()
    for p in cfg.eval_manifests:
        tag = eval_tag(p, tags)
        tags.add(tag)
        for f in findings[p]:
            why = gradcam_skip_reason(cfg, manifests[p], f)
            if why:
                out[f"{tag} / {f}"] = why
    return out


def plan_stages(cfg: StudyConfig) -> list[Stage]:
    """Every stage of `cfg` in run order (loads each eval manifest; raises ManifestError / ValueError)."""
    from engine.data.manifest import load_manifest

    manifests = {p: load_manifest(p) for p in cfg.eval_manifests}
    findings = _findings_of(cfg, manifests)
    stages = [Stage(f"pretrain:{m}", "pretrain", method=m) for m in cfg.to_train]
    tags: set[str] = set()
    for p in cfg.eval_manifests:
        tag = eval_tag(p, tags)
        tags.add(tag)
        if findings[p]:
            stages.append(Stage(f"sweep:{tag}", "sweep", manifest=p, tag=tag))
        if cfg.gradcam_images:
            stages += [Stage(f"gradcam:{tag}:{f}", "gradcam", manifest=p, tag=tag, finding=f)
                       for f in findings[p] if _has_regions(manifests[p], f)]
    return stages + [Stage("report", "report")]


# ------------------------------------------------------------------------------------------ state file
def _load_state(out: Path, cfg: StudyConfig, resume: bool) -> dict[str, Any]:
    path = out / "study.json"
    if not path.exists():
        return {"version": STUDY_VERSION, "recipe_version": RECIPE_VERSION, "config": cfg.to_dict(), "stages": {},
                "created": time.time()}
    state = current_state(json.loads(path.read_text()))  # an old study's `finetune` is now `full_finetune`
    new = cfg.to_dict()
    if state.get("config") != new and not state.get("stages"):  # nothing done yet: take the new settings
        state["config"] = new
        return state
    check_same_settings(state.get("config") or {}, new, what=f"the study in {out}", error=StudyExistsError,
                        fix="Use another output folder, or the same settings to resume it")
    if not resume:
        raise StudyExistsError(f"{out} already holds this study; resume it (--resume) or use another output folder")
    return state


def _save_state(out: Path, state: dict[str, Any]) -> None:
    state["updated"] = time.time()
    atomic_write_text(out / "study.json", json.dumps(state, indent=1, default=str))


# ------------------------------------------------------------------------------------------ the run
def run_study(
    cfg: StudyConfig, out_dir: str | Path, device: torch.device | str = "cpu", *,
    on_event: OnEvent | None = None, stop: threading.Event | None = None, resume: bool = False,
    owner: str | None = None, checkpoint_dir: Path | None = None,
) -> StudyResult:
    """Run (or resume) every stage of `cfg` into `out_dir`; returns the report paths and stage records.

    owner: who reserves the checkpoint names (engine.reservations; e.g. `process_owner()` on the CLI,
    `job_owner(ws, id)` in the app); None reserves nothing. checkpoint_dir: where checkpoints are
    exported and looked up (default engine.paths.checkpoints_dir()).
    Raises StudyExistsError (a ValueError) for an existing folder with other settings or without
    `resume`; ValueError / UnknownInitError for unknown findings, methods or reused checkpoints
    before any work; engine.reservations.NameTakenError when a checkpoint name is held elsewhere;
    `Cancelled` when `stop` is set (the running stage saves its state first).
    """
    from engine.paths import checkpoints_dir

    out = Path(out_dir)
    ckpts = Path(checkpoint_dir) if checkpoint_dir is not None else checkpoints_dir()
    stages = plan_stages(cfg)
    reused = _reused_infos(cfg, ckpts)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out, cfg, resume)
    state["gradcam_skipped"] = gradcam_skips(cfg)
    for where, why in state["gradcam_skipped"].items():
        emit(on_event, kind="warning", level="warning", message=f"no Grad-CAM for {where}: {why}")
    _save_state(out, state)
    for method, name in cfg.reuse:  # pretrain/<method>.json from the checkpoint's json, for the report
        _write_record(out, method, {**reused[name], "name": name, "reused": True})
    total = len(stages)
    for i, stage in enumerate(stages):
        check_stop(stop)
        # the report is cheap and describes the folder as it is now: written again on every run
        done = stage.kind != "report" and state["stages"].get(stage.name, {}).get("status") == "done"
        emit(on_event, step=i, total=total, message=f"study: {stage.name}" + (" (done before)" if done else ""))
        if done:
            continue
        t0 = time.time()
        record = _RUNNERS[stage.kind](cfg, stage, out, torch.device(device), ckpts, as_log(on_event), stop, owner)
        state["stages"][stage.name] = {"status": "done", "seconds": round(time.time() - t0, 1), **record}
        _save_state(out, state)
    emit(on_event, step=total, total=total, kind="result", message=f"study finished: {out / 'report.html'}")
    return StudyResult(out, out / "report.md", out / "report.html", state["stages"])


def _reused_infos(cfg: StudyConfig, ckpts: Path) -> dict[str, dict[str, Any]]:
    """{checkpoint name: its json} of every reused checkpoint; UnknownInitError naming the valid ones."""
    from engine.models.registry import UnknownInitError, list_inits

    infos = {i.name: i.info for i in list_inits(ckpts)}
    for method, name in cfg.reuse:
        if name not in infos:
            raise UnknownInitError(f"--reuse {method}={name}: no checkpoint {name!r} in {ckpts}; "
                                   f"valid: {', '.join(sorted(infos))}")
    return {name: infos[name] for _, name in cfg.reuse}


def _write_record(out: Path, method: str, meta: dict[str, Any]) -> None:
    keep = {k: meta.get(k) for k in ("name", "method", "arch", "steps", "epochs", "n_images", "image_size",
                                     "train_seconds", "loss", "collapse", "config", "device", "reused")}
    atomic_write_text(out / "pretrain" / f"{method}.json", json.dumps(keep, indent=1, default=str))


def _pretrain_config(cfg: StudyConfig, method: str, n: int, on_event: OnEvent | None) -> Any:
    """The method's PretrainConfig: the preset with the study's size, seed, steps and batch; the batch
    (and the monitor's image count) capped at the `n` pretraining images, as the app's pretrain job."""
    from engine.ssl.presets import build_config

    batch = build_config(method, cfg.preset).batch_size if cfg.batch_size is None else cfg.batch_size
    if batch > n:
        emit(on_event, kind="log", message=f"{method}: batch {batch} capped at the {n} pretraining images")
    return build_config(method, cfg.preset, image_size=cfg.image_size, seed=cfg.seed, max_steps=cfg.steps,
                        batch_size=max(2, min(batch, n)), monitor_images=max(2, min(256, n)))


def _pretrain(cfg: StudyConfig, stage: Stage, out: Path, device, ckpts: Path, on_event, stop, owner) -> dict:
    from engine.reservations import NameTakenError, release_checkpoint, reserve_checkpoint
    from engine.ssl.pretrain import pretrain_from_data, resolve_image_paths

    name = cfg.checkpoint(stage.method)
    run_dir = out / "runs" / stage.method
    resuming = (run_dir / "state.pt").exists()
    if owner is not None:
        try:
            reserve_checkpoint(name, owner, ckpts, replace=resuming)
        except NameTakenError as e:
            raise NameTakenError(f"{e.args[0].split(';')[0]}; give this study another checkpoint prefix (--name), "
                                 f"or --reuse {stage.method}={name} to evaluate that backbone") from None
    files = resolve_image_paths(cfg.pretrain_data)  # listed once: counted for the batch, then trained on
    pcfg = _pretrain_config(cfg, stage.method, len(files), on_event)
    if resuming:  # the state's recorded settings: a preset renamed since (engine.ssl.presets.RENAMED) keeps them
        from engine.ssl.presets import resume_settings

        pcfg = resume_settings(pcfg, run_dir)
    path = pretrain_from_data(files, pcfg, name, device, run_dir=run_dir, on_event=on_event,
                              stop=stop, resume=resuming, checkpoint_dir=ckpts, cache_dir=out / CACHE_DIR / "cache")
    if owner is not None:
        release_checkpoint(name, owner, ckpts)
    _write_record(out, stage.method, {**json.loads(path.with_suffix(".json").read_text()), "reused": False})
    return {"checkpoint": name}


def _sweep(cfg: StudyConfig, stage: Stage, out: Path, device, ckpts: Path, on_event, stop, owner) -> dict:
    from engine.data.manifest import load_manifest
    from engine.fewshot.sweep import SweepConfig, run_sweep

    have = load_manifest(stage.manifest).findings
    findings = tuple(f for f in (cfg.findings or have) if f in have)
    inits = tuple(dict.fromkeys([*cfg.baselines, *(cfg.checkpoint(m) for m in cfg.all_methods)]))
    scfg = SweepConfig(findings=findings, inits=inits, modes=cfg.modes, shots=cfg.shots, trials=cfg.trials,
                       image_size=cfg.image_size, seed=cfg.seed)
    sweep_dir = out / "sweeps" / stage.tag
    res = run_sweep(stage.manifest, scfg, sweep_dir, device, on_event=on_event, stop=stop,
                    resume=(sweep_dir / "config.json").exists(), cache_dir=out / CACHE_DIR)
    return {"trials": int(len(res.trials)), "warnings": list(res.warnings)}


def _gradcam(cfg: StudyConfig, stage: Stage, out: Path, device, ckpts: Path, on_event, stop, owner) -> dict:
    from engine.explain.study import run_gradcam_study
    from engine.models.registry import list_inits

    available = {i.name for i in list_inits(ckpts) if i.available}
    inits = [i for i in dict.fromkeys([*cfg.baselines, *(cfg.checkpoint(m) for m in cfg.all_methods)])
             if i in available]
    shots = _feasible_shots(cfg, out / "sweeps" / stage.tag / "summary.csv", stage.finding)
    if shots < cfg.gradcam_shots:
        emit(on_event, kind="log", message=f"Grad-CAM on {stage.finding}: {shots} shots (the largest the sweep "
                                           f"could draw; {cfg.gradcam_shots} asked)")
    loc, _, grids = run_gradcam_study(
        stage.manifest, stage.finding, inits, out / "gradcam" / stage.tag / stage.finding,
        shots=shots, mode=cfg.gradcam_mode, n_images=cfg.gradcam_images,
        image_size=cfg.image_size, seed=cfg.seed, device=device, on_event=on_event, stop=stop, checkpoint_dir=ckpts,
        cache_dir=out / CACHE_DIR)
    return {"rows": int(len(loc)), "grids": len(grids), "shots": shots}


def _feasible_shots(cfg: StudyConfig, summary_csv: Path, finding: str) -> int:
    """cfg.gradcam_shots, capped at the largest shot count the sweep ran for `finding` (same episode
    sampler, so a classifier with that many images per class can be trained); uncapped without a sweep."""
    import pandas as pd

    if not summary_csv.exists():
        return cfg.gradcam_shots
    s = pd.read_csv(summary_csv)
    ok = s[(s["finding"] == finding) & (s["status"] == "ok")]["shots"].dropna()
    return min(cfg.gradcam_shots, int(ok.max())) if len(ok) else cfg.gradcam_shots


def _report(cfg: StudyConfig, stage: Stage, out: Path, device, ckpts: Path, on_event, stop, owner) -> dict:
    from engine.study.report import write_report

    md, html = write_report(out)
    return {"report": md.name, "html": html.name}


_RUNNERS = {"pretrain": _pretrain, "sweep": _sweep, "gradcam": _gradcam, "report": _report}
