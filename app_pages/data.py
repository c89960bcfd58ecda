"""Data: import chest X-rays and label them per finding."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.escaping import escape_markdown as md
from engine.jobs import JobSnapshot
from engine.store import (DiskFullError, LabelConflictError, Store, StoreError, UploadTooLargeError,
                          check_finding_name, upload_label_report)
from engine.tasks import ImportParams
from ui.jobs import set_watched, status_block, watch, watched
from ui.labels import LabelCSVError, editor_rows, label_changes, labels_from_csv
from ui.services import services
from ui.store_writes import shown_error, store_write
from ui.upload_report import show_upload_report
from ui.widgets import (DATA_UPLOAD_TYPES, chunks, data_uri, is_synthetic_workspace, label_text, page_header, pager,
                        synthetic_notice)

NO_LABEL = "(do not label)"
PRESENT, ABSENT = "show the finding", "do not show the finding"
SOURCES = {
    "folder": "A folder of images (no labels)",
    "manifest": "A manifest CSV (path, patient_id, split, one 0/1 column per finding)",
    "folder_tree": "A folder with one sub-folder per class (e.g. normal/, pneumonia/)",
    "nih": "NIH ChestX-ray14 (Data_Entry_2017*.csv and images*/ folders)",
    "padchest": "PadChest (the official labels CSV and its image folders)",
}


def summary(images: pd.DataFrame, counts: dict[str, dict[str, int]]) -> None:
    c1, c2, c3 = st.columns(3)
    c1.metric("Images", len(images))
    c2.metric("Findings", len(counts))
    labeled = int(images[list(counts)].notna().any(axis=1).sum()) if counts and len(images) else 0
    c3.metric("Images with at least one label", labeled)
    if counts:
        table = pd.DataFrame(
            [{"Finding": f, "Present": c["positive"], "Absent": c["negative"], "Unlabeled": c["unknown"]}
             for f, c in counts.items()]
        )
        st.dataframe(table, hide_index=True, width="stretch")
    elif not len(images):
        st.info("No images yet. Upload chest X-rays below (or import a folder from disk), then label them.",
                icon=":material/photo_library:")
    else:
        st.info("No findings yet: open **Label** to add one (e.g. *nodule*) and tick the images that show it.",
                icon=":material/label:")


DEMO_MIX = ("This is the **demo workspace of synthetic phantoms**. Real X-rays added here would be mixed with them "
            "(and with the demo's pretraining). Create a workspace of your own first: sidebar, **New empty "
            "workspace**.")


def demo_mix_confirm(store: Store, key: str) -> bool:
    """Inside an import form of the demo workspace: say that real images would mix with synthetic ones and offer
    a checkbox to add them anyway (True elsewhere: nothing to confirm)."""
    if not is_synthetic_workspace(store.workspace):
        return True
    st.warning(DEMO_MIX, icon=":material/science:")
    return st.checkbox("Add them to the synthetic demo workspace anyway", key=key)


def refuse_demo_mix() -> None:
    st.error("Nothing was imported: the demo workspace holds synthetic phantoms. Create a workspace of your own "
             "(sidebar, New empty workspace), or tick 'Add them to the synthetic demo workspace anyway'.",
             icon=":material/science:")


def upload_form(store: Store) -> None:
    st.subheader("Upload X-rays")
    findings = store.findings()
    with st.form("upload", clear_on_submit=True, border=True):
        files = st.file_uploader(
            "Chest X-rays: PNG, JPEG, TIFF, DICOM (any file name, also without an extension such as IM000001), "
            "or ZIP archives of them. Select many at once.",
            type=DATA_UPLOAD_TYPES, accept_multiple_files=True, key="upload_files",
            help="Each file is recognised by its content; files that are no image are listed with the reason.",
        )
        st.caption("Images are stored under neutral names (image-000123), never under their file names, which "
                   "often hold a patient's name or record number. Right after an upload, the report below lists "
                   "each file's name with the name it was stored under (download it as CSV to keep it); the "
                   "workspace itself never shows the original names again. A label CSV naming the original files "
                   "still finds them. "
                   f"More than {store.background_upload_files} files or "
                   f"{store.background_upload_pixels / 1e6:,.0f} megapixels are decoded in the background with "
                   "progress (shown below; a ZIP counts as many files as it holds images); one upload holds at most "
                   f"{store.max_upload_pixels / 1e9:g} gigapixel.")
        c1, c2 = st.columns(2)
        finding = c1.selectbox(
            "Label the uploaded images for this finding (optional)", [NO_LABEL, *findings], index=0,
            accept_new_options=True, key="upload_finding",
            help="Pick a finding, or type a new name and press Enter.",
        )
        value = c2.radio("The uploaded images", [PRESENT, ABSENT], horizontal=True, key="upload_value",
                         help="Upload the images that show the finding and those that do not in two rounds.")
        mix_ok = demo_mix_confirm(store, "upload_into_demo")
        submitted = st.form_submit_button("Import", type="primary", icon=":material/upload:")
    if submitted:
        if not files:
            st.warning("Choose one or more files first.", icon=":material/warning:")
            return
        if not mix_ok:
            refuse_demo_mix()
            return
        _import_uploads(store, files, None if finding in (None, NO_LABEL, "") else str(finding), value == PRESENT)


def _import_uploads(store: Store, files: list, finding: str | None, present: bool) -> None:
    results = []
    label = (finding, int(present)) if finding else None  # each image and its label commit together
    try:
        budget = store.budget_upload([(f.name, f.getvalue()) for f in files])  # headers only, before decoding
    except UploadTooLargeError as e:  # too many pixels for one upload, even in the background
        st.error(str(e), icon=":material/error:")
        return
    if store.upload_in_background(budget.images, budget.pixels):  # large (a ZIP's images count each): a job
        _import_in_background(store, files, label, budget.pixels)
        return
    bar = st.progress(0.0, text="Importing...")
    try:
        for i, f in enumerate(files):
            results.extend(store.import_bytes(f.name, f.getvalue(), label=label))
            bar.progress((i + 1) / len(files), text=f"Importing {f.name} ({i + 1} of {len(files)})")
    except ValueError as e:  # an invalid finding name: checked before anything is written
        bar.empty()
        shown_error(f"Nothing was imported: {e}")
        return
    except DiskFullError as e:  # what was committed before stays, labeled; say exactly that
        results.extend(e.committed)
        shown_error(e, icon=":material/hard_drive:")
    except (StoreError, OSError) as e:  # e.g. the database locked by another writer: each image is its own commit
        kept = (f"the {i} file{'s' * (i != 1)} before it {'were' if i != 1 else 'was'} imported and kept "
                "(listed below), the rest were not: import them again once the workspace is free (the imported "
                "ones will be recognized as duplicates)") if i else \
            "nothing was imported: import the files again once the workspace is free"
        shown_error(f"{e}. The import stopped at file {i + 1} of {len(files)}; {kept}")
    bar.empty()
    ok = [r for r in results if r.error is None]
    bad = [r for r in results if r.error is not None]
    dup = sum(r.duplicate for r in ok)
    kept = [r.name for r in ok if r.label_kept]
    if ok:
        text, warn = upload_label_report(len(ok) - dup, dup, len(ok) - len(kept) if finding else 0, len(kept),
                                         finding, present if finding else None)
        st.success(text, icon=":material/check_circle:")  # Markdown with the finding escaped
        if warn:
            st.warning(warn + ": " + ", ".join(md(k) for k in kept[:10]), icon=":material/warning:")
        show_upload_report(store, [(r.name, r.image_id, r.duplicate) for r in ok], key="upload_report")
    if bad:
        st.error(f"{len(bad)} file{'s' * (len(bad) != 1)} could not be imported. The others were imported.",
                 icon=":material/error:")
        st.dataframe(pd.DataFrame({"File": [r.name for r in bad], "Problem": [r.error for r in bad]}),
                     hide_index=True, width="stretch")


def _import_in_background(store: Store, files: list, label: tuple[str, int] | None, pixels: int) -> None:
    """Stage a large upload on disk and decode it in an `import` job (engine.tasks.run_import, source
    "upload"); the page then watches the job. The original names stay in this session only
    (`upload_names:<job id>`), to show them beside the job's per-file problems."""
    try:
        if label is not None:
            check_finding_name(label[0])  # before anything is written
    except ValueError as e:
        shown_error(f"Nothing was imported: {e}")
        return
    ok, folder = store_write(lambda: store.stage_upload([(f.name, f.getvalue()) for f in files]),
                             "stage the upload for the background import (nothing was imported)")
    if not ok:
        return
    n = len(files)
    params = ImportParams(source="upload", path=str(folder), label=label,
                          title=f"of {n} uploaded file{'s' * (n != 1)} ({pixels / 1e6:,.0f} megapixels)")
    ok, job_id = store_write(lambda: services().runner.submit("import", params),
                             "start the background import (nothing was imported)")
    if not ok:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)  # the staged copy would never be imported
        return
    st.session_state[f"upload_names:{job_id}"] = [f.name for f in files]
    set_watched("data", job_id)
    st.rerun()


