"""One id scheme (issue 22, Build 2): the Grad-CAM study's grids and rows name each image by its stored name
(`image-000042`, as the Data, Classifier and Grad-CAM pages list it), never by its pixel hash."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(autouse=True)
def _no_autopretrain(monkeypatch):
    monkeypatch.setenv("SCARCE_CXR_NO_AUTOPRETRAIN", "1")


def test_gradcam_study_grids_carry_the_stored_image_names(tmp_path):
    from engine.data.phantom import generate
    from ui.services import services

    csv = generate(tmp_path / "phantom", n=24, size=64, seed=3)
    at = AppTest.from_file(APP, default_timeout=120).run()
    svc = services()
    svc.store.import_manifest(csv)  # phantoms with nodule labels (stored as image-<id>)
    at.switch_page("app_pages/gradcam.py").run()
    at.multiselect(key="gc_inits").set_value(["random"])
    at.segmented_control(key="gc_kind").set_value("A finding's held-out positives").run()
    finding = at.selectbox(key="gc_finding").value
    at.number_input(key=f"gc_shots:{finding}").set_value(2)
    at.number_input(key="gc_n").set_value(2)
    at.button(key="gc_go_study").click().run()
    (job,) = [j for j in svc.runner.jobs() if j.kind == "gradcam"]
    snap = svc.runner.wait(job.id, timeout=300)
    assert snap.state == "done", snap.error
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (res,) = svc.store.results(kind="gradcam")
    grids = [Path(g).name for g in res["summary"]["grids"]]
    stored = set(svc.store.images()["name"])
    assert len(grids) == 2 and all(re.fullmatch(r"grid_image-\d{6}\.png", g) for g in grids), grids
    assert {g.removeprefix("grid_").removesuffix(".png") for g in grids} <= stored
    loc = pd.read_csv(res["summary"]["localization_csv"])
    assert set(loc["image"]) == {g.removeprefix("grid_").removesuffix(".png") for g in grids}
    assert not any(re.search(r"[0-9a-f]{64}", str(v)) for v in loc["image"])  # no pixel hash as a name
    # the page captions each grid with its rows (matched by that name)
    assert sum("Random weights" in c.value for c in at.caption) >= 2
