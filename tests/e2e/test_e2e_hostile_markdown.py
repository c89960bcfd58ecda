"""User text stays text in the real browser (issue 22, item 6): a label CSV whose unmatched names and column names
are Markdown links, remote images and bare URLs produces no <a> and no <img> to them, and after "Apply labels" the
label panel shows the new finding (no stale "Add a finding first"). Also saves screenshots of the Data page's upload
report and label-CSV outcomes. Streamlit's Markdown (remark-gfm) turns bare `http://` / `www.` / e-mail text into
links after backslash escapes are resolved, which only a browser shows; see engine.escaping.escape_markdown."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_e2e_browser import CHROMEDRIVER, CHROMIUM, SHOTS, Server, browser, click, idle, shot, wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason=f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install -y chromium chromium-driver"),
]

from selenium.webdriver.common.by import By  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "[click me](http://evil.example/x) ![t](http://evil.example/t.png) www.evil.example bob@evil.example"


def evil(d) -> list[str]:
    """Links and images of the page that point at evil.example."""
    return d.execute_script(
        "return [...document.querySelectorAll('a')].map(a => a.href)"
        ".concat([...document.querySelectorAll('img')].map(i => i.src)).filter(u => u.includes('evil'))")


def open_label_csv(d, path: Path) -> None:
    d.find_element(By.XPATH, '//*[contains(text(), "Label many images at once")]').click()
    idle(d)
    d.find_elements(By.CSS_SELECTOR, 'input[type="file"]')[0].send_keys(str(path))
    time.sleep(1.5)
    click(d, "Apply labels")


def test_hostile_names_from_a_label_csv_render_as_text_and_the_panel_refreshes(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    for i, n in enumerate(["SMITH_JOHN_MRN1234.png", "DOE_JANE_20240101.png", "scan_003.png"]):
        arr = np.random.default_rng(i).integers(0, 256, (96, 96), dtype=np.uint8)
        Image.fromarray(arr).save(files / n)
    good = files / "labels.csv"
    good.write_text(f'name,pneumothorax\nSMITH_JOHN_MRN1234.png,1\nDOE_JANE_20240101.png,0\n"{HOSTILE}",1\n')
    bad = files / "bad.csv"
    bad.write_text('name,mass,effusion/pleural,"=HYPERLINK(""http://evil.example"",""x"")"\nscan_003.png,1,1,maybe\n')
    env = dict(os.environ, SCARCE_CXR_WORKSPACE=str(tmp_path / "ws"), SCARCE_CXR_CHECKPOINTS=str(tmp_path / "ck"),
               SCARCE_CXR_IMAGENET_DIR=str(tmp_path / "imagenet"), SCARCE_CXR_NO_AUTOPRETRAIN="1",
               SCARCE_CXR_SHIPPED="", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    SHOTS.mkdir(parents=True, exist_ok=True)
    server = Server(env, tmp_path / "server.log").start()
    d = browser()
    try:
        d.get(server.url + "/")
        wait_for(d, "Upload X-rays", timeout=120)
        idle(d)
        d.find_elements(By.CSS_SELECTOR, 'input[type="file"]')[0].send_keys(
            "\n".join(str(p) for p in sorted(files.glob("*.png"))))
        time.sleep(1.5)
        click(d, "Import")
        text = wait_for(d, "Imported 3 new images", timeout=120)
        assert "stored name (3 images)" in text  # the upload report (its table is a canvas: see the screenshot)
        shot(d, "data-upload-report")

        d.find_element(By.XPATH, '//div[@role="tab"][.//p[normalize-space()="Label"]]').click()
        idle(d)
        wait_for(d, "Add a finding first", timeout=60)
        open_label_csv(d, good)
        text = wait_for(d, "Applied labels to 2 images for pneumothorax", timeout=60)
        assert "Add a finding first" not in text  # the panel was drawn again with the new finding
        assert evil(d) == [], evil(d)
        (warn,) = [ln for ln in text.splitlines() if "match no image" in ln]
        assert warn.replace("\u2060", "").endswith(HOSTILE)  # shown as written
        shot(d, "data-label-csv-applied")

        open_label_csv(d, bad)
        text = wait_for(d, "nothing was labeled", timeout=60)
        assert "effusion/pleural" in text and "=HYPERLINK" in text and "'maybe'" in text
        assert "3 images · 1 finding" in text and "1 findings" not in text  # not even the valid `mass` column was added
        assert evil(d) == [], evil(d)
        shot(d, "data-label-csv-invalid")
    finally:
        d.quit()
        server.stop()