def import_by_path_form() -> None:
    st.subheader("Import from a folder on this computer")
    st.caption("For large collections: the files are read from disk in the background, no upload needed.")
    with st.form("import_path", border=True):
        source = st.radio("What is it?", list(SOURCES), format_func=SOURCES.get, key="import_source")
        path = st.text_input("Path", placeholder="/data/chestxray/manifest.csv or /data/nih", key="import_path")
        images_root = st.text_input("PadChest only: folder holding the image sub-folders (optional)",
                                    key="import_images_root")
        mix_ok = demo_mix_confirm(services().store, "import_into_demo")
        go = st.form_submit_button("Start import", icon=":material/drive_folder_upload:")
    if go:
        if not path.strip():
            st.warning("Enter a path first.", icon=":material/warning:")
            return
        if not mix_ok:
            refuse_demo_mix()
            return
        params = ImportParams(source=source, path=path.strip(), images_root=images_root.strip() or None,
                              title=path.strip())
        ok, job_id = store_write(lambda: services().runner.submit("import", params), "start the import")
        if ok:
            set_watched("data", job_id)
            st.rerun()


def _upload_name(label: str, names: list[str] | None) -> str:
    """'file 3/x.dcm' -> the third uploaded file's original name (+ '/x.dcm'), when this session has it."""
    head, _, rest = label.partition("/")
    k = head[5:] if head.startswith("file ") else ""
    if names and k.isdigit() and 1 <= int(k) <= len(names):
        return names[int(k) - 1] + (f"/{rest}" if rest else "")
    return label


