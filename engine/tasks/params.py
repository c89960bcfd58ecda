"""The app's job kinds' parameters: one frozen dataclass each (engine.jobs.params.JobParams), built by
the page that starts the job, validated once on construction, stored as JSON with the job.

Defaults live here, or in the engine config they come from (the sweep's in SweepConfig, the SVCCA
comparison's in engine.analysis.similarity); the task functions read the fields without defaults of
their own. A None optional field means "not given" (see each field's comment).
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.fewshot.sweep import SweepConfig
from engine.jobs.params import JobParams
from engine.names import check_name
from engine.tasks.similarity import SimilarityParams

__all__ = ["IMAGE_SIZE", "IMPORT_SOURCES", "ClassifyParams", "GradcamImageParams", "GradcamStudyParams", "ImportParams",
           "PretrainParams", "SimilarityParams", "SweepParams"]

IMPORT_SOURCES = ("folder", "manifest", "folder_tree", "nih", "padchest", "upload")
IMAGE_SIZE = 224  # pixels: pretraining's default (the studies' size); jobs on inits default to the init's own (None)


@dataclass(frozen=True, kw_only=True)
class ImportParams(JobParams):
    """`import`: images by path, or a large upload staged by `Store.stage_upload` (source "upload")."""

    kind = "import"
    source: str                          # one of IMPORT_SOURCES
    path: str                            # folder / manifest CSV / dataset root / staged upload folder
    images_root: str | None = None       # padchest only: the folder holding the image sub-folders
    label: tuple[str, int] | None = None  # upload only: (finding, 1|0) given to every uploaded image

    def validate(self) -> None:
        if self.source not in IMPORT_SOURCES:
            raise ValueError(f"unknown import source {self.source!r}; use folder, manifest, folder_tree, nih or "
                             "padchest")


@dataclass(frozen=True, kw_only=True)
class PretrainParams(JobParams):
    """`pretrain`: SSL pretraining of a backbone saved as `out_name` in the checkpoints folder."""

    kind = "pretrain"
    method: str                          # engine.ssl method name
    out_name: str = ""                   # checkpoint name (checked and reserved at submit)
    arch: str = "resnet18"
    image_size: int = IMAGE_SIZE
    epochs: int = 10
    batch_size: int = 64                 # capped at the number of images
    seed: int = 0
    preset: str = "paper"                # engine/ssl/presets.py
    init: str = "random"                 # random | imagenet | a checkpoint of the same arch (a warm start)
    collapse_control: str | None = None  # "erank:TARGET" (engine.ssl.monitor.CollapseControl)
    online_eval_finding: str | None = None  # kNN evaluation on the workspace images labeled for it (ssl.online_eval)
    image_ids: tuple[int, ...] | None = None  # workspace images to use (None: all but the test split)
    data: str | None = None              # a manifest CSV / folder on disk instead of the workspace
    replace: bool = False                # take the name even when a backbone of that name exists

    def validate(self) -> None:
        if self.out_name:  # empty: refused by the reservation at submit ("checkpoint name ''")
            check_name(self.out_name, "checkpoint")
        if self.init not in ("random", "imagenet"):
            check_name(self.init, "init")
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"pretrain job parameter {name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class ClassifyParams(JobParams):
    """`classify`: a classifier built from labeled workspace images, saved with its model card."""

    kind = "classify"
    finding: str
    init: str = "random"
    mode: str = "probe"                  # probe | finetune
    image_ids: tuple[int, ...] | None = None  # None or empty: every image labeled for the finding
    image_size: int | None = None        # None: the init's own input size (engine.models.input_size_for)
    seed: int = 0
    cv_repeats: int | None = None        # None (or 0): the engine's default (10 probe / 1 finetune)
    name: str | None = None              # None: <finding>-<init>-<mode>-<time stamp>
    comparison: bool = False             # a "Compare backbones" probe: measured, not listed as the user's classifier

    def validate(self) -> None:
        check_name(self.finding, "finding")
        check_name(self.init, "init")
        if self.name is not None:
            check_name(self.name, "classifier")


@dataclass(frozen=True, kw_only=True)
class SweepParams(JobParams):
    """`sweep`: the AUC-vs-shots benchmark (defaults: SweepConfig's, the study's)."""

    kind = "sweep"
    findings: tuple[str, ...]
    inits: tuple[str, ...]
    modes: tuple[str, ...] = SweepConfig.modes
    shots: tuple[int, ...] = SweepConfig.shots
    trials: int = SweepConfig.trials
    image_size: int | None = SweepConfig.image_size  # None: each init at its own size (engine.fewshot.sizes)
    seed: int = SweepConfig.seed
    image_ids: tuple[int, ...] | None = None  # None: every workspace image labeled for the findings

    def validate(self) -> None:
        for f in self.findings:
            check_name(f, "finding")
        for i in self.inits:
            check_name(i, "init")

    def config(self) -> SweepConfig:
        """The engine's SweepConfig (which checks modes, shots and trials)."""
        return SweepConfig(findings=self.findings, inits=self.inits, modes=self.modes, shots=self.shots,
                           trials=self.trials, image_size=self.image_size, seed=self.seed)


@dataclass(frozen=True, kw_only=True)
class GradcamStudyParams(JobParams):
    """`gradcam`: held-out positives of a finding explained by one k-shot classifier per init."""

    kind = "gradcam"
    finding: str
    inits: tuple[str, ...] | None = None  # None or empty: every available init
    method: str = "gradcam"
    layer: str | None = None             # None: the arch's last block
    shots: int = 10
    n_images: int = 4
    mode: str = "probe"
    image_size: int | None = None        # None: the largest of the inits' own sizes (engine.fewshot.sizes)
    seed: int = 0
    image_ids: tuple[int, ...] | None = None

    def validate(self) -> None:
        check_name(self.finding, "finding")


@dataclass(frozen=True, kw_only=True)
class GradcamImageParams(JobParams):
    """`gradcam_image`: one workspace image explained by a probe per init (the image left out of training)."""

    kind = "gradcam_image"
    finding: str
    image_id: int
    inits: tuple[str, ...] | None = None  # None or empty: every available init
    method: str = "gradcam"
    layer: str | None = None             # None: layer4
    image_size: int | None = None        # None: each init's own input size
    seed: int = 0

    def validate(self) -> None:
        check_name(self.finding, "finding")
