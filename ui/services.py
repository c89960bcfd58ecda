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


ACTIVE_KEY = "active_workspace"  # st.session_state: the folder this browser session works in


def workspaces_root() -> Path:
    """Where new workspaces are created: beside the default one (<repo>/workspace/<name>)."""
    return paths.workspace_dir().parent


def active_workspace() -> Path:
    """This session's workspace (st.session_state), else the default ($SCARCE_CXR_WORKSPACE or the demo)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    if get_script_run_ctx(suppress_warning=True) is not None:
        chosen = st.session_state.get(ACTIVE_KEY)
        if chosen:
            return Path(chosen)
    return paths.workspace_dir()


def known_workspaces() -> list[Path]:
    """The default workspace first, then the other folders beside it that hold a workspace (a store)."""
    default = paths.workspace_dir()
    root = workspaces_root()
    others = sorted(p for p in root.iterdir() if p.is_dir() and p != default and any(p.glob("*.sqlite*"))) \
        if root.is_dir() else []
    return [default, *others]


def create_workspace(name: str) -> Path:
    """A new empty workspace folder <root>/<name> (name checked like a checkpoint name: ASCII letters, digits,
    '.', '-', '_'); refuses an existing folder. Raises ValueError with the reason."""
    from engine.names import check_name

    try:
        n = check_name(name, "checkpoint")
    except ValueError as e:
        msg = str(e)  # "<kind> name '...' ...": say workspace
        raise ValueError("workspace" + msg[msg.index(" name "):] if " name " in msg else msg) from None
    ws = workspaces_root() / n
    if ws.exists():
        raise ValueError(f"A folder {ws} already exists; choose it in the list or pick another name.")
    ws.mkdir(parents=True)
    Store(ws).close()  # so it is listed as a workspace from now on
    return ws


def services() -> Services:
    """The services of this session's workspace (one Store and JobRunner per workspace folder, cached for the
    life of the server process and shared by every session working in that folder)."""
    return _open(str(active_workspace()), str(paths.checkpoints_dir()))