def draw_import(snap: JobSnapshot) -> None:
    """Progress of a background import (by path, or a large upload), then what it imported."""
    res = snap.result or {}
    upload = snap.params.get("source") == "upload"
    if upload:
        label = snap.params.get("label")
        st.markdown(f"**Import {md(snap.params.get('title', ''))}**, decoded in the background"
                    + (f"; labeled *{md(label[0])}: {'present' if label[1] else 'absent'}*" if label else ""))
    else:
        st.markdown(f"**Import from** {md(snap.params.get('path', ''))}")
    status_block(snap, "data")
    if snap.state != "done" or not res:
        return
    if upload:
        label = snap.params.get("label")
        text, warn = upload_label_report(int(res.get("images", 0)), int(res.get("duplicates", 0)),
                                         int(res.get("labels", 0)), int(res.get("label_kept", 0)),
                                         label[0] if label else None, bool(label[1]) if label else None)
        st.success(text, icon=":material/check_circle:")  # Markdown with the finding escaped
        if warn:
            st.warning(warn + ".", icon=":material/warning:")
        if res.get("stored"):
            names = st.session_state.get(f"upload_names:{snap.id}")
            show_upload_report(services().store, [(_upload_name(f, names), i, d) for f, i, d in res["stored"]],
                               key=f"upload_report:{snap.id}", originals=names is not None)
    else:
        st.success(f"Imported {res.get('images', 0)} new images ({res.get('duplicates', 0)} already present), "
                   f"{res.get('labels', 0)} labels, {res.get('regions', 0)} boxes/masks.",
                   icon=":material/check_circle:")
    if res.get("errors"):
        names = st.session_state.get(f"upload_names:{snap.id}") if upload else None
        rows = [[_upload_name(f, names), _upload_name(f, names) + p[len(f):] if p.startswith(f + ":") else p]
                for f, p in res["errors"]]
        n = len(rows)
        st.error(f"{n} file{'s' * (n != 1)} could not be imported. The others were imported.",
                 icon=":material/error:")
        st.dataframe(pd.DataFrame(rows, columns=["File", "Problem"]), hide_index=True, width="stretch")


