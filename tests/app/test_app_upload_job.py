"""Data page: a large upload (more than Store.background_upload_files files) is decoded by the background
`import` job with live progress, not inside the page request (issue 14 item 6), through AppTest."""
from __future__ import annotations

import io
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
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def submit(at: AppTest, label: str) -> AppTest:
    """Click the one form submit button labeled `label` (AppTest.form_submit_button) and rerun."""
    (button,) = [b for b in at.form_submit_button if b.label == label]
    return button.click().run()


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [w.value for w in at.warning]
    parts += [s.value for s in at.success] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def test_a_large_upload_runs_as_an_import_job_with_progress_labels_and_named_problems():
    from ui.services import services

    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    svc = services()
    svc.store.add_finding("nodule")
    at.run()
    n = svc.store.background_upload_files + 1
    items = [(f"img{i:03d}.png", _png(i), "image/png") for i in range(n)]
    items.append(("DOE_JANE_MRN999.png", b"plain text, not a PNG", "image/png"))
    at.file_uploader(key="upload_files").set_value(items)
    at.selectbox(key="upload_finding").set_value("nodule")
    at.radio(key="upload_value").set_value("show the finding")
    submit(at, "Import")
    assert not at.exception, [e.value for e in at.exception]
    jobs = [j for j in svc.runner.jobs() if j.kind == "import"]
    assert len(jobs) == 1 and jobs[0].params["source"] == "upload"
    assert "DOE_JANE" not in str(jobs[0].params)  # names stay in the session, not in the job
    msg = _texts(at)
    assert f"Import of {n + 1} uploaded files" in msg and "decoded in the background" in msg
    assert "labeled *nodule: present*" in msg
    snap = svc.runner.wait(jobs[0].id, timeout=120)
    assert snap.state == "done", snap.error
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    msg = _texts(at)
    assert f"Imported {n} new images and labeled them *nodule: present*." in msg  # all {n} got the label
    assert "1 file could not be imported" in msg
    problems = at.dataframe[-1].value
    assert list(problems["File"]) == ["DOE_JANE_MRN999.png"]  # the original name, shown in this session
    assert problems["Problem"][0].startswith("DOE_JANE_MRN999.png: ")
    assert svc.store.counts()["nodule"]["positive"] == n and len(svc.store.images()) == n
    assert "More than 50 files or 200 megapixels are decoded in the background" in msg


def test_a_small_upload_is_still_decoded_in_the_request():
    from ui.services import services

    at = AppTest.from_file(APP, default_timeout=120).run()
    at.file_uploader(key="upload_files").set_value([(f"s{i}.png", _png(100 + i), "image/png") for i in range(3)])
    submit(at, "Import")
    assert not at.exception, [e.value for e in at.exception]
    assert "Imported 3 new images" in _texts(at)
    assert not [j for j in services().runner.jobs() if j.kind == "import"]


def test_an_upload_over_the_pixel_budget_is_refused_before_any_decoding_or_job():
    from ui.services import services

    at = AppTest.from_file(APP, default_timeout=120).run()
    svc = services()
    svc.store.max_upload_pixels = 2 * 16 * 16 - 1  # this store's budget: two 16x16 images are too many
    at.file_uploader(key="upload_files").set_value([(f"t{i}.png", _png(200 + i), "image/png") for i in range(2)])
    submit(at, "Import")
    assert not at.exception, [e.value for e in at.exception]
    assert "nothing was imported" in _texts(at) and "gigapixels" in _texts(at)
    assert len(svc.store.images()) == 0 and not [j for j in svc.runner.jobs() if j.kind == "import"]
