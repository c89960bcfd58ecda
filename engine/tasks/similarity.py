"""Job kind `similarity` (registered by engine.tasks.register_all): SVCCA of a reference image set with
candidate pools through one backbone, recorded as a `similarity` result.

The reference is a manifest CSV / folder (`reference_path`), else the workspace's images labeled for
`reference_finding` (either value), else all workspace images. No streamlit here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.analysis.similarity import DEFAULT_GRID, DEFAULT_N_IMAGES
from engine.jobs.context import JobContext
from engine.jobs.params import JobParams
from engine.names import check_name

__all__ = ["SimilarityParams", "run_similarity_job"]


@dataclass(frozen=True, kw_only=True)
class SimilarityParams(JobParams):
    """`similarity` job params (defaults: engine.analysis.similarity's)."""

    kind = "similarity"
    init: str
    candidates: tuple[str, ...] = ()          # each a path or "NAME=path" (engine.analysis.commands.parse_set)
    reference_path: str | None = None         # a manifest CSV / folder; None: the workspace's images
    reference_finding: str | None = None      # workspace reference: only images labeled for this finding
    layers: tuple[str, ...] | None = None     # None or empty: compare_sets' default layers
    n_images: int = DEFAULT_N_IMAGES
    image_size: int | None = None             # None: the init's own input size (engine.models.input_size_for)
    grid: int = DEFAULT_GRID
    seed: int = 0

    def validate(self) -> None:
        check_name(self.init, "init")
        if not self.candidates:
            raise ValueError("give at least one candidate image set (a manifest CSV or a folder) to compare with")
        if self.reference_finding:
            check_name(self.reference_finding, "finding")


def _workspace_reference(p: SimilarityParams, ctx: JobContext) -> tuple[str, str]:
    """(name, manifest path) of the workspace's images (labeled for `reference_finding` when given)."""
    store = ctx.store
    if store is None:
        raise RuntimeError("a workspace reference needs the store; run the job through engine.jobs.JobRunner")
    finding = p.reference_finding or None
    df = store.images()
    if finding:
        if finding not in df:
            raise ValueError(f"no finding {finding!r} in this workspace; label images for it on the Data page")
        df = df[df[finding].notna()]
    if len(df) < 3:
        raise ValueError(f"the workspace has {len(df)} images{' labeled for ' + finding if finding else ''}; "
                         "SVCCA needs at least 3: import or label more images")
    reference = str(store.export_manifest(ctx.workdir / "reference.csv", image_ids=[int(i) for i in df["id"]],
                                          findings=[finding] if finding else None))
    return (f"workspace: {finding}" if finding else "workspace"), reference


def run_similarity_job(params: SimilarityParams | dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Compute the report into <workdir>/similarity/ and record it with the store as kind `similarity`.

    Raises ValueError for invalid params, too few reference images or a missing candidate set."""
    from engine.analysis.commands import parse_set
    from engine.analysis.similarity import compare_sets, set_name

    p = SimilarityParams.from_json(params)
    if p.reference_path:
        ref_name, reference = parse_set(p.reference_path)
        ref_name = ref_name or set_name(reference, "reference")
    else:
        ref_name, reference = _workspace_reference(p, ctx)
    cands: dict[str, str] = {}
    for i, c in enumerate(p.candidates, start=1):
        name, path = parse_set(c)
        base = name or set_name(path, f"set{i}")
        n, j = base, 2
        while n in cands or n == ref_name:
            n, j = f"{base}-{j}", j + 1
        cands[n] = path
    rep = compare_sets(reference, cands, init=p.init, layers=list(p.layers) if p.layers else None,
                       n_images=p.n_images, image_size=p.image_size, grid=p.grid, seed=p.seed, device=ctx.device,
                       reference_name=ref_name, on_event=ctx.on_event, stop=ctx.stop)
    out = rep.write(ctx.workdir / "similarity")
    summary = {"settings": rep.settings, "closest": rep.closest, "sentence": rep.sentence(),
               "table_csv": str(out / "table.csv"), "ranking_csv": str(out / "ranking.csv")}
    rid = None
    if ctx.store is not None:
        name = p.title or f"{ref_name} vs {', '.join(cands)} · {p.init}"
        rid = ctx.store.add_result("similarity", name, out, summary, job_id=ctx.job_id)
    return {"result_id": rid, "closest": rep.closest, "sentence": rep.sentence(), "out_dir": str(out)}