def _add_finding_form(store: Store, container) -> None:
    with container.form("new_finding", border=False, clear_on_submit=True):
        name = st.text_input("Add a finding", placeholder="e.g. nodule", key="new_finding_name")
        if st.form_submit_button("Add finding", icon=":material/add:") and name.strip():
            ok, added = store_write(lambda: store.add_finding(name), "add the finding")
            if ok:
                st.session_state["label_finding"] = added
                st.rerun()


def _label_editor(store: Store, finding: str, subset: pd.DataFrame, show: str, gen: int) -> bool:
    """One page of the tick-box editor and its Save button. Returns False when a save was refused because
    another session saved first (the panel then stops drawing)."""
    start, stop = pager(len(subset), 50, key=f"label_page:{finding}:{show}")
    page = subset.iloc[start:stop]
    before = editor_rows(page, finding)
    rows = before.assign(Image=[data_uri(store.thumbnail(int(i), 96)) for i in before["id"]])
    with st.form(f"labels_form:{gen}", border=False):
        after = st.data_editor(
            rows, key=f"labels:{finding}:{show}:{start}:{gen}", hide_index=True, width="stretch",
            column_order=["Image", "name", "Present", "Absent"], disabled=["Image", "name", "id"],
            row_height=72, height=min(40 + 73 * len(rows), 760),
            column_config={
                "Image": st.column_config.ImageColumn("Image", width="small"),
                "name": st.column_config.TextColumn("Name", help="The name the image is stored under"),
                "Present": st.column_config.CheckboxColumn("Present", help=f"shows {finding}"),
                "Absent": st.column_config.CheckboxColumn("Absent", help=f"does not show {finding}"),
            },
        )
        saved = st.form_submit_button("Save labels", type="primary", icon=":material/save:")
    if not saved:
        return True
    changes, both = label_changes(before, after)
    if both:
        st.error("Ticked both Present and Absent: " + ", ".join(both[:10]) + ". Untick one and save again.",
                 icon=":material/error:")
    elif changes:
        seen = {int(r["id"]): 1 if r["Present"] else 0 if r["Absent"] else None
                for _, r in before.iterrows() if int(r["id"]) in changes}
        try:  # refused if another session saved first; a full disk or a locked database: shown, ticks kept
            ok, _ = store_write(lambda: store.set_labels(finding, changes, expected=seen),
                                "save the labels (your ticks are still in the table: press Save again)",
                                passthrough=(LabelConflictError,))
        except LabelConflictError as e:
            st.session_state["labels_gen"] = gen + 1  # the editor reloads the current labels
            shown_error(e, icon=":material/sync_problem:")
            return False
        if not ok:
            return True
        st.session_state["labels_gen"] = gen + 1
        st.toast(md(f"Saved {len(changes)} label{'s' * (len(changes) != 1)} for {finding}."))
        st.rerun()
    else:
        st.info("Nothing changed.")
    return True


