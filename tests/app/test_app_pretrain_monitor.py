"""The Pretrain page's collapse monitor (issue 12 item 8): one current status line per run, in plain
words, with the earlier readings on demand; a run whose last reading is healthy is called ready."""
from __future__ import annotations

import time

from engine.events import Event
from tests.app.test_app_pages import _no_autopretrain, services, start, texts  # noqa: F401


def reading(std: float, cos: float, erank: float) -> dict[str, float]:
    m = {"std": std, "cos": cos, "erank": erank}
    return {f"collapse_{k}": v for k, v in {**m, **{f"backbone_{k}": v for k, v in m.items()}}.items()}


def test_a_recovered_run_shows_one_healthy_line_and_the_earlier_warning_on_demand():
    store = services().store
    jid = store.create_job("pretrain", {"method": "spark", "arch": "resnet18", "epochs": 1, "batch_size": 8,
                                        "image_size": 64, "out_name": "spark-demo"}, state="done")
    t = time.time()
    bad = "collapse: looks collapsed at step 5: the images map to nearly the same features"
    store.add_events(jid, [
        Event(step=0, total=20, kind="metrics", metrics={"loss": 1.0, **reading(0.09, 0.99, 3.0)}, time=t),
        Event(step=5, total=20, kind="metrics", metrics={"loss": 0.8, **reading(0.04, 0.99, 1.5)}, time=t + 1),
        Event(step=5, total=20, kind="warning", level="warning", message=bad, time=t + 1),
        Event(step=5, total=20, kind="warning", level="warning", message="collapse: another early reading", time=t + 1),
        Event(step=10, total=20, kind="metrics", metrics={"loss": 0.5, **reading(0.4, 0.62, 30.0)}, time=t + 2),
        Event(step=15, total=20, kind="metrics", metrics={"loss": 0.5, **reading(0.4, 0.62, 30.0)}, time=t + 3),
        Event(step=20, total=20, kind="metrics", metrics={"loss": 0.4, **reading(0.4, 0.6, 31.0)}, time=t + 4),
    ], step=20, total=20, result={"checkpoint": "spark-demo"})
    at = start("app_pages/pretrain.py")
    at.button(key=f"show:pretrain:{jid}").click().run()  # the job list's Show button watches it
    assert not at.exception, [e.value for e in at.exception]
    status = [s.value for s in at.success if s.value.startswith("**Collapse monitor:**")]
    assert len(status) == 1 and "Healthy at step 20" in status[0] and "2 earlier readings looked collapsed" in status[0]
    assert not [w.value for w in at.warning if "collapse" in w.value.lower()]  # no stacked boxes
    assert "since recovered" not in texts(at) and "spark-demo** is ready" in texts(at)
    assert any(e.label == "Collapse monitor details" for e in at.expander)
    assert bad in "\n".join(c.value for c in at.code)
