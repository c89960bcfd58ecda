"""Job kind `pretrain`: SSL pretraining on the workspace's images (or a manifest / folder on disk),
exported as a backbone checkpoint whose name is reserved from submit to export (engine.reservations)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from engine import paths
from engine.atomic import atomic_write_text
from engine.jobs.context import JobContext
from engine.names import check_name
from engine.store import Store
from engine.tasks.common import store_of
from engine.tasks.params import PretrainParams

if TYPE_CHECKING:
    import pandas as pd

    from engine.jobs.runner import JobRunner
    from engine.ssl.config import PretrainConfig

__all__ = ["pretrain_config", "pretrain_rows", "reserve_pretrain_name", "run_pretrain"]


def pretrain_config(params: PretrainParams | dict[str, Any], n_images: int) -> PretrainConfig:
    """PretrainConfig from job params (`preset`: engine/ssl/presets.py), with monitor / save intervals
    scaled to the run's length. Raises ValueError for fewer than 2 images (or invalid params)."""
    from engine.ssl.presets import build_config

    p = PretrainParams.from_json(params)
    if n_images < 2:
        raise ValueError(f"pretraining needs at least 2 images and the image set has {n_images}; import more images")
    batch = min(p.batch_size, n_images)
    steps = max(1, n_images // batch) * p.epochs
    return build_config(
        p.method, p.preset, arch=p.arch, epochs=p.epochs, batch_size=batch, image_size=p.image_size, seed=p.seed,
        # about 25 collapse checks and 10 resumable saves per run, whatever its length
        monitor_every_steps=max(1, steps // 25), save_every_steps=max(1, steps // 10),
        monitor_images=max(2, min(256, n_images)),
        collapse_control=p.collapse_control or None, init=p.init,
    )


def pretrain_rows(images: pd.DataFrame, image_ids: Iterable[int] | None = None) -> pd.DataFrame:
    """The rows of `images` (a `Store.images()` frame) that a pretraining run on the workspace trains on:
    those in `image_ids` (None: all), without the test split (few-shot test images stay unseen, also
    unlabeled). The one rule for both the job (`run_pretrain`) and the counts the app's form shows."""
    df = images
    if image_ids is not None:
        df = df[df["id"].isin([int(i) for i in image_ids])]
    return df[df["split"].astype(str) != "test"]


def _pretrain_paths(store: Store, ctx: JobContext, image_ids: tuple[int, ...] | None) -> list[str]:
    """Stored PNGs to pretrain on (`pretrain_rows`), fixed at the job's first run so a resume trains on
    exactly the same images."""
    listing = ctx.workdir / "pretrain_images.json"
    if ctx.resume and listing.exists():
        return list(json.loads(listing.read_text()))
    files = [str(f) for f in pretrain_rows(store.images(), image_ids)["file"]]
    atomic_write_text(listing, json.dumps(files))
    return files


def _online_eval_manifest(store: Store, ctx: JobContext, finding: str) -> str:
    """`MANIFEST:FINDING` of a manifest (in the job's folder) of the workspace images labeled for `finding`
    (any split: they are only evaluated on, never trained with their labels). ValueError when it is unknown."""
    import pandas as pd

    if finding not in store.findings():
        raise ValueError(f"online evaluation: the workspace has no finding {finding!r}; label it on the Data page")
    df = store.images(finding)
    df = df[df[finding].notna()]
    csv = ctx.workdir / "online_eval.csv"
    atomic_write_text(csv, pd.DataFrame({"path": df["file"], finding: df[finding].astype(int)}).to_csv(index=False))
    return f"{csv}:{finding}"


def reserve_pretrain_name(params: PretrainParams | dict[str, Any], job_id: int, runner: JobRunner) -> None:
    """`on_submit` of pretrain jobs: reserve `out_name` in the checkpoints folder for this job, so a
    second run with the same name is refused at once (engine.reservations). `replace: true` in the
    params gives the name to this job even when a backbone of that name exists (it is overwritten
    when the run finishes). Raises InvalidNameError / NameTakenError (ValueErrors)."""
    from engine.reservations import job_owner, reserve_checkpoint

    if isinstance(params, PretrainParams):
        out_name, replace = params.out_name, params.replace
    else:  # a kind registered without the params class (tests' stand-ins)
        out_name, replace = str(params.get("out_name", "")), bool(params.get("replace", False))
    reserve_checkpoint(out_name, job_owner(runner.store.workspace, job_id), paths.checkpoints_dir(), replace=replace)


def _data_record(p: PretrainParams, store: Store) -> dict[str, Any]:
    """The checkpoint json's record of the images (engine.ssl.pretrain.describe_data): a path's own, or the
    workspace's (the demo workspace holds synthetic phantoms only)."""
    from engine.ssl.pretrain import describe_data
    from engine.tasks.demo import is_demo_workspace

    if p.data:
        return describe_data(p.data)
    demo = is_demo_workspace(store.workspace)
    return describe_data(f"workspace {store.workspace}", synthetic=demo,
                         why="the demo workspace holds synthetic phantom radiographs only" if demo else "")


def run_pretrain(params: PretrainParams | dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Pretrain on the workspace's images (or `data`: a manifest CSV / folder on disk); export the
    backbone as `out_name` (its json, with the run folder inside this job's, is the checkpoint index entry).

    Raises InvalidNameError / NameTakenError before any work when the name is not this job's,
    ValueError for fewer than 2 images, Cancelled on stop (state saved for a resume)."""
    from engine.data.cache import ImageCache
    from engine.events import as_log
    from engine.reservations import job_owner, release_checkpoint, reserve_checkpoint
    from engine.ssl.pretrain import data_fingerprint, pretrain_images, resolve_image_paths

    p = PretrainParams.from_json(params)
    store = store_of(ctx)
    out_name = check_name(p.out_name, "checkpoint")
    owner, ckpts = job_owner(store.workspace, ctx.job_id), paths.checkpoints_dir()
    # reserved at submit; again here (a no-op for this job) so a job from before reservations, or one
    # whose name was handed to another run meanwhile, never overwrites someone else's backbone
    reserve_checkpoint(out_name, owner, ckpts, replace=p.replace)
    files = resolve_image_paths(p.data) if p.data else _pretrain_paths(store, ctx, p.image_ids)
    cfg = pretrain_config(p, len(files))
    if p.online_eval_finding:  # the workspace's labeled images of that finding, as a manifest the run reads
        import dataclasses

        cfg = dataclasses.replace(cfg, online_eval=_online_eval_manifest(store, ctx, p.online_eval_finding))
    if ctx.resume:  # the state's recorded settings: a preset renamed since (engine.ssl.presets.RENAMED) keeps them
        from engine.ssl.presets import resume_settings

        cfg = resume_settings(cfg, ctx.workdir / "ssl")
    # the bar counts pretraining steps; decoding the images reports its counts in log lines only
    cache = ImageCache.build(files, size=cfg.image_size, on_event=as_log(ctx.on_event), stop=ctx.stop)
    if getattr(ctx.device, "type", "cpu") == "cpu":  # a busy machine trains far faster on fewer threads
        from engine.device import configure_cpu_threads
        from engine.events import emit

        emit(ctx.on_event, kind="log", message=configure_cpu_threads("auto", cfg.arch, cfg.image_size,
                                                                     min(cfg.batch_size, 32))[1])
    path = pretrain_images(cache.array, cfg, out_name, ctx.device, ctx.workdir / "ssl", on_event=ctx.on_event,
                           stop=ctx.stop, resume=ctx.resume, checkpoint_dir=ckpts,
                           data_fingerprint=data_fingerprint(list(cache.keys), cfg.image_size),
                           data=_data_record(p, store))
    release_checkpoint(out_name, owner, ckpts)  # exported: the file itself now holds the name
    meta = json.loads(path.with_suffix(".json").read_text())
    return {"checkpoint": out_name, "path": str(path), "steps": meta.get("steps"), "n_images": meta.get("n_images"),
            "collapse": (meta.get("collapse") or {}).get("final", {})}
