"""The workspace is part of the address (?ws=<name>) and every form's state belongs to one workspace
(issue 22): a new session (reload, deep link, new window) lands in the URL's workspace, an unknown name
falls back to the default with a message, switching re-initializes the forms, the sidebar shows jobs of
every workspace with links to them, and the Pretrain form counts the images its run will use.

AppTest, tiny phantoms (64 px), CPU; each test has its own folders (tests/conftest.py).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine import paths
from engine.store import Store

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
TIMEOUT = 120


@pytest.fixture(autouse=True)
def _no_autopretrain(monkeypatch):
    monkeypatch.setenv("SCARCE_CXR_NO_AUTOPRETRAIN", "1")


@pytest.fixture(scope="module")
def phantom_csv(tmp_path_factory) -> Path:
    """A 40-image phantom manifest at 64 px (split column: ~25% test; 0/1 columns per finding)."""
    from engine.data.phantom import generate

    return generate(tmp_path_factory.mktemp("phantom"), n=40, size=64, seed=1)


def default_ws() -> Path:
    return Path(os.environ["SCARCE_CXR_WORKSPACE"])


def workspace(name: str | None, csv: Path, rows: slice, finding: str, relabel: str | None = None) -> Path:
    """A workspace (the default one for name=None) holding `rows` of the phantom, labeled for `finding`
    (stored under the name `relabel` when given)."""
    ws = default_ws() if name is None else default_ws().parent / name
    ws.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(csv).iloc[rows]
    with Store(ws) as store:
        ids = [r.image_id for r in store.import_paths([str(csv.parent / p) for p in df["path"]])]
        store.set_labels(relabel or finding, {i: float(v) for i, v in zip(ids, df[finding])})
    return ws


def app(ws: str | None = None, page: str | None = None) -> AppTest:
    """A new browser session (a reload, a deep link or a new window): `?ws=` and the first page."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if ws is not None:
        at.query_params["ws"] = ws
    if page:
        at.switch_page(page)
    return ok(at.run())


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def url_ws(at: AppTest) -> str | None:
    """The address's ?ws= after the run (AppTest keeps a value the app wrote as a list)."""
    v = at.query_params.get("ws")
    return v[-1] if isinstance(v, list) else v


def sidebar_text(at: AppTest) -> str:
    return "\n".join(c.value for c in at.sidebar.caption)


def links(at: AppTest) -> list:
    return [e.proto for e in at.get("page_link")]


def test_the_address_names_the_workspace_for_reload_deep_link_and_new_window(phantom_csv):
    workspace(None, phantom_csv, slice(0, 3), "nodule")
    clinic = workspace("clinic", phantom_csv, slice(3, 10), "nodule", relabel="effusion")
    # a deep link as the first request of a new window: /classifier?ws=clinic
    at = app("clinic", "app_pages/classifier.py")
    assert at.session_state["active_workspace"] == str(clinic)
    assert str(clinic) in sidebar_text(at) and "7 images" in sidebar_text(at)
    assert at.selectbox(key="clf_finding").value == "effusion"  # the clinic's findings, not the default's
    assert url_ws(at) == "clinic"
    # every menu link and page link keeps the workspace in the address
    nav = [p for p in links(at) if p.label in ("Data", "Pretrain", "Classifier", "Benchmark", "Grad-CAM")]
    assert len(nav) == 5 and {p.query_string for p in nav} == {"ws=clinic"}
    # a reload (a fresh session with the same address) lands there again; no ws: the default, and the URL says so
    assert app("clinic").session_state["active_workspace"] == str(clinic)
    at = app()
    assert at.session_state["active_workspace"] == str(default_ws()) and "3 images" in sidebar_text(at)
    assert url_ws(at) == default_ws().name


@pytest.mark.parametrize("asked", ["nope", "../clinic", "[x](http://example.com)"])
def test_an_unknown_workspace_in_the_address_says_so_and_falls_back(phantom_csv, asked):
    workspace(None, phantom_csv, slice(0, 3), "nodule")
    workspace("clinic", phantom_csv, slice(3, 5), "nodule")
    at = app(asked, "app_pages/pretrain.py")
    (msg,) = [w.value for w in at.warning if "no workspace" in w.value]
    assert "Workspaces here: `clinic`, `workspace`" in msg and f"workspace `{default_ws().name}`" in msg
    assert ("`nope`" in msg) == (asked == "nope") and "http" not in msg and ".." not in msg  # nothing hostile echoed
    assert at.session_state["active_workspace"] == str(default_ws())
    assert url_ws(at) == default_ws().name and "3 images" in sidebar_text(at)
    assert at.text_input(key="pt_name").value.endswith(f"-{default_ws().name}")