def label_panel(store: Store, images: pd.DataFrame) -> None:
    if images.empty:
        st.info("No images yet: upload some in **Add images**.", icon=":material/photo_library:")
        return
    report = st.session_state.pop(CSV_REPORT, None)  # what the last "Apply labels" did (it reran the page)
    if report:
        st.success(report["text"], icon=":material/check_circle:")
        if report.get("warn"):
            st.warning(report["warn"], icon=":material/warning:")
    findings = store.findings()
    c1, c2 = st.columns([2, 3])
    _add_finding_form(store, c2)
    if not findings:
        c1.info("Add a finding first (e.g. *nodule*).", icon=":material/label:")
        _label_csv(store, images)
        return
    finding = c1.selectbox("Finding", findings, key="label_finding")
    gen = st.session_state.get("labels_gen", 0)  # bumped after each save, so the editor starts fresh
    show = c1.segmented_control("Show", ["all", "unlabeled", "present", "absent"], default="all",
                                key="label_filter", required=True)
    col = images[finding]
    sel = {"all": col.notna() | col.isna(), "unlabeled": col.isna(), "present": col == 1, "absent": col == 0}[show]
    subset = images[sel.to_numpy()]
    st.caption(f"Tick **Present** for images that show *{md(finding)}* and **Absent** for images that do not; "
               "leave both empty when unsure. Then press **Save labels**.")
    if subset.empty:
        st.info(f"No {show} images for *{md(finding)}*.", icon=":material/filter_alt_off:")
    elif not _label_editor(store, finding, subset, show, gen):
        return
    n_unlabeled = int(col.isna().sum())
    if n_unlabeled and st.button(f"Mark the {n_unlabeled} unlabeled images as absent for {md(finding)}",
                                 icon=":material/done_all:"):
        unlabeled = {int(i): None for i in images.loc[col.isna(), "id"]}  # still unlabeled when written, or refused
        ok, _ = store_write(lambda: store.set_labels(finding, dict.fromkeys(unlabeled, 0), expected=unlabeled),
                            "mark the unlabeled images absent")
        if ok:
            st.session_state["labels_gen"] = gen + 1
            st.rerun()
    _label_csv(store, images)


CSV_REPORT = "label_csv_report"  # st.session_state: the outcome of "Apply labels", shown after the rerun


def _label_csv(store: Store, images: pd.DataFrame) -> None:
    with st.expander("Label many images at once from a CSV file"):
        st.caption("One row per image: a `name` column with the file name (folders are ignored), then one column "
                   "per finding with 1 (present), 0 (absent) or blank (unknown). Other labels are kept. The whole "
                   "file is checked first and applied in one step: a file with any problem changes nothing.")
        with st.form("label_csv", clear_on_submit=True, border=False):
            f = st.file_uploader("Label CSV", type=["csv"], key="label_csv_file")
            go = st.form_submit_button("Apply labels")
    if not (go and f is not None):
        return
    try:
        labels, unmatched = labels_from_csv(f.getvalue(), images, store.name_key)
    except LabelCSVError as e:
        shown_error(f"{f.name}: {e}")
        return
    ok, n = store_write(lambda: store.set_labels_many({k: v for k, v in labels.items() if v}),
                        f"apply the labels of {f.name}")
    if not ok:
        return
    text = f"Applied labels to {n} images for {', '.join(map(md, labels))} from {md(f.name)}."
    warn = None
    if unmatched:  # names from the CSV: escaped, so a name like [x](http://...) stays text
        warn = (f"{len(unmatched)} rows match no image in the workspace: " + ", ".join(map(md, unmatched[:10]))
                + (" ..." if len(unmatched) > 10 else ""))
    st.session_state[CSV_REPORT] = {"text": text, "warn": warn}
    st.session_state["labels_gen"] = st.session_state.get("labels_gen", 0) + 1  # the editor shows the new labels
    st.rerun()  # so the panel above (findings list, editor) shows what was applied


