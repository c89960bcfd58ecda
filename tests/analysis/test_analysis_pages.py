"""The pages' parts of issue 16 items 3-4, through streamlit's AppTest (CPU, tiny sizes): the Pretrain page's
study metrics (raw std, random-pair cosine, centred effective rank) and the Benchmark page's dataset
similarity section (form -> `similarity` job -> sentence, layer plot, table; its error paths)."""
from __future__ import annotations

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
    return phantom_set(24, 64, 2)


def services():
    from ui.services import services as svc

    return svc()


def start(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def wait_all() -> None:
    runner = services().runner
    for j in runner.jobs():
        snap = runner.wait(j.id, timeout=300)
        assert snap.state == "done", (snap.kind, snap.state, snap.error)


def submit(at: AppTest, label: str) -> AppTest:
    """Click the one form submit button labeled `label` (AppTest.form_submit_button) and rerun."""
    (button,) = [b for b in at.form_submit_button if b.label == label]
    return button.click().run()


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [w.value for w in at.warning]
    parts += [i.value for i in at.info] + [s.value for s in at.success] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def test_pretrain_page_shows_the_studys_metrics_live_and_in_the_backbones_table(phantom_csv):
    at = start("app_pages/pretrain.py")
    services().store.import_manifest(phantom_csv)
    at.run()
    at.selectbox(key="pt_method").set_value("barlow_twins")
    at.number_input(key="pt_epochs").set_value(1)
    at.selectbox(key="pt_batch").set_value(8)
    at.selectbox(key="pt_size").set_value(64)
    at.text_input(key="pt_name").set_value("bt-study")
    submit(at, "Start pretraining")
    wait_all()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("study's metrics" in e.label for e in at.expander)
    study = next(d.value for d in at.dataframe if "Raw feature std" in d.value.columns)
    assert list(study["Features"]) == ["head (the loss's space)", "backbone (pooled)"]
    assert {"Mean cosine of random pairs", "Effective rank (centred)", "Effective rank (uncentred, RankMe)"} <= set(study.columns)
    assert study["Effective rank (centred)"].notna().all() and (study["Raw feature std"] > 0).all()
    assert len(at.get("plotly_chart")) >= 3  # loss, product collapse panels, the study's panels
    backbones = at.dataframe[-1].value
    row = backbones[backbones["Name"] == "bt-study"].iloc[0]
    assert row["Centred eff. rank (study)"] > 0 and row["Raw std (study)"] > 0
    assert "seed study's terms" in texts(at)


def test_benchmark_page_compares_the_workspace_with_pools_and_reports_errors(phantom_csv):
    at = start("app_pages/benchmark.py")
    assert "Dataset similarity" in [s.value for s in at.subheader]
    # a missing candidate and a missing reference path are refused before any job starts
    at.selectbox(key="sim_ref").set_value("path")
    submit(at, "Compare")
    assert "enter at least one candidate" in texts(at) and "enter the reference path" in texts(at)
    assert not services().runner.jobs()

    services().store.import_manifest(phantom_csv)
    at.run()
    folder = phantom_csv.parent / "images"
    at.selectbox(key="sim_init").set_value("random")
    at.selectbox(key="sim_ref").set_value("all")
    at.text_area(key="sim_cands").set_value(f"phantoms={folder}\n{phantom_csv}")
    at.multiselect(key="sim_layers").set_value(["layer1", "layer4"])
    at.number_input(key="sim_n").set_value(10)
    at.select_slider(key="sim_size").set_value(64)
    at.number_input(key="sim_grid").set_value(2)
    submit(at, "Compare")
    wait_all()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    res = services().store.results(kind="similarity")
    assert len(res) == 1 and res[0]["summary"]["settings"]["layers"] == ["layer1", "layer4"]
    assert any("Closest to workspace" in s.value for s in at.success)
    table = at.dataframe[-1].value
    assert {"Rank", "Pool", "Mean SVCCA", "Chance (mean)", "layer1", "layer4"} <= set(table.columns)
    assert set(table["Pool"]) == {"phantoms", phantom_csv.parent.name}
    assert ((table["layer1"] > 0) & (table["layer1"] <= 1)).all()
    assert len(at.get("plotly_chart")) >= 1 and len(at.download_button) >= 1

    # a pool that does not exist: the job fails and says which path
    at.text_area(key="sim_cands").set_value("/nowhere/pool")
    submit(at, "Compare")
    runner = services().runner
    job = max(runner.jobs(), key=lambda j: j.id)
    assert runner.wait(job.id, timeout=120).state == "failed"
    at.run()
    assert "\\/nowhere\\/pool" in texts(at) and "does not exist" in texts(at)  # the path, escaped as Markdown
