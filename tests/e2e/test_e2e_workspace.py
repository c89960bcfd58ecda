"""The workspace is part of the address (issue 22), in headless Chromium against `streamlit run app.py`:
a deep link, a reload and a second window land in the user's workspace with its classifier and its running
job; the menu keeps `?ws=`; the sidebar lists a job of another workspace with a link into it; switching
workspace re-initializes the Pretrain form; an unknown `?ws=` says so. Screenshots: artifacts/screenshots/ws-*.png.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest
from test_e2e_browser import (CHROMEDRIVER, CHROMIUM, NAV_LINK, SHOTS, Server, body, browser, choose, click, idle,
                              steps_shown, wait_for, wait_for_element)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason=f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install -y chromium chromium-driver"),
]

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CLASSIFIER = "clinic-nodule"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server whose default workspace is empty, beside a workspace `clinic` with 16 labeled phantom
    images and a classifier built from them (random init, 64 px: seconds on a CPU)."""
    from engine.data.phantom import generate
    from engine.jobs import JobRunner
    from engine.store import Store
    from engine.tasks import ClassifyParams, register_all

    base = tmp_path_factory.mktemp("e2e-ws")
    csv = generate(base / "phantom", n=40, size=64, seed=5)
    df = pd.read_csv(csv)
    df = pd.concat([df[df["nodule"] == 1].head(8), df[df["nodule"] == 0].head(8)])
    clinic = base / "clinic"
    clinic.mkdir()
    with Store(clinic) as store:
        ids = [r.image_id for r in store.import_paths([str(csv.parent / p) for p in df["path"]])]
        store.set_labels("nodule", {i: float(v) for i, v in zip(ids, df["nodule"])})
        runner = JobRunner(store, device="cpu")
        register_all(runner)
        job = runner.submit("classify", ClassifyParams(finding="nodule", image_size=64, cv_repeats=1, name=CLASSIFIER))
        assert runner.wait(job, timeout=300).state == "done"
        runner.shutdown()
    env = dict(os.environ, SCARCE_CXR_WORKSPACE=str(base / "workspace"), SCARCE_CXR_CHECKPOINTS=str(base / "ckpt"),
               SCARCE_CXR_IMAGENET_DIR=str(base / "imagenet"), SCARCE_CXR_NO_AUTOPRETRAIN="1", SCARCE_CXR_SHIPPED="",
               OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    SHOTS.mkdir(parents=True, exist_ok=True)
    s = Server(env, base / "server.log").start()
    yield s
    s.stop()


def url_ws(d) -> str | None:
    return (parse_qs(urlparse(d.current_url).query).get("ws") or [None])[-1]


def in_clinic(d) -> str:
    """Wait until the page shows the clinic workspace (sidebar path and the URL); returns the page text.
    (Generous: the sidebar is drawn after the page, and a busy 2-core CI machine is slow.)"""
    return wait_for(d, lambda t: "/clinic\n16 images" in t and url_ws(d) == "clinic", timeout=240,
                    what="the clinic workspace")


def pretrain_name(d) -> str:
    return d.find_element(By.XPATH, '//div[@data-testid="stTextInput"][.//label[contains(., "Name of the new")]]'
                                    '//input').get_attribute("value")


def test_the_workspace_survives_deep_link_reload_and_a_second_window(server):
    a, b = browser(), browser()
    try:
        # a deep link as the very first request: the clinic's classifier, and every menu link keeps ?ws=clinic
        a.get(server.url + "/classifier?ws=clinic")
        in_clinic(a)
        wait_for(a, CLASSIFIER, what="the clinic's classifier")
        hrefs = [x.get_attribute("href") for x in a.find_elements(By.CSS_SELECTOR, NAV_LINK)]
        assert len(hrefs) == 5 and all(h.endswith("?ws=clinic") for h in hrefs), hrefs
        a.save_screenshot(str(SHOTS / "ws-deep-link-classifier.png"))
        # the menu keeps the workspace; the Pretrain form proposes a name from it; a run is started there
        [x for x in a.find_elements(By.CSS_SELECTOR, NAV_LINK) if "/pretrain?" in x.get_attribute("href")][0].click()
        wait_for(a, "Start pretraining")
        idle(a)
        assert url_ws(a) == "clinic" and pretrain_name(a) == "moco_v2-resnet18-clinic"
        inp = a.find_element(By.XPATH, '//div[@data-testid="stNumberInput"][.//label[contains(., "Epochs")]]//input')
        inp.send_keys(Keys.CONTROL, "a")
        inp.send_keys("500")
        choose(a, "Batch size", "8")
        choose(a, "Image size", "64")
        click(a, "Start pretraining")
        wait_for(a, lambda t: steps_shown(t), timeout=120, what="the clinic's pretraining running")
        # a reload lands in the clinic again, with its running job
        a.refresh()
        in_clinic(a)
        wait_for(a, lambda t: steps_shown(t) and "running" in t, timeout=60, what="the running job after a reload")
        a.save_screenshot(str(SHOTS / "ws-reload-running-job.png"))

        # a second window without ?ws= opens the default workspace; its sidebar lists the clinic's job with a link
        b.get(server.url + "/pretrain")
        wait_for(b, "Background jobs", what="the sidebar")
        idle(b, live=True)  # the clinic's job is running: the sidebar follows it
        assert url_ws(b) == "workspace" and "0 images" in body(b)
        assert pretrain_name(b) == "moco_v2-resnet18-workspace"
        link = wait_for_element(b, '//a[@data-testid="stPageLink-NavLink"][contains(., "workspace clinic")]')
        assert link.get_attribute("href").endswith("/pretrain?ws=clinic")
        b.save_screenshot(str(SHOTS / "ws-other-workspace-job.png"))
        link.click()  # lands in the clinic, on the page of the running job
        in_clinic(b)
        wait_for(b, lambda t: steps_shown(t) and "running" in t, timeout=60, what="the job through the sidebar link")
        # switching workspace in the sidebar updates the address and re-initializes the form
        choose(b, "Workspace", "workspace")  # the sidebar's picker (its label is hidden)
        wait_for(b, lambda _: url_ws(b) == "workspace" and pretrain_name(b) == "moco_v2-resnet18-workspace",
                 what="the default workspace's form after switching")
        idle(b, live=True)  # the clinic's job is running: the sidebar follows it
        b.save_screenshot(str(SHOTS / "ws-switched-form.png"))
        # an unknown workspace in the address: a clear message, the default workspace, no traceback
        b.get(server.url + "/classifier?ws=no-such-place")
        text = wait_for(b, "There is no workspace named no-such-place", what="the unknown-ws message")
        assert url_ws(b) == "workspace" and "Traceback" not in text
        b.save_screenshot(str(SHOTS / "ws-unknown.png"))
    finally:  # (the server's stop interrupts the pretraining run)
        a.quit()
        b.quit()
