"""scarce-cxr: the Streamlit app (router only).

    .venv/bin/python -m streamlit run app.py

Lists the five pages explicitly (each with its own URL: /data, /pretrain, /classifier, /benchmark,
/gradcam, so deep links work), draws the shared sidebar and runs the selected page. All work
happens in `engine`; pages start it as background jobs and show their snapshots.

The page files live in `app_pages/`, not `pages/`: Streamlit treats a `pages/` folder beside the
entry script as its legacy multipage app, and then a deep link (e.g. /benchmark as the first request
to a fresh server) runs that file alone, without this router, its menu or the shared sidebar.
"""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `engine` and `ui` importable however we are started

from ui.sidebar import render_sidebar  # noqa: E402

st.set_page_config(page_title="scarce-cxr", page_icon=":material/radiology:", layout="wide",
                   initial_sidebar_state="expanded")

PAGES = [  # in the order of the workflow; Data is the landing page
    st.Page("app_pages/data.py", title="Data", icon=":material/photo_library:", url_path="data", default=True),
    st.Page("app_pages/pretrain.py", title="Pretrain", icon=":material/model_training:", url_path="pretrain"),
    st.Page("app_pages/classifier.py", title="Classifier", icon=":material/stethoscope:", url_path="classifier"),
    st.Page("app_pages/benchmark.py", title="Benchmark", icon=":material/monitoring:", url_path="benchmark"),
    st.Page("app_pages/gradcam.py", title="Grad-CAM", icon=":material/visibility:", url_path="gradcam"),
]

page = st.navigation(PAGES, position="sidebar")
try:
    page.run()
finally:
    render_sidebar()  # after the page, so its counts include what the page just imported or deleted
