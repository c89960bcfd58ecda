"""engine.demo: the phantom demo workspace is created once, completely, even when asked twice at once."""
from __future__ import annotations

import threading

import numpy as np

from engine import paths
from engine.data.phantom import FINDINGS
from engine.demo import ensure_demo_workspace
from engine.store import Store


def test_demo_workspace_created_once_under_concurrent_calls(tmp_path):
    ws = tmp_path / "demo"
    events: list = []
    stores: list[Store] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            stores.append(ensure_demo_workspace(ws, n=8, size=64, seed=3, on_event=events.append))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(stores) == 2
    store = stores[0]
    counts = store.table_counts()
    assert counts["images"] == 8 and counts["findings"] == len(FINDINGS) and counts["labels"] == 8 * len(FINDINGS)
    assert store.findings() == list(FINDINGS)
    assert all(c["positive"] > 0 and c["negative"] > 0 and c["unknown"] == 0 for c in store.counts().values())
    assert set(store.images()["split"]) == {"train", "test"}
    assert not (ws / "phantom_src").exists()

    # Regions came along: every mask lies inside its image, and its box is the mask's bounding box.
    df = store.images()
    positives = df[df["nodule"] == 1]["id"].tolist()
    (mask,) = [r for r in store.regions(positives[0]) if r["kind"] == "mask" and r["finding"] == "nodule"]
    from PIL import Image

    m = np.asarray(Image.open(mask["mask_path"])) > 0
    ys, xs = np.nonzero(m)
    assert m.shape == store.image_array(positives[0]).shape == (64, 64)
    bbox = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert (mask["x"], mask["y"], mask["w"], mask["h"]) == bbox

    # Progress ran over both phases, and the last message says it is ready.
    assert sum(e.message.startswith("creating the demo workspace") for e in events) == 1  # generated once
    steps = [e.step for e in events if e.step is not None]
    assert max(steps) == 16 and events[-1].message.startswith("demo workspace ready: 8 images")

    before = store.table_counts()
    again = ensure_demo_workspace(ws, n=8, size=64, seed=3)
    assert again.table_counts() == before


def test_demo_defaults_to_the_configured_workspace():
    store = ensure_demo_workspace(n=4, size=64, seed=0)
    assert store.workspace == paths.workspace_dir() and len(store.images()) == 4
