"""Issue 23 item 4 on the Pretrain page: the online evaluation is chosen in the form and plotted beside the loss
with its interval and baseline; a controlled run that needed no adjustment says so plainly."""
from __future__ import annotations

import time

from engine.events import Event
from tests.app.test_app_pages import (_no_autopretrain, label_upload, phantom, services, start, submit,  # noqa: F401
                                      texts, wait_all)


def _reading(step: int, erank: float, weight: float) -> dict[str, float]:
    m = {"std": 0.3, "cos": 0.6, "erank": erank}
    return {f"collapse_{k}": v for k, v in {**m, **{f"backbone_{k}": v for k, v in m.items()}}.items()} | {
        "collapse_control_weight": weight, "collapse_control_target": 17.6}


def test_a_controlled_run_that_needed_no_adjustment_says_so():
    store = services().store
    jid = store.create_job("pretrain", {"method": "moco_v2", "arch": "resnet18", "epochs": 1, "batch_size": 8,
                                        "image_size": 64, "out_name": "ctl", "collapse_control": "erank:auto"},
                           state="done")
    t = time.time()
    events = [Event(step=s, total=20, kind="metrics", metrics={"loss": 1.0 - s / 40, **_reading(s, 18 + s / 10, 0.1)},
                    time=t + s) for s in range(0, 21, 5)]
    store.add_events(jid, events, step=20, total=20, result={"checkpoint": "ctl"})
    at = start("app_pages/pretrain.py")
    at.button(key=f"show:pretrain:{jid}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "No adjustment was needed so far" in texts(at) and "(auto: the run's first reading)" in texts(at)


def test_online_evaluation_from_the_form_is_plotted_beside_the_loss(phantom):
    at = start()
    label_upload(at, phantom, "nodule", 4, 4)  # 8 images: one batch, a 1-step run, readings at steps 0 and 1
    at.switch_page("app_pages/pretrain.py").run()
    at.selectbox(key="pt_method").set_value("moco_v2")
    at.number_input(key="pt_epochs").set_value(1)
    at.selectbox(key="pt_batch").set_value(8)
    at.selectbox(key="pt_size").set_value(64)
    at.selectbox(key="pt_online_eval").set_value("nodule")
    at.text_input(key="pt_name").set_value("moco-online")
    submit(at, "Start pretraining")
    wait_all()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "kNN on 4 labeled images, scoring 4 others" in texts(at) and "Chance is 0.5" in texts(at)
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("Online evaluation" in s for s in titles)
