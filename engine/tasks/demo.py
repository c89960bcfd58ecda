"""The app's demo start: which workspace is the demo, filling it with phantoms, and the short CPU
pretraining jobs queued once per demo workspace when no backbone ships with the product
(checkpoints/shipped/) or SCARCE_CXR_DEMO_PRETRAIN=1: a shipped backbone makes every page useful at once."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine import paths
from engine.store import Store
from engine.tasks.params import PretrainParams

if TYPE_CHECKING:
    from engine.jobs.runner import JobRunner

__all__ = ["AUTOPRETRAIN_OFF_ENV", "DEMO", "DEMO_ENV", "DEMO_PRETRAIN_ENV", "DemoSettings", "autopretrain_enabled",
           "is_demo_workspace", "prepare_workspace", "start_demo_pretraining"]

AUTOPRETRAIN_OFF_ENV = "SCARCE_CXR_NO_AUTOPRETRAIN"  # =1: never start the demo pretraining jobs (tests)
DEMO_PRETRAIN_ENV = "SCARCE_CXR_DEMO_PRETRAIN"  # =1: start the demo pretraining jobs even with a shipped backbone
DEMO_ENV = "SCARCE_CXR_DEMO"  # =1: treat the active workspace as the demo (phantom images + demo pretraining)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class DemoSettings:
    """First-run demo: short CPU pretraining so every page works end to end within ~10-15 min on a
    2-core laptop (measured: the three runs took 8.1 min on this project's 2-core machine while other
    work ran on it). Not a paper recipe: the studies pretrain for 100-800 epochs at 224 px on GPUs."""

    methods: tuple[str, ...] = ("moco_v2", "barlow_twins", "spark")
    arch: str = "resnet18"
    image_size: int = 96
    epochs: int = 30
    batch_size: int = 32
    seed: int = 0
    preset: str = "quick"  # engine/ssl/presets.py: settings for a few hundred CPU steps
    marker: str = "demo-autopretrain"  # result kind recording that the demo jobs were started once

    def params(self, method: str) -> PretrainParams:
        """The pretrain job of one demo method (its backbone is named `<method>-<arch>-demo`)."""
        return PretrainParams(method=method, arch=self.arch, image_size=self.image_size, epochs=self.epochs,
                              batch_size=self.batch_size, seed=self.seed, preset=self.preset,
                              out_name=f"{method}-{self.arch}-demo")


DEMO = DemoSettings()


def autopretrain_enabled() -> bool:
    """False when SCARCE_CXR_NO_AUTOPRETRAIN=1 (tests): no demo pretraining jobs at all."""
    return os.environ.get(AUTOPRETRAIN_OFF_ENV, "").strip().lower() not in ("1", "true", "yes")


def is_demo_workspace(workspace: Path) -> bool:
    """The default workspace (<repo>/workspace/demo) is the demo, and any workspace when
    SCARCE_CXR_DEMO=1; any other one is the user's own and starts empty."""
    if _env_flag(DEMO_ENV):
        return True
    return workspace.resolve() == (paths.REPO_ROOT / "workspace" / "demo").resolve()


def prepare_workspace(workspace: Path) -> None:
    """Fill the demo workspace with phantom radiographs on first use (a no-op for any other workspace,
    and once the demo has images)."""
    if is_demo_workspace(workspace):
        from engine.demo import ensure_demo_workspace

        ensure_demo_workspace(workspace).close()


def start_demo_pretraining(store: Store, runner: JobRunner, settings: DemoSettings = DEMO) -> list[int]:
    """Once per demo workspace: queue the short pretraining jobs (recorded in the store so a restart
    or a second server does not start them again; interrupted ones are resumed from the Pretrain page).
    Returns the job ids (empty when not started)."""
    if not is_demo_workspace(store.workspace) or store.results(kind=settings.marker):
        return []
    from engine.models import list_inits, shipped_inits

    if shipped_inits() and not _env_flag(DEMO_PRETRAIN_ENV):
        return []  # a shipped backbone already knows chest X-rays: no 15-minute wait before a useful one

    have = {i.name for i in list_inits()}
    ids = [runner.submit("pretrain", settings.params(m)) for m in settings.methods
           if settings.params(m).out_name not in have]
    store.add_result(settings.marker, "demo pretraining", store.workspace, {"jobs": ids, **asdict(settings)})
    return ids
