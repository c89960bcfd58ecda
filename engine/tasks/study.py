"""Job kind `study` (registered by engine.tasks.register_all): the whole seed study on the workspace's
images (or paths on disk), recorded as a `study` result. No streamlit here.

Pretraining uses the workspace's images outside the test split (or `pretrain_path`); evaluation the
images labeled for `findings` (or `eval_paths`). Each pretrained method's checkpoint json (its run folder
inside this job's) is its index entry (engine.models.registry.checkpoints_made_in). A resumed job
continues the study in its work folder (engine.study.runner).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.jobs.context import JobContext
from engine.jobs.params import JobParams
from engine.names import check_name
from engine.study.config import StudyConfig

__all__ = ["StudyParams", "reserve_study_names", "run_study_job"]


_D = {f.name: f.default for f in dataclasses.fields(StudyConfig)}  # the one place the defaults live


@dataclass(frozen=True, kw_only=True)
class StudyParams(JobParams):
    """`study` job params: StudyConfig's fields and defaults, the data given as workspace choices or paths."""

    kind = "study"
    methods: tuple[str, ...] = _D["methods"]
    findings: tuple[str, ...] = _D["findings"]  # () = every finding of the evaluation images
    name: str = _D["name"]                       # checkpoint prefix: <name>-<method>
    reuse: tuple[str, ...] = ()                  # "METHOD=CHECKPOINT" entries: evaluate instead of pretraining
    pretrain_path: str | None = None             # a manifest CSV / folder; None: the workspace's images
    eval_paths: tuple[str, ...] = ()             # manifest CSVs; (): the workspace's images labeled for findings
    preset: str = _D["preset"]
    steps: int | None = _D["steps"]
    batch_size: int | None = _D["batch_size"]
    image_size: int = _D["image_size"]
    shots: tuple[int, ...] = _D["shots"]
    trials: int = _D["trials"]
    modes: tuple[str, ...] = _D["modes"]
    baselines: tuple[str, ...] = _D["baselines"]
    gradcam_images: int = _D["gradcam_images"]
    gradcam_shots: int = _D["gradcam_shots"]
    seed: int = _D["seed"]

    def validate(self) -> None:
        check_name(self.name, "checkpoint")
        for f in self.findings:
            check_name(f, "finding")
        self.reuse_pairs()  # "METHOD=CHECKPOINT" or ValueError

    def reuse_pairs(self) -> tuple[tuple[str, str], ...]:
        """`reuse` as (method, checkpoint) pairs; ValueError naming a malformed entry."""
        pairs = []
        for item in self.reuse:
            method, sep, name = item.partition("=")
            if not sep or not method.strip() or not name.strip():
                raise ValueError(f"study job parameter reuse {item!r}: write METHOD=CHECKPOINT")
            pairs.append((method.strip(), name.strip()))
        return tuple(pairs)

    def config(self, pretrain_data: str, eval_manifests: tuple[str, ...]) -> StudyConfig:
        """The engine's StudyConfig for these params and the resolved data paths (ValueError if invalid)."""
        return StudyConfig(
            pretrain_data=pretrain_data, eval_manifests=eval_manifests, methods=self.methods, findings=self.findings,
            name=self.name, preset=self.preset, steps=self.steps, batch_size=self.batch_size,
            image_size=self.image_size, shots=self.shots, trials=self.trials, modes=self.modes,
            baselines=self.baselines, reuse=self.reuse_pairs(), gradcam_images=self.gradcam_images,
            gradcam_shots=self.gradcam_shots, seed=self.seed)


def reserve_study_names(params: StudyParams | dict[str, Any], job_id: int, runner: Any) -> None:
    """`on_submit` of study jobs: reserve `<name>-<method>` of every method it pretrains for this job
    (engine.reservations), so a second study or pretraining run with those names is refused at once.
    Raises NameTakenError (a ValueError) naming the holder, or when such a backbone already exists."""
    from engine import paths
    from engine.reservations import job_owner, reserve_checkpoint

    p = StudyParams.from_json(params)
    reused = dict(p.reuse_pairs())
    for method in p.methods:
        if method not in reused:
            reserve_checkpoint(f"{p.name}-{method}", job_owner(runner.store.workspace, job_id), paths.checkpoints_dir())


def run_study_job(params: StudyParams | dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Run (or resume) the study into <workdir>/study/ and record it with the store as kind `study`.

    Raises ValueError for invalid params or a workspace without images labeled for the findings,
    NameTakenError when a checkpoint name is held by another run, Cancelled on stop (state kept)."""
    from engine import paths
    from engine.reservations import job_owner
    from engine.study.runner import run_study
    from engine.tasks.common import export_once, store_of

    p = StudyParams.from_json(params)
    store = store_of(ctx)
    pretrain = p.pretrain_path or str(export_once(store, ctx, "workspace-pretrain.csv"))
    evals = p.eval_paths
    if not evals:
        findings = list(p.findings) or store.findings()
        if not findings:
            raise ValueError("no finding is labeled in this workspace; label images on the Data page or give "
                             "manifest CSVs to evaluate on")
        evals = (str(export_once(store, ctx, "workspace.csv", findings=findings)),)
    cfg = p.config(pretrain, tuple(evals))
    ckpts = paths.checkpoints_dir()
    out = ctx.workdir / "study"
    res = run_study(cfg, out, ctx.device, on_event=ctx.on_event, stop=ctx.stop, resume=ctx.resume or out.exists(),
                    owner=job_owner(store.workspace, ctx.job_id), checkpoint_dir=ckpts)
    summary = {"config": cfg.to_dict(), "report_md": str(res.report_md), "report_html": str(res.report_html),
               "stages": res.stages}
    title = p.title or f"study · {', '.join(cfg.all_methods)} · {', '.join(cfg.findings) or 'all findings'}"
    rid = store.add_result("study", title, out, summary, job_id=ctx.job_id)
    return {"result_id": rid, "out_dir": str(out), "report": str(res.report_html)}
