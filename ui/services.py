"""Process-wide services for the app: one Store and one JobRunner per workspace (st.cache_resource).

Every page calls `services()` first. The first call for a workspace opens the store, starts the
job runner (which marks jobs a previous server left running as `interrupted`), registers the job
kinds of `engine.tasks`, and on a fresh demo workspace starts the short demo pretraining jobs.

The active workspace is part of the address: `?ws=<folder name>` (st.query_params). `sync_workspace`,
run first on every script run, reads it (a reload, a deep link or a new window lands in the same
workspace), writes it back when missing, and drops the session's form state when the workspace
changed, so no form keeps proposing another workspace's values.
"""
from __future__ import annotations

import re
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
    svc = Services(store, runner, ws, Path(checkpoints), tasks.device_label(runner.device), tuple(demo))
    _opened()[(workspace, checkpoints)] = svc
    return svc


@st.cache_resource(show_spinner=False)
def _opened() -> dict[tuple[str, str], Services]:
    """Every workspace's services this server process has opened, by (workspace, checkpoints) folder."""
    return {}


def opened_services() -> list[Services]:
    """The services of every workspace this server has opened (with today's checkpoints folder), the active
    one first: their runners run the server's background jobs, whichever workspace a session shows."""
    ckpt, active = str(paths.checkpoints_dir()), str(active_workspace())
    found = [s for (ws, ck), s in list(_opened().items()) if ck == ckpt]
    return sorted(found, key=lambda s: (str(s.workspace) != active, s.workspace.name))


ACTIVE_KEY = "active_workspace"  # st.session_state: the folder this browser session works in
WS_PARAM = "ws"  # the URL's query parameter that names it (?ws=<folder name>)
STATE_WS_KEY = "_state_workspace"  # st.session_state: the workspace the session's form state belongs to
# Session keys that are not a workspace's form state: kept when the workspace changes; every other key goes.
SESSION_KEYS = frozenset({ACTIVE_KEY, STATE_WS_KEY, "ws_pick", "ws_new_name", "ws_error", "data_tab"})


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


def workspace_param(ws: Path | None = None) -> str:
    """The `?ws=` value that names `ws` (default: this session's workspace): its folder name."""
    return (ws or active_workspace()).name


def find_workspace(name: str) -> Path:
    """The known workspace (`known_workspaces`) whose folder is called `name`. Only listed folders are
    returned (a name is never joined to a path). Raises ValueError saying which names exist."""
    found = {p.name: p for p in known_workspaces()}
    if name in found:
        return found[name]
    # only a name a workspace could have is repeated (the message is Markdown: nothing else from the URL is shown)
    shown = f"named `{name}`" if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name) else "by the name in the address"
    raise ValueError(f"There is no workspace {shown} on this server (an old link, a typo, or a workspace "
                     f"made on another computer). Workspaces here: {', '.join(f'`{n}`' for n in sorted(found))}.")


def _drop_form_state() -> None:
    """Forget every form's and page's session state (widget values, watched job ids, chosen results):
    they belong to the workspace the session leaves; the new one's forms start from its own data."""
    for key in list(st.session_state.keys()):
        if key not in SESSION_KEYS:
            del st.session_state[key]


def sync_workspace() -> str | None:
    """Make this session's workspace the URL's `?ws=` (first thing on every script run).

    A known name opens that workspace; no name keeps the session's workspace (else the default); an
    unknown name falls back to the default workspace and returns the reason, for the page to show. The
    URL is then set to the workspace shown. When the workspace differs from the one the session's form
    state belongs to, that state is dropped (`_drop_form_state`). Returns None when nothing is to be said."""
    default, notice = paths.workspace_dir(), None
    asked = st.query_params.get(WS_PARAM)
    if asked:
        try:
            ws = find_workspace(asked)
        except ValueError as e:
            ws = default
            notice = f"{e} Showing the {'demo' if tasks.is_demo_workspace(ws) else 'default'} workspace `{ws.name}`."
    else:
        ws = Path(st.session_state.get(ACTIVE_KEY) or default)
    if st.session_state.get(STATE_WS_KEY) not in (None, str(ws)):
        _drop_form_state()
    st.session_state[STATE_WS_KEY] = st.session_state[ACTIVE_KEY] = str(ws)
    if asked != ws.name:
        st.query_params[WS_PARAM] = ws.name
    return notice


def keep_workspace_in_url() -> None:
    """Put this session's workspace back into the URL's `?ws=` (first thing in every `run_every` fragment).

    A fragment's timed rerun carries the address the browser had when it was sent: one sent just before a
    click on a link to another workspace arrives after that page's run and would set the URL back to the old
    workspace, while the page (and the session) shows the new one; a reload would then switch workspace.
    Only full runs change the session's workspace (`sync_workspace`), so the session is the truth here."""
    name = workspace_param()
    if st.query_params.get(WS_PARAM) != name:
        st.query_params[WS_PARAM] = name


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
