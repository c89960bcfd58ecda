"""The sidebar every page shares: workspace, device and the background jobs with their progress."""
from __future__ import annotations

import streamlit as st

from ui.jobs import ACTIVE, job_title, progress_text
from engine.escaping import escape_markdown as md
from engine.tasks import is_demo_workspace
from ui.services import ACTIVE_KEY, active_workspace, create_workspace, known_workspaces, services


def workspace_label(ws) -> str:
    return f"{ws.name} · synthetic demo" if is_demo_workspace(ws) else ws.name


def _switch() -> None:
    st.session_state[ACTIVE_KEY] = st.session_state["ws_pick"]


def _create() -> None:
    try:
        ws = create_workspace(st.session_state.get("ws_new_name", ""))
    except ValueError as e:
        st.session_state["ws_error"] = str(e)
        return
    st.session_state.pop("ws_error", None)
    st.session_state[ACTIVE_KEY] = str(ws)
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
                     format_func=lambda p: workspace_label(__import__("pathlib").Path(p)),
                     help="Each workspace is a folder with its own images, labels and jobs. The demo holds synthetic "
                          "phantoms; put real X-rays in a workspace of your own.")
        st.caption(f"`{svc.workspace}`  \n{n_images} images · {len(counts)} findings")
        with st.popover("New empty workspace", icon=":material/create_new_folder:", width="stretch"):
            st.text_input("Name", key="ws_new_name", placeholder="e.g. clinic-2026",
                          help="Letters, digits, '.', '-' and '_'; a new folder beside the demo workspace.")
            st.button("Create and switch to it", key="ws_create", on_click=_create, type="primary")
            if st.session_state.get("ws_error"):
                st.error(st.session_state["ws_error"], icon=":material/error:")
        st.markdown("**Compute**")
        st.caption(svc.device_label)
        _jobs_panel()


def _jobs_panel() -> None:
    runner = services().runner
    active = [j for j in runner.jobs() if j.state in ACTIVE]
    if not active:
        _draw_jobs([])
        return

    @st.fragment(run_every=2.0)
    def _live() -> None:
        now = [j for j in runner.jobs() if j.state in ACTIVE]
        _draw_jobs(now)
        if {j.id for j in now} != {j.id for j in active}:
            st.rerun()  # a job started or ended: refresh the page (new backbone, results, ...)

    _live()


def _draw_jobs(jobs: list) -> None:
    st.markdown("**Background jobs**")
    if not jobs:
        st.caption("None running.")
        return
    for j in sorted(jobs, key=lambda j: j.created):
        st.progress(min(max(float(j.progress or 0.0), 0.0), 1.0), text=f"{md(job_title(j))}  \n{progress_text(j)}")
