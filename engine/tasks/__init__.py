"""The app's job kinds: thin adapters from typed params + JobContext to engine functions.

`register_all(runner)` registers every kind of `KINDS` with an `engine.jobs.JobRunner`. Each kind has
one frozen params dataclass (engine/tasks/params.py; fields, defaults and checks there) that the page
builds and the runner validates, stores as JSON and hands back to the function:

    import         ImportParams        importing.run_import
    pretrain       PretrainParams      pretrain.run_pretrain (on_submit: reserve_pretrain_name)
    classify       ClassifyParams      fewshot.run_classify
    sweep          SweepParams         fewshot.run_sweep_job
    gradcam        GradcamStudyParams  explain.run_gradcam_study_job
    gradcam_image  GradcamImageParams  explain.run_gradcam_image_job
    similarity     SimilarityParams    engine.analysis.tasks.run_similarity_job (SVCCA)
    study          StudyParams         engine.study.tasks.run_study_job (the seed study end to end)
    score_images   ScoreImagesParams   scoring.run_score_images (batch scoring CSV; validation when labeled)
    label_advice   LabelAdviceParams   scoring.run_label_advice (learning curve + "label these next")

Each adapter exports what it needs from the store as a manifest (the one format the engine reads),
calls the engine with `ctx.device`, `ctx.on_event`, `ctx.stop`, `ctx.resume`, records what it made
(a result row, a checkpoint index entry) and returns a small JSON-able dict for the job snapshot.
The functions also accept a plain dict (converted with the params class). No streamlit here: jobs run
in worker threads.

The first run of the app on a fresh demo workspace starts short CPU pretraining jobs (`DemoSettings`,
engine/tasks/demo.py) only when no backbone ships with the product (checkpoints/shipped/) or
SCARCE_CXR_DEMO_PRETRAIN=1: a shipped backbone makes every page useful at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine import paths
from engine.analysis.tasks import run_similarity_job
from engine.study.tasks import StudyParams, reserve_study_names, run_study_job
from engine.jobs.context import JobFn, OnSubmit
from engine.jobs.params import JobParams
from engine.tasks.common import available_inits, device_label
from engine.tasks.demo import (AUTOPRETRAIN_OFF_ENV, DEMO, DEMO_ENV, DEMO_PRETRAIN_ENV, DemoSettings,
                               autopretrain_enabled, is_demo_workspace, prepare_workspace, start_demo_pretraining)
from engine.tasks.explain import run_gradcam_image_job, run_gradcam_study_job
from engine.tasks.fewshot import default_classifier_name, run_classify, run_sweep_job, sweep_config
from engine.tasks.importing import run_import
from engine.tasks.model_card import model_card
from engine.tasks.params import (ClassifyParams, GradcamImageParams, GradcamStudyParams, ImportParams, PretrainParams,
                                 SimilarityParams, SweepParams)
from engine.tasks.pretrain import pretrain_config, reserve_pretrain_name, run_pretrain
from engine.tasks.scoring import LabelAdviceParams, ScoreImagesParams, run_label_advice, run_score_images

if TYPE_CHECKING:
    from engine.jobs.runner import JobRunner

__all__ = ["AUTOPRETRAIN_OFF_ENV", "DEMO", "DEMO_ENV", "DEMO_PRETRAIN_ENV", "KINDS", "ClassifyParams", "DemoSettings",
           "GradcamImageParams", "GradcamStudyParams", "ImportParams", "LabelAdviceParams", "ScoreImagesParams",
           "PretrainParams", "SimilarityParams",
           "StudyParams", "SweepParams", "TaskKind", "autopretrain_enabled", "available_inits", "default_classifier_name",
           "device_label", "is_demo_workspace", "model_card", "prepare_workspace", "pretrain_config", "register_all",
           "reserve_pretrain_name", "run_classify", "run_gradcam_image_job", "run_gradcam_study_job", "run_import",
           "run_pretrain", "run_similarity_job", "run_study_job", "run_sweep_job", "start_demo_pretraining", "sweep_config"]


@dataclass(frozen=True)
class TaskKind:
    """One job kind of the app. gpu: "always" (takes the runner's one GPU slot even on a CPU machine),
    "cuda" (only when the runner's device is a GPU) or "never"."""

    params_type: type[JobParams]
    fn: JobFn
    gpu: str
    on_submit: OnSubmit | None = None

    @property
    def name(self) -> str:
        return self.params_type.kind


# Pretraining always takes the runner's one "GPU" slot (two runs fighting over the same cores or GPU
# help nobody); the shorter kinds use it only when there is a real GPU, so on a CPU machine a
# clinician's classifier never waits behind a pretraining run.
KINDS: tuple[TaskKind, ...] = (
    TaskKind(ImportParams, run_import, "never"),
    TaskKind(PretrainParams, run_pretrain, "always", on_submit=reserve_pretrain_name),  # reserves the name
    TaskKind(ClassifyParams, run_classify, "cuda"),
    TaskKind(SweepParams, run_sweep_job, "cuda"),
    TaskKind(GradcamStudyParams, run_gradcam_study_job, "cuda"),
    TaskKind(GradcamImageParams, run_gradcam_image_job, "cuda"),
    TaskKind(SimilarityParams, run_similarity_job, "cuda"),  # SVCCA dataset similarity (engine.analysis)
    TaskKind(StudyParams, run_study_job, "always", on_submit=reserve_study_names),  # pretrains: the GPU slot
    TaskKind(ScoreImagesParams, run_score_images, "cuda"),  # batch scoring / external validation
    TaskKind(LabelAdviceParams, run_label_advice, "cuda"),  # learning curve + label-next list
)


def register_all(runner: JobRunner) -> None:
    """Register the app's job kinds (`KINDS`) with their params classes and submit checks; also
    removes temp files of checkpoint exports killed mid-write (the runner cleans the workspace)."""
    from engine.atomic import remove_stale_temps

    remove_stale_temps(paths.checkpoints_dir())
    cuda = getattr(runner.device, "type", "cpu") == "cuda"
    for k in KINDS:
        runner.register(k.name, k.fn, uses_gpu=k.gpu == "always" or (k.gpu == "cuda" and cuda),
                        on_submit=k.on_submit, params_type=k.params_type)
