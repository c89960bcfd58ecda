"""Job panels: watch one background job from a page, live, without blocking the script.

A page shows at most one watched job. While it is queued or running, `watch` draws it inside the
page's single `@st.fragment(run_every=...)`, which re-reads the runner's thread-safe snapshot each
tick and, when the job ends, reruns the whole app once so the page shows the finished result and
the polling stops. `st.session_state` keeps only the watched job id (`watch:<page>`); after a reload
the page picks the newest job of its kind again, so nothing is lost.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import streamlit as st

from engine.escaping import escape_markdown as md
from engine.jobs import JobSnapshot
from engine.jobs.params import JobParams
from engine.tasks import kind_of
from ui.services import keep_workspace_in_url, services
from ui.store_writes import WRITE_ERRORS, store_write, write_error_message
from ui.widgets import fmt_time

ACTIVE = ("queued", "running")
RESUMABLE = ("interrupted", "cancelled", "failed")
STATE_LABEL = {
    "queued": ":material/schedule: waiting for an earlier job to finish",
    "running": ":material/play_circle: running",
    "done": ":material/check_circle: finished",
    "failed": ":material/error: failed",
    "cancelled": ":material/cancel: cancelled",
    "interrupted": ":material/pause_circle: interrupted (the server stopped while it ran)",
}


def kind_label(kind: str) -> str:
    """What the app calls a job of `kind` (its TaskKind's label; the kind's name for an unknown kind)."""
    k = kind_of(kind)
    return k.label if k else kind.replace("_", " ").title()


def kind_unit(kind: str) -> str:
    """What a `kind` job's progress bar counts (its TaskKind's unit; "step" for an unknown kind). Each job
    counts one thing from 0 to its total; sub-phases report their counts in the message line."""
    k = kind_of(kind)
    return k.unit if k else "step"


def kind_resumes(kind: str) -> bool:
    """Whether a stopped `kind` job continues from its saved state (else Resume runs it again: Retry)."""
    k = kind_of(kind)
    return bool(k and k.resumes)


def is_active(snap: JobSnapshot) -> bool:
    return snap.state in ACTIVE


def job_title(snap: JobSnapshot) -> str:
    """Short human title of a job, e.g. 'Pretraining moco_v2-resnet18-demo'."""
    p = snap.params or {}
    what = p.get("out_name") or p.get("title") or p.get("finding") or p.get("name") or ""
    return f"{kind_label(snap.kind)} {what}".strip()


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def progress_text(snap: JobSnapshot) -> str:
    parts = [STATE_LABEL.get(snap.state, snap.state)]
    if snap.total:
        parts.append(f"{kind_unit(snap.kind)} {snap.step or 0} of {snap.total}")
    if is_active(snap) and snap.eta_s:
        parts.append(f"about {fmt_duration(snap.eta_s)} left")
    return " · ".join(parts)


def watched(page: str, kinds: Iterable[str]) -> int | None:
    """The job id this page watches: the session's choice, else the newest job of its kinds.

    Prefers a running job, then a queued one, so a reload (a fresh session) lands on the live job.
    """
    key = f"watch:{page}"
    runner = services().runner
    jid = st.session_state.get(key)
    if jid is not None:
        try:
            runner.snapshot(jid)
            return jid
        except KeyError:
            st.session_state.pop(key, None)
    kinds = tuple(kinds)
    jobs = [j for j in runner.jobs() if j.kind in kinds]
    if not jobs:
        return None
    jobs.sort(key=lambda j: (j.state == "running", j.state == "queued", j.created), reverse=True)
    return jobs[0].id


def start_job(page: str, kind: str, build: Callable[[], JobParams]) -> None:
    """Build a job's params (validated on construction) and submit a `kind` job that `page` then watches,
    and rerun; a ValueError (invalid params, a name another run holds) or a store error (database locked by
    another writer, full disk: ui.store_writes) is shown on the page instead."""
    try:
        job_id = services().runner.submit(kind, build())
    except ValueError as e:
        st.error(md(e), icon=":material/error:")  # quotes names and paths the user typed
        return
    except WRITE_ERRORS as e:
        st.error(md(write_error_message("start the job", e)), icon=":material/error:")
        return
    set_watched(page, job_id)
    st.rerun()


def set_watched(page: str, job_id: int | None) -> None:
    if job_id is None:
        st.session_state.pop(f"watch:{page}", None)
    else:
        st.session_state[f"watch:{page}"] = job_id


def watch(job_id: int, draw: Callable[[JobSnapshot], None], *, every: float = 1.0) -> None:
    """Draw `draw(snapshot)`; while the job is active, inside a fragment that reruns every `every` s."""
    runner = services().runner
    snap = runner.snapshot(job_id)
    if not is_active(snap):
        draw(snap)
        return

    @st.fragment(run_every=every)
    def _live() -> None:
        keep_workspace_in_url()
        s = runner.snapshot(job_id)
        draw(s)
        if not is_active(s):
            st.rerun()  # whole app once: show the final result and stop polling

    _live()


def job_warnings(snap: JobSnapshot) -> list[str]:
    """The job's warnings, de-duplicated, without the store's 'interrupted' note (the status box says it)."""
    return [w for w in dict.fromkeys(snap.warnings or []) if not w.startswith("interrupted:")]


def status_block(snap: JobSnapshot, page: str, *, show_log: bool = True, show_warnings: bool = True) -> None:
    """Progress bar, state, warnings, error, log tail and the cancel / resume buttons of one job."""
    runner = services().runner
    frac = float(snap.progress or 0.0)
    if snap.state == "done":
        frac = 1.0
    st.progress(min(max(frac, 0.0), 1.0), text=progress_text(snap))
    for w in job_warnings(snap) if show_warnings else ():
        st.warning(md(w), icon=":material/warning:")  # may name the user's files
    if snap.state == "failed" and snap.error:
        st.error(f"This job failed: {md(snap.error)}", icon=":material/error:")
    if snap.state == "interrupted":
        st.info("The server stopped while this job was running. Its last saved state is kept; press **Resume** "
                "to continue from there." if kind_resumes(snap.kind) else
                "The server stopped while this job was running; press **Retry** to run it again.",
                icon=":material/pause_circle:")
    if snap.active:
        if st.button("Cancel", key=f"cancel:{snap.id}", icon=":material/stop_circle:",
                     help="Stops after the current step and keeps a resumable state."):
            if store_write(lambda: runner.cancel(snap.id), "cancel the job")[0]:
                st.toast("Cancelling: the job stops after its current step.")
    elif snap.resumable:
        resumes = kind_resumes(snap.kind)  # the others simply run again
        if st.button("Resume" if resumes else "Retry", key=f"resume:{snap.id}", icon=":material/play_arrow:",
                     type="primary", help="Continue from the last saved state." if resumes else "Run it again."):
            ok, resumed = store_write(lambda: runner.resume(snap.id), "resume the job")
            if ok:
                set_watched(page, resumed)
                st.rerun()
    if show_log and snap.log:
        with st.expander("Log", expanded=False):
            st.code("\n".join(str(line) for line in snap.log[-30:]), language=None)


def job_table(kinds: Iterable[str], page: str, *, limit: int = 8) -> None:
    """Recent jobs of some kinds with a 'show' button each (to watch an older one, or resume it)."""
    runner = services().runner
    kinds = tuple(kinds)
    jobs = sorted((j for j in runner.jobs() if j.kind in kinds), key=lambda j: j.created, reverse=True)[:limit]
    if not jobs:
        return
    current = st.session_state.get(f"watch:{page}")
    for j in jobs:
        c1, c2, c3 = st.columns([5, 3, 1])
        c1.markdown(f"**{md(job_title(j))}**  \n{fmt_time(j.created)}")
        c2.markdown(STATE_LABEL.get(j.state, j.state) + (f" ({int(100 * (j.progress or 0))} %)" if is_active(j) else ""))
        if c3.button("Show", key=f"show:{page}:{j.id}", disabled=j.id == current):
            set_watched(page, j.id)
            st.rerun()


def pick_result(results: list[dict], label: str, prefix: str, job: int | None, snap: JobSnapshot | None) -> dict:
    """A selectbox `label` over a page's results (newest first; choice in session key `<prefix>_result`);
    a result whose watched job just ended is selected once. Returns the chosen result."""
    by_id = {r["id"]: r for r in results}
    newest = (snap.result or {}).get("result_id") if snap is not None and snap.state == "done" else None
    if newest in by_id and st.session_state.get(f"{prefix}_seen_job") != job:  # show a result that just arrived
        st.session_state[f"{prefix}_result"] = newest
        st.session_state[f"{prefix}_seen_job"] = job
    pick = st.selectbox(label, list(by_id), key=f"{prefix}_result",
                        format_func=lambda i: f"{by_id[i]['name']} · {fmt_time(by_id[i]['created'])}")
    return by_id[pick]
