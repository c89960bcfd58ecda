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
    similarity     SimilarityParams    similarity.run_similarity_job (SVCCA, engine.analysis)
    study          StudyParams         study.run_study_job (the seed study end to end, engine.study)
    score_images   ScoreImagesParams   scoring.run_score_images (batch scoring CSV; validation when labeled)
    label_advice   LabelAdviceParams   scoring.run_label_advice (learning curve + "label these next")

Each kind's facts live in its `TaskKind` (the one place a job kind is described): what the app calls it
(`label`), what its progress bar counts (`unit`), whether a stopped job continues from a saved state
(`resumes`), the store result kind it records (`result_kind`) and the page that starts and shows it
(`page`). ui.jobs reads them through `kind_of(name)`.

Each adapter exports what it needs from the store as a manifest (the one format the engine reads),
calls the engine with `ctx.device`, `ctx.on_event`, `ctx.stop`, `ctx.resume`, records what it made
(a result row; a checkpoint is indexed by the registry's json beside it) and returns a small JSON-able dict for the job snapshot.
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
from engine.jobs.context import JobFn, OnSubmit
from engine.jobs.params import JobParams
from engine.tasks.common import available_inits, device_label
from engine.tasks.demo import (AUTOPRETRAIN_OFF_ENV, DEMO, DEMO_ENV, DEMO_PRETRAIN_ENV, DemoSettings,
                               autopretrain_enabled, is_demo_workspace, prepare_workspace, start_demo_pretraining)
from engine.tasks.explain import run_gradcam_image_job, run_gradcam_study_job
from engine.tasks.fewshot import (default_classifier_name, partial_sweep_trials, run_classify, run_sweep_job,
                                  sweep_config)
from engine.tasks.importing import run_import
from engine.tasks.model_card import model_card
from engine.tasks.params import (ClassifyParams, GradcamImageParams, GradcamStudyParams, ImportParams, PretrainParams,
                                 SimilarityParams, SweepParams)
from engine.tasks.pretrain import pretrain_config, reserve_pretrain_name, run_pretrain
from engine.tasks.similarity import run_similarity_job
from engine.tasks.study import StudyParams, reserve_study_names, run_study_job
from engine.tasks.scoring import LabelAdviceParams, ScoreImagesParams, run_label_advice, run_score_images

if TYPE_CHECKING:
    from engine.jobs.runner import JobRunner

__all__ = ["AUTOPRETRAIN_OFF_ENV", "DEMO", "DEMO_ENV", "DEMO_PRETRAIN_ENV", "KINDS", "ClassifyParams", "DemoSettings",
           "GradcamImageParams", "GradcamStudyParams", "ImportParams", "LabelAdviceParams", "ScoreImagesParams",
           "PretrainParams", "SimilarityParams",
           "StudyParams", "SweepParams", "TaskKind", "autopretrain_enabled", "available_inits", "default_classifier_name",
           "device_label", "is_demo_workspace", "kind_of", "model_card", "partial_sweep_trials", "prepare_workspace",
           "pretrain_config", "register_all",
           "reserve_pretrain_name", "run_classify", "run_gradcam_image_job", "run_gradcam_study_job", "run_import",
           "run_pretrain", "run_similarity_job", "run_study_job", "run_sweep_job", "start_demo_pretraining", "sweep_config"]


@dataclass(frozen=True)
class TaskKind:
    """One job kind of the app, every fact about it in one place.

    gpu: "always" (takes the runner's one GPU slot even on a CPU machine), "cuda" (only when the
    runner's device is a GPU) or "never". label: what the app calls such a job ("Pretraining").
    unit: what its progress bar counts, singular ("step", "trial"). resumes: a stopped job continues
    from its saved state (else resuming runs it again). result_kind: the kind of the store result it
    records (`Store.results(kind=...)`), None when it records none. page: the app page that starts and
    shows it (a path under app_pages/)."""

    params_type: type[JobParams]
    fn: JobFn
    gpu: str
    label: str
    unit: str
    resumes: bool
    result_kind: str | None
    page: str
    on_submit: OnSubmit | None = None

    @property
    def name(self) -> str:
        return self.params_type.kind


# Pretraining always takes the runner's one "GPU" slot (two runs fighting over the same cores or GPU
# help nobody); the shorter kinds use it only when there is a real GPU, so on a CPU machine a
# clinician's classifier never waits behind a pretraining run.
KINDS: tuple[TaskKind, ...] = (
    TaskKind(ImportParams, run_import, "never", "Import", "image", False, None, "app_pages/data.py"),
    TaskKind(PretrainParams, run_pretrain, "always", "Pretraining", "step", True, None,  # makes a checkpoint
             "app_pages/pretrain.py", on_submit=reserve_pretrain_name),  # reserves the name
    TaskKind(ClassifyParams, run_classify, "cuda", "Classifier", "training", False, "classifier",
             "app_pages/classifier.py"),
    TaskKind(SweepParams, run_sweep_job, "cuda", "Benchmark", "trial", True, "sweep", "app_pages/benchmark.py"),
    TaskKind(GradcamStudyParams, run_gradcam_study_job, "cuda", "Grad-CAM study", "step", True, "gradcam",
             "app_pages/gradcam.py"),
    TaskKind(GradcamImageParams, run_gradcam_image_job, "cuda", "Grad-CAM", "initialization", False, None,
             "app_pages/gradcam.py"),
    TaskKind(SimilarityParams, run_similarity_job, "cuda", "Dataset similarity", "image set", False,  # SVCCA
             "similarity", "app_pages/benchmark.py"),
    TaskKind(StudyParams, run_study_job, "always", "Study", "stage", True, "study",  # pretrains: the GPU slot
             "app_pages/benchmark.py", on_submit=reserve_study_names),
    TaskKind(ScoreImagesParams, run_score_images, "cuda", "Batch scoring", "image", False, "scores",
             "app_pages/classifier.py"),  # batch scoring / external validation
    TaskKind(LabelAdviceParams, run_label_advice, "cuda", "Label advice", "subset size", False, "label_advice",
             "app_pages/classifier.py"),  # learning curve + label-next list
)
_BY_NAME = {k.name: k for k in KINDS}


def kind_of(name: str) -> TaskKind | None:
    """The TaskKind named `name` ("pretrain", ...); None for a kind this app does not know (e.g. a job
    row written by a newer version)."""
    return _BY_NAME.get(name)


def register_all(runner: JobRunner) -> None:
    """Register the app's job kinds (`KINDS`) with their params classes and submit checks; also
    removes temp files of checkpoint exports killed mid-write (the runner cleans the workspace)."""
    from engine.atomic import remove_stale_temps

    remove_stale_temps(paths.checkpoints_dir())
    cuda = getattr(runner.device, "type", "cpu") == "cuda"
    for k in KINDS:
        runner.register(k.name, k.fn, uses_gpu=k.gpu == "always" or (k.gpu == "cuda" and cuda),
                        on_submit=k.on_submit, params_type=k.params_type)
