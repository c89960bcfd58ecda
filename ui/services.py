"""Process-wide services for the app: one Store and one JobRunner per workspace (st.cache_resource).

Every page calls `services()` first. The first call for a workspace opens the store, starts the
job runner (which marks jobs a previous server left running as `interrupted`), registers the job
kinds of `engine.tasks`, and on a fresh demo workspace starts the short demo pretraining jobs.
"""
from __future__ import annotations

import threading
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
    _at_server_exit(lambda: interrupt_jobs(runner))
    demo = tasks.start_demo_pretraining(store, runner) if tasks.autopretrain_enabled() else []
    return Services(store, runner, ws, Path(checkpoints), tasks.device_label(runner.device), tuple(demo))


def interrupt_jobs(runner: JobRunner, timeout: float = 30.0) -> list[int]:
    """Stop this runner's active jobs at their next step (each saves a resumable state) and record
    them as `interrupted`, so after a restart they offer Resume. Run when the server stops; a job
    that fails while the process shuts down (its thread pools refuse work) counts as interrupted too."""
    from engine.events import Event

    try:
        active = [j["id"] for j in runner.store.jobs(states=("queued", "running")) if j["owner"] == runner.token]
        runner.shutdown(timeout=timeout)
        for jid in active:
            if runner.store.transition_job(jid, ("queued", "running", "cancelled", "failed"), state="interrupted",
                                           owner=None, error=None):
                runner.store.add_event(jid, Event(message="the server stopped; resume continues from the saved state",
                                                  kind="log"))
        return active
    except Exception:  # noqa: BLE001 - best effort while the process exits; a restart marks orphans anyway
        return []


def _at_server_exit(fn) -> None:
    """Run `fn` when the server process exits normally (Ctrl-C, SIGTERM), *before* the standard library
    shuts its thread pools down. Plain `atexit` runs too late: by then a job's data-loading pool already
    refuses work and the job would end as failed. `threading._register_atexit` hooks run first, newest
    first, at interpreter shutdown (it is what concurrent.futures itself uses)."""
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # not CPython: the next start marks the jobs interrupted instead
        import atexit

        atexit.register(fn)
    else:
        register(fn)


def services() -> Services:
    """The open workspace's services (cached for the life of the server process)."""
    return _open(str(paths.workspace_dir()), str(paths.checkpoints_dir()))
