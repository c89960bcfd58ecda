"""Job kind `import`: images by path (folder, manifest, folder tree, NIH, PadChest) or a staged upload."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.jobs.context import JobContext
from engine.tasks.common import store_of
from engine.tasks.params import ImportParams

__all__ = ["MAX_STORED_LISTED", "PUBLIC_ID_SOURCES", "run_import"]

MAX_STORED_LISTED = 20_000  # upload rows (file -> stored image id) kept in the job's result: one archive's limit
PUBLIC_ID_SOURCES = ("nih", "padchest")  # imports whose file names are public dataset ids, stored as the name


def run_import(params: ImportParams | dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Import images by path: a folder, a manifest CSV, a folder-per-class tree, NIH or PadChest; or a
    large Data-page upload staged by `Store.stage_upload` (source "upload", `label`: (finding, 1|0) or
    None), decoded here with progress instead of in the page request. Results name uploaded files
    `file <k>` (never their original names: they are stored with the job).

    Raises FileNotFoundError for a missing path or a staged upload already imported, ValueError for an
    unknown source or invalid label, Cancelled on stop and DiskFullError on a full disk (its message
    says what was imported)."""
    p = ImportParams.from_json(params)
    store = store_of(ctx)
    path = Path(p.path).expanduser()
    if p.source == "upload":
        if not path.exists():
            raise FileNotFoundError("the uploaded files of this job are gone (imported already, or removed); "
                                    "upload them again")
        res = store.import_staged(path, label=p.label, on_event=ctx.on_event, stop=ctx.stop)
        ok = [r for r in res if r.error is None]
        return {"images": sum(not r.duplicate for r in ok), "duplicates": sum(r.duplicate for r in ok),
                "labels": len(ok) - sum(r.label_kept for r in ok) if p.label else 0,
                "label_kept": sum(r.label_kept for r in ok), "regions": 0,
                "errors": [[r.name, r.error] for r in res if r.error][:500],
                # "file <k>[/member]" -> stored image id, for the page's upload report (names stay in the session)
                "stored": [[r.name, int(r.image_id), bool(r.duplicate)] for r in ok][:MAX_STORED_LISTED]}
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: check the path (it is read on the computer running the app)")
    if p.source == "folder":
        res = store.import_paths([path], on_event=ctx.on_event, stop=ctx.stop)
        ok = [r for r in res if r.error is None]
        return {"images": sum(not r.duplicate for r in ok), "duplicates": sum(r.duplicate for r in ok),
                "labels": 0, "regions": 0, "errors": [[r.name, r.error] for r in res if r.error][:500]}
    csv = path if p.source == "manifest" else _dataset_manifest(p, path, ctx)
    # NIH / PadChest file names are the datasets' public image ids (no patient data): kept, so they stay visible
    s = store.import_manifest(csv, on_event=ctx.on_event, stop=ctx.stop, keep_names=p.source in PUBLIC_ID_SOURCES)
    return {"images": s.images, "duplicates": s.duplicates, "labels": s.labels, "regions": s.regions,
            "findings": list(s.findings), "errors": []}


def _dataset_manifest(p: ImportParams, path: Path, ctx: JobContext) -> Path:
    """A manifest of a folder tree / NIH / PadChest, written to the job's workdir (engine.data.adapters)."""
    from engine.data import adapters

    out = ctx.workdir / "manifest.csv"
    if p.source == "folder_tree":
        return adapters.from_folder_tree(path, out, on_event=ctx.on_event)
    if p.source == "nih":
        return adapters.from_nih(path, out, on_event=ctx.on_event)
    if p.source == "padchest":
        root = p.images_root
        return adapters.from_padchest(path, out, images_root=Path(root) if root else None, on_event=ctx.on_event)
    raise ValueError(f"unknown import source {p.source!r}; use folder, manifest, folder_tree, nih or padchest")
