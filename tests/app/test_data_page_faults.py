"""Every store write of the Data page against a full disk and a database locked by another writer (issue 22, Build 3),
through AppTest: the page shows the store's message (st.error, no traceback) and nothing in the store changed.

Faults: "full disk" makes every commit fail as SQLite does when the disk fills up ("database or disk is full", the
store turns it into DiskFullError; the same injection as tests/store/test_store.py); "locked" holds a real write
transaction (BEGIN IMMEDIATE) on a second connection, as another process writing the workspace would, with the
store's busy timeout shortened from 30 s to 0.2 s so the test does not wait.
"""
from __future__ import annotations

import io
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(autouse=True)
def _no_autopretrain(monkeypatch):
    monkeypatch.setenv("SCARCE_CXR_NO_AUTOPRETRAIN", "1")


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def svc():
    from ui.services import services

    return services()


def plain(text: str) -> str:
    """Markdown source without its backslash escapes (what the reader sees)."""
    return re.sub(r"\\(.)", r"\1", text)


def errors(at: AppTest) -> str:
    return "\n".join(plain(e.value) for e in at.error)


def page_text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [w.value for w in at.warning]
    parts += [i.value for i in at.info] + [s.value for s in at.success] + [c.value for c in at.caption]
    return "\n".join(plain(str(p)) for p in parts)


def submit(at: AppTest, label: str) -> AppTest:
    (button,) = [b for b in at.form_submit_button if b.label == label]
    return button.click().run()


def open_tab(at: AppTest, name: str) -> AppTest:
    at.session_state["data_tab"] = name  # the tabs' own key (see tests/app/test_app_pages.py: open_tab)
    return at.run()


def workspace() -> AppTest:
    """The Data page over 4 images: 2 labeled for nodule (present, absent), 2 unlabeled."""
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    store = svc().store
    for i in range(4):
        store.import_bytes(f"scan{i}.png", png(i))
    store.set_labels("nodule", {1: 1, 2: 0})
    return at.run()


def state(store) -> tuple:
    """Everything a Data-page write could change: rows of every table that holds user data, and the files."""
    with store._read() as c:
        rows = tuple(tuple(map(tuple, c.execute(q).fetchall())) for q in (
            "SELECT id, name, file FROM images ORDER BY id", "SELECT name FROM findings ORDER BY rowid",
            "SELECT image_id, finding, value FROM labels ORDER BY 1, 2", "SELECT id, kind, state FROM jobs ORDER BY id"))
    files = tuple(sorted(p.name for p in store.images_dir.iterdir()))
    staged = store.workspace / "uploads"
    return rows + (files, tuple(sorted(p.name for p in staged.iterdir())) if staged.exists() else ())


@contextmanager
def full_disk(store) -> Iterator[str]:
    def full(conn):
        raise sqlite3.OperationalError("database or disk is full")

    store._commit = full
    try:
        yield "disk full"
    finally:
        del store._commit


