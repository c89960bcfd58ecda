"""Data page: a small ZIP holding more images than Store.background_upload_files is decoded by the
background `import` job (progress, cancel), like as many separate files (issue 22, Build 4), through AppTest."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(autouse=True)
def _no_autopretrain(monkeypatch):
    monkeypatch.setenv("SCARCE_CXR_NO_AUTOPRETRAIN", "1")


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_a_small_zip_of_many_images_is_imported_by_the_background_job():
    from ui.services import services

    at = AppTest.from_file(APP, default_timeout=120).run()
    svc = services()
    n = svc.store.background_upload_files + 5
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n):
            zf.writestr(f"cd/IM{i:06d}", _png(i))
    at.file_uploader(key="upload_files").set_value([("series.zip", buf.getvalue(), "application/zip")])
    (button,) = [b for b in at.form_submit_button if b.label == "Import"]
    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    jobs = [j for j in svc.runner.jobs() if j.kind == "import"]
    assert len(jobs) == 1 and jobs[0].params["source"] == "upload"  # one file, but n images: a job
    snap = svc.runner.wait(jobs[0].id, timeout=120)
    assert snap.state == "done", snap.error
    assert (snap.step, snap.total) == (n, n)  # progress counted the archive's images
    assert len(svc.store.images()) == n