def test_switching_workspace_updates_the_address_and_reinitializes_every_form(phantom_csv):
    workspace(None, phantom_csv, slice(0, 12), "nodule")
    clinic = workspace("clinic", phantom_csv, slice(12, 40), "nodule", relabel="effusion")
    # what a new session in each workspace proposes (shots: from that workspace's counts)
    fresh = {name: app(name, "app_pages/benchmark.py") for name in (default_ws().name, "clinic")}
    shots = {name: at.multiselect(key="bm_shots").value for name, at in fresh.items()}
    assert shots["clinic"] != shots[default_ws().name]
    at = app(None, "app_pages/pretrain.py")
    assert at.text_input(key="pt_name").value == "moco_v2-resnet18-workspace"
    at.number_input(key="pt_epochs").set_value(7).run()
    at.selectbox(key="ws_pick").set_value(str(clinic))
    ok(at.run())
    assert url_ws(at) == "clinic" and at.session_state["active_workspace"] == str(clinic)
    assert at.text_input(key="pt_name").value == "moco_v2-resnet18-clinic"  # not the previous workspace's proposal
    assert at.number_input(key="pt_epochs").value == 20
    ok(at.switch_page("app_pages/benchmark.py").run())
    assert at.multiselect(key="bm_findings").value == ["effusion"]
    assert at.multiselect(key="bm_shots").value == shots["clinic"]
    assert at.multiselect(key="st_findings").value == ["effusion"]
    assert at.multiselect(key="st_shots").value == shots["clinic"]
    # back to the default one through the address (a menu or job link): its own findings and shot counts again
    at.query_params["ws"] = default_ws().name
    ok(at.run())
    assert at.multiselect(key="bm_findings").value == at.multiselect(key="st_findings").value == ["nodule"]
    assert at.multiselect(key="bm_shots").value == at.multiselect(key="st_shots").value == shots[default_ws().name]


def test_the_sidebar_shows_running_jobs_of_every_workspace_with_a_link(phantom_csv):
    from ui.services import _open

    workspace(None, phantom_csv, slice(0, 3), "nodule")
    clinic = workspace("clinic", phantom_csv, slice(3, 6), "nodule")
    release, started = threading.Event(), threading.Event()

    def hold(params, ctx):  # a job that runs until the test lets it finish
        started.set()
        while not (release.is_set() or ctx.stop.is_set()):
            release.wait(0.05)
        return {}

    runner = _open(str(clinic), str(paths.checkpoints_dir())).runner  # the server's runner of that workspace
    runner.register("import", hold, uses_gpu=False)
    job = runner.submit("import", {"title": "held"})
    try:
        assert started.wait(30)
        at = app()  # a session in the default workspace sees the clinic's job, with a link into the clinic
        bars = [p.proto.text for p in at.sidebar.get("progress")]
        assert any("Import held" in t and "running" in t for t in bars), bars
        (link,) = [p for p in links(at) if "workspace clinic" in p.label]
        assert link.query_string == "ws=clinic" and link.label == "Open on Data (workspace clinic)"
        # a reload in the clinic (the link's address) shows it as this workspace's running job
        at = app("clinic")
        assert any("Import held" in p.proto.text for p in at.sidebar.get("progress"))
        assert [p.label for p in links(at) if p.label.startswith("Open on")] == ["Open on Data (this workspace)"]
    finally:
        release.set()
        assert runner.wait(job, timeout=60).state == "done"
    assert "None running." in sidebar_text(app())


def test_pretrain_form_counts_the_images_the_run_uses(phantom_csv):
    ws = default_ws()
    ws.mkdir(parents=True, exist_ok=True)
    with Store(ws) as store:
        store.import_manifest(phantom_csv)
        images = store.images()
    n_test = int((images["split"] == "test").sum())
    used = len(images) - n_test
    labeled = int(((images["split"] != "test") & images["nodule"].notna()).sum())
    assert 0 < n_test < len(images)
    at = app(None, "app_pages/pretrain.py")
    sets = at.selectbox(key="pt_set").options
    assert f"All workspace images ({used}; {n_test} test-split images left out)" in sets, sets
    assert f"Images labeled for nodule ({labeled}; test split left out)" in sets, sets
    at.selectbox(key="pt_method").set_value("barlow_twins")
    at.number_input(key="pt_epochs").set_value(1)
    at.selectbox(key="pt_batch").set_value(16)
    at.selectbox(key="pt_size").set_value(64)
    (go,) = [b for b in at.form_submit_button if b.label == "Start pretraining"]
    ok(go.click().run())
    from ui.services import services

    runner = services().runner
    (job,) = runner.jobs()
    snap = runner.wait(job.id, timeout=300)
    assert snap.state == "done", snap.error
    assert snap.result["n_images"] == used  # the run trained on exactly the images the form counted


def _fragment_rerun() -> None:
    """What a sidebar/job fragment's timed rerun does first (AppTest runs it as a plain script)."""
    from ui.services import keep_workspace_in_url

    keep_workspace_in_url()


def test_a_timed_fragment_rerun_with_the_old_address_puts_the_sessions_workspace_back(phantom_csv):
    """A fragment rerun sent just before a click on a link to another workspace carries the old `?ws=`; the
    session already shows the new workspace, so the fragment writes it back into the address (CI once saw
    the URL stuck on the old workspace while the page showed the new one)."""
    from ui.services import ACTIVE_KEY

    clinic = workspace("clinic", phantom_csv, slice(0, 8), "nodule")
    at = AppTest.from_function(_fragment_rerun, default_timeout=TIMEOUT)
    at.session_state[ACTIVE_KEY] = str(clinic)
    at.query_params["ws"] = default_ws().name  # the stale address of the fragment's request
    ok(at.run())
    assert url_ws(at) == "clinic"
    at.query_params["ws"] = "clinic"  # already right: left as it is
    ok(at.run())
    assert url_ws(at) == "clinic"
