"""Process-wide services for the app: one Store and one JobRunner per workspace (st.cache_resource).

Every page calls `services()` first. The first call for a workspace opens the store, starts the
job runner (which marks jobs a previous server left running as `interrupted`), registers the job
kinds of `engine.tasks`, and on a fresh demo workspace starts the short demo pretraining jobs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from engine import paths, tasks
from engine.jobs import JobRunner
from engine.store import Store


@dataclass(frozen=True)
class Services:
    store: Store
    runner: JobRunner
    workspace: Path
    checkpoints: Path
    device_label: str
    demo_jobs: tuple[int, ...]  # job ids of the demo pretraining started by this process (may be empty)


@st.cache_resource(show_spinner="Opening the workspace...")
def _open(workspace: str, checkpoints: str) -> Services:
    # Keyed by both folders so tests (and users switching workspaces via the env) never share a runner.
    ws = Path(workspace)
    tasks.prepare_workspace(ws)
    store = Store(ws)
    runner = JobRunner(store, device="auto")
    tasks.register_all(runner)
    runner.interrupt_on_exit()
    demo = tasks.start_demo_pretraining(store, runner) if tasks.autopretrain_enabled() else []
    return Services(store, runner, ws, Path(checkpoints), tasks.device_label(runner.device), tuple(demo))


def services() -> Services:
    """The open workspace's services (cached for the life of the server process)."""
    return _open(str(paths.workspace_dir()), str(paths.checkpoints_dir()))
