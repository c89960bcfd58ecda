"""scarce-cxr: the Streamlit app (router only).

    .venv/bin/python -m streamlit run app.py

Lists the five pages explicitly (each with its own URL: / or /data, /pretrain, /classifier, /benchmark,
/gradcam, so deep links work), keeps the workspace in the address (?ws=<name>, e.g. /classifier?ws=clinic),
draws the shared sidebar and runs the selected page. All work
happens in `engine`; pages start it as background jobs and show their snapshots.

The page files live in `app_pages/`, not `pages/`: Streamlit treats a `pages/` folder beside the
entry script as its legacy multipage app, and then a deep link (e.g. /benchmark as the first request
to a fresh server) runs that file alone, without this router, its menu or the shared sidebar.
"""
from __future__ import annotations

import streamlit as st

# `engine` and `ui` import without path changes: `streamlit run` puts this file's folder on sys.path, and
# setup.sh installs the project (editable) for every other entry point.
from engine.store.errors import StoreError
from ui.services import sync_workspace
from ui.sidebar import render_nav, render_sidebar

st.set_page_config(page_title="scarce-cxr", page_icon=":material/radiology:", layout="wide",
                   initial_sidebar_state="expanded")

PAGES = [  # in the order of the workflow; Data is the landing page
    st.Page("app_pages/data.py", title="Data", icon=":material/photo_library:", url_path="home", default=True),
    st.Page("app_pages/pretrain.py", title="Pretrain", icon=":material/model_training:", url_path="pretrain"),
    st.Page("app_pages/classifier.py", title="Classifier", icon=":material/stethoscope:", url_path="classifier"),
    st.Page("app_pages/benchmark.py", title="Benchmark", icon=":material/monitoring:", url_path="benchmark"),
    st.Page("app_pages/gradcam.py", title="Grad-CAM", icon=":material/visibility:", url_path="gradcam"),
    # Streamlit serves the default page at "/" only (its url_path is reserved, not served), so /data would be
    # "Page not found": this hidden page runs the same Data script at /data.
    st.Page("app_pages/data.py", title="Data", icon=":material/photo_library:", url_path="data", visibility="hidden"),
]

# Streamlit's own menu drops the query string on a page change; the sidebar draws the menu itself (render_nav)
# with links that keep ?ws=, so the workspace stays in the address on every page.
page = st.navigation(PAGES, position="hidden")
ws_notice = sync_workspace()  # ?ws=<name> -> this session's workspace (forms reset when it changes)
render_nav(PAGES[:-1])


@st.cache_resource(show_spinner=False)
def _started() -> set[str]:
    """Workspaces whose services this server process has opened (start-up messages are shown once each)."""
    return set()


def start_up() -> None:
    """First request for a workspace: say what is happening while the workspace opens (creating the synthetic
    demo on first use, starting the job runner, queueing demo pretraining only without a shipped backbone)."""
    from engine import tasks
    from engine.models import shipped_inits
    from ui.services import active_workspace

    ws = active_workspace()  # this session's choice (the URL's ?ws=), else the default
    if str(ws) in _started():
        return
    with st.status("Starting scarce-cxr...", expanded=True) as status:
        st.write(f"Opening the workspace `{ws}`.")
        if tasks.is_demo_workspace(ws):
            from engine.demo import ensure_demo_workspace

            bar = st.progress(0.0, text="Checking the demo workspace...")

            from streamlit.runtime.scriptrunner import get_script_run_ctx

            def progress(ev) -> None:  # only from the script's own thread (st.* is not thread-safe)
                if get_script_run_ctx(suppress_warning=True) is not None and ev.step is not None and ev.total:
                    bar.progress(min(1.0, ev.step / ev.total), text=f"Demo workspace: {ev.message or 'working'}")

            ensure_demo_workspace(ws, on_event=progress).close()  # a no-op once it has images
            bar.progress(1.0, text="Demo workspace ready: synthetic phantom radiographs, not real X-rays.")
        st.write("Starting the background job runner.")
        from ui.services import services

        svc = services()
        shipped = shipped_inits()
        if shipped:
            st.write(f"Backbone ready: **{shipped[0].name}** ships with scarce-cxr ({shipped[0].provenance}); "
                     "no pretraining is needed before building a classifier.")
        elif svc.demo_jobs:
            st.write(f"Queued {len(svc.demo_jobs)} short demo pretraining jobs (see Pretrain).")
        _started().add(str(ws))
        status.update(label="scarce-cxr is ready", state="complete", expanded=False)


if ws_notice:
    st.warning(ws_notice, icon=":material/travel_explore:")
try:
    start_up()
except StoreError as e:  # the workspace database cannot be opened (locked, read-only, missing, not a database)
    st.error(str(e), icon=":material/database:")
    st.stop()
try:
    page.run()
finally:
    render_sidebar()  # after the page, so its counts include what the page just imported or deleted