def browse(store: Store, images: pd.DataFrame) -> None:
    if images.empty:
        st.info("No images yet: upload some in **Add images**.", icon=":material/photo_library:")
        return
    findings = store.findings()
    c1, c2 = st.columns(2)
    finding = c1.selectbox("Caption by finding", ["(none)", *findings], key="browse_finding")
    subset = images
    if finding != "(none)":
        show = c2.segmented_control("Show", ["all", "present", "absent", "unlabeled"], default="all",
                                    key="browse_filter", required=True)
        col = images[finding]
        subset = images[{"all": col.notna() | col.isna(), "present": col == 1, "absent": col == 0,
                         "unlabeled": col.isna()}[show].to_numpy()]
    start, stop = pager(len(subset), 48, key="browse_page")
    rows = subset.iloc[start:stop]
    for chunk in chunks(list(rows.itertuples(index=False)), 8):
        cols = st.columns(8)
        for c, r in zip(cols, chunk):
            cap = r.name if finding == "(none)" else f"{r.name} · {label_text(getattr(r, finding))}"
            c.image(store.thumbnail(int(r.id), 160), caption=cap, width="stretch")


def manage(store: Store, images: pd.DataFrame) -> None:
    st.subheader("Delete images")
    if images.empty:
        st.caption("No images.")
    else:
        names = dict(zip(images["id"].astype(int), images["name"]))
        with st.form("delete_images", clear_on_submit=True, border=False):
            ids = st.multiselect("Images to delete", list(names), format_func=names.get,
                                 key="delete_ids", placeholder="Type an image name (image-000123)")
            sure = st.checkbox("Yes, delete these images and their labels (other images and labels are kept)")
            go = st.form_submit_button("Delete", icon=":material/delete:")
        if go:
            if not ids:
                st.warning("Choose images first.")
            elif not sure:
                st.warning("Tick the confirmation box to delete.")
            else:
                ok, n = store_write(lambda: store.delete_images(ids), "delete the images")
                if ok:
                    st.toast(f"Deleted {n} image{'s' * (n != 1)}.")
                    st.rerun()
    st.subheader("Rename or delete a finding")
    findings = store.findings()
    if not findings:
        st.caption("No findings.")
        return
    with st.form("finding_edit", border=False):
        c1, c2 = st.columns(2)
        old = c1.selectbox("Finding", findings, key="manage_finding")
        new = c2.text_input("New name", key="manage_new_name")
        b1, b2 = st.columns(2)
        rename = b1.form_submit_button("Rename", icon=":material/edit:")
        delete = b2.form_submit_button("Delete this finding's labels", icon=":material/delete:")
    if rename:
        ok, renamed = store_write(lambda: store.rename_finding(old, new), "rename the finding")
        if ok:
            st.toast(md(f"Renamed {old} to {renamed}."))
            st.rerun()
    if delete:
        ok, _ = store_write(lambda: store.delete_finding(old), "delete the finding")
        if ok:
            st.toast(md(f"Deleted the finding {old} and its labels; the images are kept."))
            st.rerun()


# ------------------------------------------------------------------------------------------- page

svc = services()
page_header(
    "Data",
    "Import chest X-rays and mark, per finding, which images show it. Everything stays on this computer; "
    "DICOM patient tags are never stored.",
)
synthetic_notice(svc.workspace)
top = st.container()  # the summary is drawn last, so it counts what this run imported or deleted
all_images = svc.store.images()

tab_add, tab_label, tab_browse, tab_manage = st.tabs(["Add images", "Label", "Browse", "Manage"],
                                                     key="data_tab", on_change="rerun")
if tab_add.open:
    with tab_add:
        upload_form(svc.store)
        st.divider()
        import_by_path_form()
        job = watched("data", ["import"])
        if job is not None:
            watch(job, draw_import)
if tab_label.open:
    with tab_label:
        label_panel(svc.store, all_images)
if tab_browse.open:
    with tab_browse:
        browse(svc.store, all_images)
if tab_manage.open:
    with tab_manage:
        manage(svc.store, all_images)
with top:
    summary(svc.store.images(), svc.store.counts())
