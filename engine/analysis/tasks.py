"""Job kind `similarity` (registered by engine.tasks.register_all): SVCCA of a reference image set with
candidate pools through one backbone, recorded as a `similarity` result.

params: {init, candidates: [path | "NAME=path", ...], reference_path? | reference_finding?,
         layers?, n_images?, image_size?, grid?, seed?, title?}

The reference is a manifest CSV / folder (`reference_path`), else the workspace's images labeled for
`reference_finding` (either value), else all workspace images. No streamlit here.
"""
from __future__ import annotations

from typing import Any


def run_similarity_job(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Compute the report into <workdir>/similarity/ and record it with the store as kind `similarity`."""
    from engine.analysis.commands import parse_set
    from engine.analysis.similarity import DEFAULT_GRID, DEFAULT_N_IMAGES, compare_sets, set_name
    from engine.names import check_name

    init = str(params["init"])
    check_name(init, "init")
    cands_in = [str(c) for c in params.get("candidates") or []]
    if not cands_in:
        raise ValueError("give at least one candidate image set (a manifest CSV or a folder) to compare with")
    store = ctx.store
    if params.get("reference_path"):
        ref_name, reference = parse_set(str(params["reference_path"]))
        ref_name = ref_name or set_name(reference, "reference")
    else:
        if store is None:
            raise RuntimeError("a workspace reference needs the store; run the job through engine.jobs.JobRunner")
        finding = params.get("reference_finding") or None
        df = store.images()
        if finding:
            check_name(finding, "finding")
            if finding not in df:
                raise ValueError(f"no finding {finding!r} in this workspace; label images for it on the Data page")
            df = df[df[finding].notna()]
        if len(df) < 3:
            raise ValueError(f"the workspace has {len(df)} images{' labeled for ' + finding if finding else ''}; "
                             "SVCCA needs at least 3: import or label more images")
        reference = str(store.export_manifest(ctx.workdir / "reference.csv", image_ids=[int(i) for i in df["id"]],
                                              findings=[finding] if finding else None))
        ref_name = f"workspace: {finding}" if finding else "workspace"
    cands: dict[str, str] = {}
    for i, c in enumerate(cands_in, start=1):
        name, path = parse_set(c)
        base = name or set_name(path, f"set{i}")
        n, j = base, 2
        while n in cands or n == ref_name:
            n, j = f"{base}-{j}", j + 1
        cands[n] = path
    layers = params.get("layers") or None
    rep = compare_sets(reference, cands, init=init, layers=layers, n_images=int(params.get("n_images", DEFAULT_N_IMAGES)),
                       image_size=int(params.get("image_size", 224)), grid=int(params.get("grid", DEFAULT_GRID)),
                       seed=int(params.get("seed", 0)), device=ctx.device, reference_name=ref_name,
                       on_event=ctx.on_event, stop=ctx.stop)
    out = rep.write(ctx.workdir / "similarity")
    summary = {"settings": rep.settings, "closest": rep.closest, "sentence": rep.sentence(),
               "table_csv": str(out / "table.csv"), "ranking_csv": str(out / "ranking.csv")}
    rid = None
    if store is not None:
        name = params.get("title") or f"{ref_name} vs {', '.join(cands)} · {init}"
        rid = store.add_result("similarity", name, out, summary, job_id=ctx.job_id)
    return {"result_id": rid, "closest": rep.closest, "sentence": rep.sentence(), "out_dir": str(out)}
