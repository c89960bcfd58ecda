"""The Benchmark page's study section through AppTest: form -> `study` job -> report sections, ZIP;
refusals before any job starts; the job's checkpoint reservation at submit."""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


@pytest.fixture(autouse=True)
def _no_autopretrain(monkeypatch):
    monkeypatch.setenv("SCARCE_CXR_NO_AUTOPRETRAIN", "1")


@pytest.fixture(scope="module")
def phantom_csv(phantom_set) -> Path:
    return phantom_set(40, 64, 3, findings=("nodule",), prevalence=0.5)


def services():
    from ui.services import services as svc

    return svc()


def submit(at: AppTest, label: str) -> AppTest:
    (button,) = [b for b in at.form_submit_button if b.label == label]
    return button.click().run()


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def test_benchmark_page_runs_a_study_and_shows_its_report(phantom_csv):
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page("app_pages/benchmark.py").run()
    assert "The whole study" in [s.value for s in at.subheader]
    assert "needs images labeled" in "\n".join(i.value for i in at.info)  # empty workspace: no form
    services().store.import_manifest(phantom_csv)
    at.run()
    at.multiselect(key="st_methods").set_value([])
    submit(at, "Run the study")
    assert "Choose at least a method" in texts(at) and not services().runner.jobs()

    at.multiselect(key="st_methods").set_value(["moco_v2"])
    at.multiselect(key="st_findings").set_value(["nodule"])
    at.number_input(key="st_steps").set_value(10)
    at.select_slider(key="st_size").set_value(64)
    at.number_input(key="st_trials").set_value(2)
    at.number_input(key="st_cams").set_value(1)
    at.selectbox(key="st_batch").set_value(8)  # 10 steps of 8 images, not of 32 (the CPU default)
    at.multiselect(key="st_shots").set_value([2, 5])
    at.text_input(key="st_name").set_value("pg")
    submit(at, "Run the study")
    runner = services().runner
    (job,) = runner.jobs()
    assert job.kind == "study" and job.params["methods"] == ["moco_v2"]
    # the backbone name is held for this job from submit on: a second study with it is refused
    submit(at, "Run the study")
    shown = "\n".join(re.sub(r"\\(.)", r"\1", e.value) for e in at.error)  # user text is shown Markdown-escaped
    assert "pg-moco_v2" in shown and len(runner.jobs()) == 1
    snap = runner.wait(job.id, timeout=600)
    assert snap.state == "done", (snap.state, snap.error)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (res,) = services().store.results(kind="study")
    assert res["summary"]["config"]["methods"] == ["moco_v2"]
    md = "\n".join(m.value for m in at.markdown)
    assert "#### Pretraining" in md and "#### Few-shot AUC" in md and "#### Grad-CAM localization" in md
    tables = [d.value for d in at.dataframe]
    appendix = next(t for t in tables if "2-shot" in t.columns)
    assert set(appendix["init"]) == {"random", "imagenet", "pg-moco_v2"} and "±" in appendix["2-shot"].iloc[-1]
    assert any("pointing_hit" in t.columns for t in tables)
    assert "Skipped (imagenet): " in texts(at)  # the sweep's reason, not only "skipped" cells
    assert len(at.get("plotly_chart")) >= 2  # collapse history, AUC vs shots
    assert any(c.startswith("grid_") for img in at.image for c in img.captions)  # the Grad-CAM grids
    from engine.models.registry import checkpoints_made_in

    assert "pg-moco_v2" in [i.name for i in checkpoints_made_in(services().workspace)]  # trained in this workspace
    assert any("Download the study" in b.label for b in at.download_button)
    from ui.study import _zip

    names = zipfile.ZipFile(io.BytesIO(_zip(Path(res["path"])))).namelist()
    assert {"report.html", "report.md", "study.json", "sweeps/workspace/summary.csv"} <= set(names)
    assert not any(n.startswith("runs/") or "/." in n or n.startswith(".") for n in names)
