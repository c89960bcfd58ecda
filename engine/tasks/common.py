"""Helpers shared by the job kinds: the store of a context, a job's input manifest, labels of devices."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine.jobs.context import JobContext
from engine.store import Store

if TYPE_CHECKING:
    import torch

__all__ = ["available_inits", "device_label", "export_once", "store_of"]


def store_of(ctx: JobContext) -> Store:
    """The workspace store of a job. Raises RuntimeError when the job was run without one."""
    if ctx.store is None:
        raise RuntimeError("this job needs the workspace store; run it through engine.jobs.JobRunner")
    return ctx.store


def export_once(store: Store, ctx: JobContext, name: str, image_ids: list[int] | None = None,
                findings: list[str] | None = None) -> Path:
    """The job's input manifest `<workdir>/<name>`, written once: a resumed job reads exactly the
    images it started with."""
    csv = ctx.workdir / name
    if ctx.resume and csv.exists():
        return csv
    return store.export_manifest(csv, image_ids=image_ids, findings=findings)


def device_label(device: torch.device | str) -> str:
    """'CPU (2 cores)' or 'NVIDIA H100 80GB HBM3 (79 GiB)'."""
    from engine.device import describe

    text = describe(device)
    return f"CPU ({os.cpu_count() or 1} cores)" if text == "CPU" else f"GPU: {text}"


def available_inits(arch: str | None = None) -> list[str]:
    """Names of the inits that can be loaded here (ImageNet only when its weights file is present)."""
    from engine.models import list_inits

    return [i.name for i in list_inits(arch=arch) if i.available]
