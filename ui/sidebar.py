"""The sidebar every page shares: workspace, device and the background jobs with their progress."""
from __future__ import annotations

import streamlit as st

from ui.jobs import ACTIVE, job_title, progress_text
from ui.services import services


def render_sidebar() -> None:
    svc = services()
    with st.sidebar:
        counts = svc.store.counts()
        n_images = len(svc.store.images())
        st.markdown("**Workspace**")
        st.caption(f"`{svc.workspace}`  \n{n_images} images · {len(counts)} findings")
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
        st.progress(min(max(float(j.progress or 0.0), 0.0), 1.0), text=f"{job_title(j)}  \n{progress_text(j)}")