@contextmanager
def locked(store, monkeypatch) -> Iterator[str]:
    import engine.store.db as db

    real = db.connect

    def quick(path, timeout=None):  # the store's connect(path, timeout=...), with a 0.2 s wait for the lock
        return real(path, timeout=0.2)

    monkeypatch.setattr(db, "connect", quick)
    store.close()  # every thread's next connection gets the short timeout
    other = sqlite3.connect(store.db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the workspace's write lock
    try:
        yield "busy or locked"
    finally:
        other.execute("ROLLBACK")
        other.close()


# ------------------------------------------------------------------------------ the page's write actions
def save_labels(at: AppTest) -> None:
    open_tab(at, "Label")
    gen = at.session_state["labels_gen"] if "labels_gen" in at.session_state else 0
    at.session_state[f"labels:nodule:all:0:{gen}"] = {
        "edited_rows": {2: {"Present": True}}, "added_rows": [], "deleted_rows": []}
    submit(at, "Save labels")


def add_finding(at: AppTest) -> None:
    open_tab(at, "Label")
    at.text_input(key="new_finding_name").set_value("mass")
    submit(at, "Add finding")


def mark_unlabeled_absent(at: AppTest) -> None:
    open_tab(at, "Label")
    (button,) = [b for b in at.button if b.label.startswith("Mark the 2 unlabeled images as absent")]
    button.click().run()


def apply_label_csv(at: AppTest) -> None:
    open_tab(at, "Label")
    at.file_uploader(key="label_csv_file").set_value(
        ("labels.csv", b"name,nodule,mass\nimage-000003,1,0\nimage-000004,0,1\n", "text/csv"))
    submit(at, "Apply labels")


def rename_finding(at: AppTest) -> None:
    open_tab(at, "Manage")
    at.selectbox(key="manage_finding").set_value("nodule")
    at.text_input(key="manage_new_name").set_value("lung nodule")
    submit(at, "Rename")


def delete_finding(at: AppTest) -> None:
    open_tab(at, "Manage")
    at.selectbox(key="manage_finding").set_value("nodule")
    submit(at, "Delete this finding's labels")


def delete_images(at: AppTest) -> None:
    open_tab(at, "Manage")
    at.multiselect(key="delete_ids").set_value([1, 3])
    at.checkbox[0].check()
    submit(at, "Delete")


def upload(at: AppTest) -> None:
    open_tab(at, "Add images")
    at.file_uploader(key="upload_files").set_value([("new.png", png(50), "image/png")])
    submit(at, "Import")


def upload_in_background(at: AppTest) -> None:
    svc().store.background_upload_files = 1  # two files: staged and handed to an import job
    open_tab(at, "Add images")
    at.file_uploader(key="upload_files").set_value([(f"bg{i}.png", png(60 + i), "image/png") for i in range(2)])
    submit(at, "Import")


def import_by_path(at: AppTest, tmp: Path) -> None:
    folder = tmp / "folder"
    folder.mkdir(exist_ok=True)
    (folder / "a.png").write_bytes(png(70))
    open_tab(at, "Add images")
    at.text_input(key="import_path").set_value(str(folder))
    submit(at, "Start import")


ACTIONS: dict[str, Callable] = {
    "save labels": save_labels, "add finding": add_finding, "mark unlabeled absent": mark_unlabeled_absent,
    "apply label CSV": apply_label_csv, "rename finding": rename_finding, "delete finding": delete_finding,
    "delete images": delete_images, "upload": upload, "upload in background": upload_in_background,
    "import by path": import_by_path,
}


@pytest.mark.parametrize("fault", ["full_disk", "locked"])
@pytest.mark.parametrize("action", list(ACTIONS))
def test_page_write_under_fault_shows_the_message_and_changes_nothing(action, fault, monkeypatch, tmp_path):
    at = workspace()
    store = svc().store
    before = state(store)
    fault_cm = full_disk(store) if fault == "full_disk" else locked(store, monkeypatch)
    with fault_cm as expected:
        do = ACTIONS[action]
        do(at, tmp_path) if action == "import by path" else do(at)
    assert not at.exception, [e.value for e in at.exception]
    msg = errors(at)
    assert expected in msg, (action, fault, msg)
    assert "nothing was" in msg.lower(), msg  # says what it left as it was
    assert state(store) == before, (action, fault)
    # the same action once the fault is gone goes through: the page was left usable
    do(at, tmp_path) if action == "import by path" else do(at)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, errors(at)
    assert state(store) != before, action


def test_a_label_csv_with_an_invalid_column_writes_nothing_and_names_every_problem():
    at = workspace()
    store = svc().store
    before = state(store)
    open_tab(at, "Label")
    csv = ('name,mass,effusion/pleural,"=HYPERLINK(""http://evil.example"",""x"")",nodule\n'
           "image-000001,1,1,1,1\nimage-000002,0,0,0,maybe\n").encode()
    at.file_uploader(key="label_csv_file").set_value(("labels.csv", csv, "text/csv"))
    submit(at, "Apply labels")
    assert not at.exception, [e.value for e in at.exception]
    msg = errors(at)
    assert "labels.csv: nothing was labeled" in msg
    assert "'effusion/pleural' is not a valid finding name" in msg and "=HYPERLINK" in msg
    assert "column 'nodule' has unknown label values 'maybe' (line 3)" in msg
    assert state(store) == before  # not even the valid 'mass' column was applied
    raw = "\n".join(e.value for e in at.error)
    assert "](http" not in raw.replace("\\]\\(", "")  # the hostile header is shown escaped, never as a link


def test_after_apply_labels_the_panel_shows_the_new_findings_and_unmatched_names_stay_text():
    """Issue 22 "seen" 3: the label panel kept saying "Add a finding first" after a CSV added findings."""
    at = AppTest.from_file(APP, default_timeout=120).run()
    store = svc().store
    for i in range(3):
        store.import_bytes(f"scan{i}.png", png(i))
    at.run()
    open_tab(at, "Label")
    assert "Add a finding first" in page_text(at)
    hostile = "[click me](http://evil.example/x) ![t](http://evil.example/t.png)"
    csv = f'name,pneumothorax\nimage-000001,1\nimage-000002,0\n"{hostile}",1\n'.encode()
    at.file_uploader(key="label_csv_file").set_value(("labels.csv", csv, "text/csv"))
    submit(at, "Apply labels")
    assert not at.exception, [e.value for e in at.exception]
    text = page_text(at)
    assert "Add a finding first" not in text
    assert at.selectbox(key="label_finding").value == "pneumothorax"  # the editor of the new finding is shown
    assert "Applied labels to 2 images for pneumothorax from labels.csv." in text
    assert store.counts()["pneumothorax"] == {"positive": 1, "negative": 1, "unknown": 1}
    (warn,) = [w.value for w in at.warning if "match no image" in w.value]
    assert plain(warn).replace("\u2060", "").endswith(hostile)  # the name is shown as written (+ invisible joiners)...
    assert "](" not in warn.replace("\\]\\(", "") and "![" not in warn.replace("\\!\\[", "")  # ... as text


def test_the_upload_report_lists_each_file_with_its_stored_name_and_offers_a_csv():
    at = AppTest.from_file(APP, default_timeout=120).run()
    store = svc().store
    store.import_bytes("earlier.png", png(1))
    at.file_uploader(key="upload_files").set_value([
        ("SMITH_JOHN_MRN123.png", png(2), "image/png"), ("=cmd.png", png(3), "image/png"),
        ("copy-of-earlier.png", png(1), "image/png")])
    submit(at, "Import")
    assert not at.exception, [e.value for e in at.exception]
    (report,) = [d.value for d in at.dataframe if "Stored as" in d.value.columns]
    assert report.to_dict("list") == {
        "Uploaded file": ["SMITH_JOHN_MRN123.png", "=cmd.png", "copy-of-earlier.png"],
        "Stored as": ["image-000002", "image-000003", "image-000001"],
        "Status": ["new", "new", "already in the workspace"]}
    assert set(store.images()["name"]) == {"image-000001", "image-000002", "image-000003"}  # names not stored
    (download,) = [b for b in at.get("download_button") if "CSV" in b.proto.label]
    assert download.proto.label == "Download as CSV"
    assert "the report below lists each file's name with the name it was stored under" in page_text(at)


def test_a_background_upload_reports_stored_names_too():
    at = AppTest.from_file(APP, default_timeout=120).run()
    s = svc()
    s.store.background_upload_files = 1
    at.file_uploader(key="upload_files").set_value([("DOE_A.png", png(5), "image/png"),
                                                    ("DOE_B.png", png(6), "image/png")])
    submit(at, "Import")
    (job,) = [j for j in s.runner.jobs() if j.kind == "import"]
    assert s.runner.wait(job.id, timeout=120).state == "done"
    assert "DOE" not in str(s.store.job(job.id))  # the job row holds "file <k>", never the names
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (report,) = [d.value for d in at.dataframe if "Stored as" in d.value.columns]
    assert report["Uploaded file"].tolist() == ["DOE_A.png", "DOE_B.png"]  # this session still has the names
    assert report["Stored as"].tolist() == ["image-000001", "image-000002"]


@pytest.mark.parametrize("fault", ["full_disk", "locked"])
def test_a_job_started_from_another_page_under_fault_is_reported(fault, monkeypatch):
    """The other pages submit their jobs through ui.jobs.start_job: a refused job row is a message too."""
    at = workspace()
    store = svc().store
    store.set_labels("nodule", {3: 1, 4: 0})
    at.switch_page("app_pages/gradcam.py").run()
    assert not at.exception, [e.value for e in at.exception]
    before = state(store)
    with (full_disk(store) if fault == "full_disk" else locked(store, monkeypatch)) as expected:
        at.button(key="gc_go_one").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Could not start the job: " in errors(at) and expected in errors(at)
    assert state(store) == before


def test_write_error_messages_say_what_happened_and_that_nothing_changed():
    import errno

    from engine.store import LabelConflictError
    from ui.store_writes import write_error_message

    full = OSError(errno.ENOSPC, "No space left on device", "/ws/.writers/1.writer")
    assert write_error_message("save the labels", full) == (
        "Could not save the labels: No space left on device (/ws/.writers/1.writer); disk full: free space on that "
        "disk (delete old runs, results or caches) and retry; nothing was changed.")
    gone = OSError(errno.EROFS, "Read-only file system", "/ws/store.sqlite")
    assert "Read-only file system (/ws/store.sqlite); check that the workspace folder exists and is writable" \
        in write_error_message("add the finding", gone)
    assert write_error_message("rename the finding", KeyError("unknown finding 'x'")) == (
        "Could not rename the finding: unknown finding 'x'; nothing was changed.")
    assert "database is locked" in write_error_message("x", sqlite3.OperationalError("database is locked"))
    conflict = LabelConflictError("nodule", {3: ("image-000003", 0, 1)})
    assert write_error_message("save", conflict).endswith("nothing was saved. Reload to see the current labels, "
                                                          "then make your changes again.")
