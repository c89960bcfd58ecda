"""Issue 14 item 6: a large upload is decoded by the background `import` job, with progress.

The Data page stages the upload (`Store.stage_upload`) and submits `import` with source "upload";
`engine.tasks.run_import` imports it through `Store.import_staged`: images and labels commit together,
progress counts images (ZIP members each), per-file problems come back under `file <k>`, and the
original file names (which may hold a patient's name) are stored nowhere: not in the job's params,
result or events, and the staging folder is deleted once imported.
"""
from __future__ import annotations

import io
import json
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine import tasks
from engine.events import Cancelled
from engine.jobs import JobRunner
from engine.store import Store

PHI = "SMITH_JOHN_MRN12345"


def _png(seed: int, size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _upload() -> list[tuple[str, bytes]]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/one.png", _png(10))
        z.writestr("a/two.png", _png(11))
    return [(f"{PHI}_{i}.png", _png(i)) for i in range(3)] + [(f"{PHI}.zip", buf.getvalue()),
                                                              (f"{PHI}_notes.png", b"not an image at all")]


def test_upload_job_imports_labels_reports_progress_and_stores_no_file_name(tmp_path):
    store = Store(tmp_path / "ws")
    runner = JobRunner(store, device="cpu")
    runner.register("import", tasks.run_import, uses_gpu=False)
    try:
        files = _upload()
        folder = store.stage_upload(files)
        assert sorted(p.name for p in folder.iterdir()) == [f"{i:05d}.bin" for i in range(5)] + ["names.json"]
        jid = runner.submit("import", {"source": "upload", "path": str(folder), "label": ["nodule", 1],
                                       "title": "of 5 uploaded files"})
        snap = runner.wait(jid, timeout=120)
        assert snap.state == "done", snap.error
        res = snap.result
        assert res["images"] == 5 and res["duplicates"] == 0 and res["labels"] == 5
        assert res["errors"] == [["file 5", res["errors"][0][1]]] and res["errors"][0][1].startswith("file 5: ")
        assert (snap.step, snap.total) == (6, 6)  # 3 files + 2 ZIP members + 1 bad file
        steps = [e["step"] for e in store.events(jid) if e["kind"] == "progress" and e["step"] is not None]
        assert steps == sorted(steps) and steps[-1] == 6
        assert store.counts()["nodule"] == {"positive": 5, "negative": 0, "unknown": 0}
        assert not folder.exists()  # the staged bytes and their names are gone
        stored = json.dumps([store.job(jid), store.events(jid)]) + json.dumps(store.images().astype(str).values.tolist())
        assert PHI not in stored
        # the same name matches through the keyed hash, as for uploads decoded in the request
        assert store.name_key(f"{PHI}_0.png") in set(store.images()["name_key"])
        gone = runner.submit("import", {"source": "upload", "path": str(folder), "label": None})
        snap = runner.wait(gone, timeout=60)
        assert snap.state == "failed" and "upload them again" in snap.error
    finally:
        runner.shutdown()
        store.close()


def test_staged_upload_stops_between_files_keeps_the_folder_and_a_retry_finishes(tmp_path):
    with Store(tmp_path / "ws") as store:
        folder = store.stage_upload(_upload())
        stop = threading.Event()

        def on_event(ev):
            if ev.kind == "progress" and ev.step == 1:
                stop.set()

        with pytest.raises(Cancelled):
            store.import_staged(folder, label=("nodule", 0), on_event=on_event, stop=stop)
        assert folder.exists() and len(store.images()) == 1
        res = store.import_staged(folder, label=("nodule", 0))  # Retry: the first is a duplicate now
        assert sum(r.duplicate for r in res) == 1 and sum(r.error is None for r in res) == 5
        assert [r.name for r in res if r.error] == ["file 5"]
        assert {r.name for r in res} >= {"file 4/a/one.png", "file 4/a/two.png"}
        assert store.counts()["nodule"]["negative"] == 5 and not folder.exists()
        with pytest.raises(FileNotFoundError, match="upload the files again"):
            store.import_staged(folder)


def test_which_uploads_go_to_the_background(tmp_path):
    with Store(tmp_path / "ws") as store:
        assert not store.upload_in_background(50, 200_000_000)
        assert store.upload_in_background(51, 1)
        assert store.upload_in_background(1, 200_000_001)
        small = [(f"x{i}.png", _png(i)) for i in range(3)]
        assert store.check_upload(small) == 3 * 32 * 32
