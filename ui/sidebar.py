"""The sidebar every page shares: the pages (links that keep `?ws=`), workspace, device and the background
jobs of every workspace with their progress."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui.jobs import ACTIVE, job_title, progress_text
from engine.escaping import escape_markdown as md
from engine.tasks import is_demo_workspace, kind_of
from ui.services import (WS_PARAM, active_workspace, create_workspace, keep_workspace_in_url, known_workspaces,
                         opened_services, services, workspace_param)
from ui.widgets import PAGE_FILES

PAGE_TITLE = {"data": "Data", "pretrain": "Pretrain", "classifier": "Classifier", "benchmark": "Benchmark",
              "gradcam": "Grad-CAM"}


def workspace_label(ws) -> str:
    return f"{ws.name} · synthetic demo" if is_demo_workspace(ws) else ws.name


def render_nav(pages: list) -> None:
    """The app's menu at the top of the sidebar: one link per page, each keeping this session's `?ws=`
    (Streamlit's own menu drops the query string, so a reload after a page change would open the default
    workspace)."""
    ws = {WS_PARAM: workspace_param()}
    with st.sidebar.container(key="app_nav", gap=None):
        for p in pages:
            st.page_link(p, query_params=ws, width="stretch")


def _switch() -> None:
    # the URL names the workspace; the next run (ui.services.sync_workspace) opens it and resets the forms
    st.query_params[WS_PARAM] = Path(st.session_state["ws_pick"]).name


def _create() -> None:
    try:
        ws = create_workspace(st.session_state.get("ws_new_name", ""))
    except ValueError as e:
        st.session_state["ws_error"] = str(e)
        return
    st.session_state.pop("ws_error", None)
    st.query_params[WS_PARAM] = ws.name
    st.session_state["ws_new_name"] = ""


def render_sidebar() -> None:
    svc = services()
    with st.sidebar:
        counts = svc.store.counts()
        n_images = len(svc.store.images())
        st.markdown("**Workspace**")
        current = active_workspace()
        options = [str(p) for p in known_workspaces()]
        if str(current) not in options:
            options.append(str(current))
        st.session_state["ws_pick"] = str(current)
        st.selectbox("Workspace", options, key="ws_pick", on_change=_switch, label_visibility="collapsed",
                     format_func=lambda p: workspace_label(Path(p)),
                     help="Each workspace is a folder with its own images, labels and jobs. The demo holds synthetic "
                          "phantoms; put real X-rays in a workspace of your own.")
        n_f = len(counts)
        st.caption(f"`{svc.workspace}`  \n{n_images} image{'' if n_images == 1 else 's'} · "
                   f"{n_f} finding{'' if n_f == 1 else 's'}")
        with st.popover("New empty workspace", icon=":material/create_new_folder:", width="stretch"):
            st.text_input("Name", key="ws_new_name", placeholder="e.g. clinic-2026",
                          help="Letters, digits, '.', '-' and '_'; a new folder beside the demo workspace.")
            st.button("Create and switch to it", key="ws_create", on_click=_create, type="primary")
            if st.session_state.get("ws_error"):
                st.error(st.session_state["ws_error"], icon=":material/error:")
        st.markdown("**Compute**")
        st.caption(svc.device_label)
        _jobs_panel()


def _active_jobs() -> list[tuple]:
    """(services, snapshot) of every queued or running job in every workspace this server has opened."""
    return [(svc, j) for svc in opened_services() for j in svc.runner.jobs() if j.state in ACTIVE]


def _jobs_panel() -> None:
    active = _active_jobs()
    if not active:
        _draw_jobs([])
        return
    here = str(services().workspace)

    def mine(jobs: list[tuple]) -> set[int]:
        return {j.id for svc, j in jobs if str(svc.workspace) == here}

    @st.fragment(run_every=2.0)
    def _live() -> None:
        keep_workspace_in_url()
        now = _active_jobs()
        _draw_jobs(now)
        if mine(now) != mine(active):
            st.rerun()  # a job of this workspace started or ended: refresh the page (new backbone, results, ...)

    _live()


def _draw_jobs(jobs: list[tuple]) -> None:
    st.markdown("**Background jobs** (all workspaces)")
    if not jobs:
        st.caption("None running.")
        return
    here = str(services().workspace)
    for svc, j in sorted(jobs, key=lambda sj: (str(sj[0].workspace) != here, sj[1].created)):
        st.progress(min(max(float(j.progress or 0.0), 0.0), 1.0), text=f"{md(job_title(j))}  \n{progress_text(j)}")
        kind = kind_of(j.kind)  # the page that shows the kind: engine.tasks' one table of job kinds
        page = kind.page if kind is not None else PAGE_FILES["data"]
        where = "this workspace" if str(svc.workspace) == here else f"workspace {svc.workspace.name}"
        st.page_link(page, label=f"Open on {PAGE_TITLE.get(Path(page).stem, 'Data')} ({where})",
                     icon=":material/arrow_forward:", query_params={WS_PARAM: workspace_param(svc.workspace)})
