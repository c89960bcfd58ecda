"""Issue 21 on the Classifier page (AppTest, tiny phantoms): NOT usable in plain words (no download, no
scoring unless asked), intervals beside the cut-off / sensitivity / specificity, Youden's J and equal
sensitivity and specificity named plainly, prevalence with PPV/NPV and adjusted probabilities, the heatmap
caveat with an opacity control, the error analysis, and comparison probes that stay out of the display."""
from __future__ import annotations

import numpy as np

from tests.app.test_app_pages import (_no_autopretrain, label_upload, phantom, png_bytes, save_ssl_checkpoint,  # noqa: F401
                                      services, start, texts, wait_all)


def _build(init: str = "moco_v2-resnet18-test") -> dict:
    from engine.tasks import ClassifyParams

    ids = tuple(int(i) for i in services().store.images("nodule")["id"])
    services().runner.submit("classify", ClassifyParams(finding="nodule", image_ids=ids, init=init, image_size=64))
    wait_all()
    (res,) = [r for r in services().store.results(kind="classifier") if r["summary"]["init"] == init]
    return res


def _make_constant(path: str) -> None:
    """Overwrite a built classifier file with its constant-output version (Platt slope 0)."""
    from engine.fewshot.classifier import Calibration, Classifier, choose_operating_point

    clf = Classifier.load(path)
    clf.calibration = Calibration("platt", a=0.0, b=-0.18)
    clf.cv_probs = np.full_like(clf.cv_probs, float(clf.calibration(np.zeros(1))[0]))
    clf.operating = choose_operating_point(np.tile(clf.cv_labels, clf.cv_probs.shape[0]), clf.cv_probs.ravel())
    clf.threshold = clf.operating.threshold
    clf.save(path)


def test_page_shows_intervals_prevalence_error_analysis_and_the_heatmap_caveat(phantom):
    at = start()
    label_upload(at, phantom, "nodule", 6, 6)
    save_ssl_checkpoint()
    res = _build()
    s = res["summary"]
    assert len(s["image_ids"]) == 12 and "usable" in s and s["comparison"] is False
    at.switch_page("app_pages/classifier.py").run()
    assert not at.exception, [e.value for e in at.exception]
    op = [r for r in at.radio if r.key.startswith("clf_op:")][0]
    assert "Equal sensitivity and specificity" in op.options and any("Youden's J" in o for o in op.options)
    assert not any("Balanced" in o for o in op.options)
    t = texts(at)
    assert t.count("95% interval") >= 3  # cut-off, sensitivity, specificity (and the AUC)
    assert "Training prevalence: **50%**" in t and "Saerens" in t
    prev = [n for n in at.number_input if n.key.startswith("clf_prev:")][0]
    assert prev.value == 50.0
    prev.set_value(5.0).run()
    labels = {m.label: m.value for m in at.metric}
    assert "PPV at 5.0%" in labels and "NPV at 5.0%" in labels
    assert len(at.get("plotly_chart")) >= 1  # the ROC curve
    assert "Confusion matrix at cut-off" in texts(at) and len(at.table) == 1
    if not s["usable"]:
        at.checkbox(key=f"clf_force:{res['id']}").check().run()
    new = phantom[phantom["nodule"] == 1].iloc[-1]["path"]
    up = [u for u in at.file_uploader if u.key.startswith("clf_predict:")][0]
    up.set_value([("new.png", png_bytes(new), "image/png")]).run()
    assert not at.exception, [e.value for e in at.exception]
    t = texts(at)
    assert "coarse 2x2 map of what raised the score" in t and "not an outline of the lesion" in t
    assert "At the expected prevalence **5.0%** its probability is" in t
    assert at.slider(key="clf_opacity").value == 0.6
    at.slider(key="clf_opacity").set_value(0.0).run()  # redraws without re-scoring; the X-ray unchanged
    assert not at.exception, [e.value for e in at.exception]
    captions = [c for img in at.image for c in img.captions]
    assert captions.count("X-ray") == 1 and captions.count("Grad-CAM: red = regions that raised the score") == 1
    wrong = len(at.image) - 2  # the rest: thumbnails of the images the CV scored on the wrong side of the cut
    assert (wrong > 0) == ("Scored most wrongly" in texts(at))


def test_a_constant_classifier_is_said_not_to_work_and_is_not_offered(phantom):
    at = start()
    label_upload(at, phantom, "nodule", 5, 6)
    save_ssl_checkpoint()
    res = _build()
    _make_constant(res["path"])
    at.switch_page("app_pages/classifier.py").run()
    assert not at.exception, [e.value for e in at.exception]
    errors = "\n".join(e.value for e in at.error)
    assert "This classifier does not work - do not use it on patients" in errors
    assert "same probability to every image" in errors
    assert "Download classifier" not in {d.label for d in at.download_button}
    assert not [u for u in at.file_uploader if u.key.startswith("clf_predict:")]  # not offered for scoring
    at.checkbox(key=f"clf_force:{res['id']}").check().run()
    assert [u for u in at.file_uploader if u.key.startswith("clf_predict:")]


def test_compare_backbones_never_fills_the_classifier_list_nor_replaces_the_display(phantom):
    at = start()
    label_upload(at, phantom, "nodule", 5, 6)
    save_ssl_checkpoint()
    at.switch_page("app_pages/classifier.py").run()
    at.button(key="clf_compare").click().run()
    wait_all()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    results = services().store.results(kind="classifier")
    assert len(results) == 2 and all(r["summary"]["comparison"] for r in results)
    assert "Your classifier" not in [h.value for h in at.subheader]  # measured, not listed
    assert "Measured on your 11 images" in texts(at)


def test_build_and_compare_buttons_are_disabled_while_their_job_runs(phantom):
    import threading

    at = start()
    label_upload(at, phantom, "nodule", 5, 6)
    at.switch_page("app_pages/classifier.py").run()
    assert not at.button(key="clf_build").disabled and not at.button(key="clf_compare").disabled
    release = threading.Event()
    runner = services().runner
    runner.register("hold_for_test", lambda params, ctx: release.wait(60) and {}, uses_gpu=False)
    jid = runner.submit("hold_for_test", {})
    try:
        at.session_state["watch:classifier"] = jid  # what the Build button's own submit records
        at.session_state["watch:classifier_compare"] = jid
        at.run()
        assert at.button(key="clf_build").disabled and at.button(key="clf_compare").disabled
    finally:
        release.set()
    runner.wait(jid, timeout=60)
    at.run()
    assert not at.button(key="clf_build").disabled and not at.button(key="clf_compare").disabled
