"""The upload report: each uploaded file's name beside the name it is stored under (`image-000042`), shown right
after the upload and offered as a CSV download. The original names exist only in this browser session (the store
keeps neutral names, engine.store.keys); this table is the one place that links the two."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from engine.escaping import csv_safe
from engine.store import Store

__all__ = ["show_upload_report", "upload_report_table"]


def upload_report_table(store: Store, stored: Sequence[tuple[str, int, bool]]) -> pd.DataFrame:
    """Columns "Uploaded file", "Stored as", "Status" ("new" / "already in the workspace") of the imported
    files `stored` = (uploaded name, image id, duplicate), in upload order. "Stored as" is the image's name
    in the store, as every page shows it (ids whose image was deleted meanwhile: "deleted")."""
    ids = [int(i) for _, i, _ in stored]
    imgs = store.images()
    names = dict(zip(imgs["id"].astype(int), imgs["name"].astype(str)))
    return pd.DataFrame({
        "Uploaded file": [str(n) for n, _, _ in stored],
        "Stored as": [names.get(i, "deleted") for i in ids],
        "Status": ["already in the workspace" if d else "new" for _, _, d in stored],
    })


def show_upload_report(store: Store, stored: Sequence[tuple[str, int, bool]], key: str,
                       originals: bool = True) -> None:
    """The report table of `stored` (see `upload_report_table`) and its CSV download (cells a spreadsheet
    would run as formulas are escaped). `originals=False`: this session no longer has the uploaded names
    (another browser, or a reload), so the files are listed by position ("file 3") and the table says so."""
    if not stored:
        return
    table = upload_report_table(store, stored)
    with st.expander(f"Uploaded file -> stored name ({len(table)} image{'s' * (len(table) != 1)})",
                     expanded=len(table) <= 20):
        st.caption("Keep this list (Download) if you need to know which upload became which image: the workspace "
                   "stores only the neutral names, so the original file names are not shown again after this."
                   if originals else
                   "The original file names are known only to the browser session that uploaded them; this session "
                   "lists the files by their position in the upload.")
        st.dataframe(table, hide_index=True, width="stretch")
        st.download_button("Download as CSV", csv_safe(table).to_csv(index=False).encode("utf-8"),
                           file_name="upload-stored-names.csv", mime="text/csv", icon=":material/download:",
                           key=f"{key}:download", on_click="ignore")
