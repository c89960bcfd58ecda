"""Classifier page, issue 21 items 6-7: a labeled test set measured in the background (AUC, sensitivity and
specificity with intervals, calibration, CSV), a batch scored from a ZIP, the learning curve and the
"label these next" list with one-click labels (AppTest, tiny phantom, CPU)."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


@pytest.fixture(autouse=True)
def _no_autopretrain(monkeypatch):
    monkeypatch.setenv("SCARCE_CXR_NO_AUTOPRETRAIN", "1")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> pd.DataFrame:
    from engine.data.phantom import generate

    csv = generate(tmp_path_factory.mktemp("ph21"), n=48, size=64, seed=3, findings=("cardiomegaly",), prevalence=0.5)
    df = pd.read_csv(csv)
    df["path"] = [str(csv.parent / p) for p in df["path"]]
    return df


def _svc():
    from ui.services import services

    return services()


def _import(df: pd.DataFrame, label: int | None) -> list[int]:
    store = _svc().store
    ids = [r.image_id for r in store.import_paths(list(df["path"]))]
    assert None not in ids
    if label is not None:
        store.set_labels("cardiomegaly", {i: label for i in ids})
    return ids


def _wait() -> None:
    runner = _svc().runner
    for j in runner.jobs():
        snap = runner.wait(j.id, timeout=300)
        assert snap.state == "done", (snap.kind, snap.state, snap.error)


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [w.value for w in at.warning]
    parts += [i.value for i in at.info] + [c.value for c in at.caption] + [s.value for s in at.success]
    return "\n".join(str(p) for p in parts)


def test_test_set_batch_scores_learning_curve_and_label_next(phantom):
    from engine.tasks import ClassifyParams

    at = AppTest.from_file(APP, default_timeout=120).run()
    pos, neg = phantom[phantom["cardiomegaly"] == 1], phantom[phantom["cardiomegaly"] == 0]
    _import(pos.iloc[:8], 1)
    _import(neg.iloc[:8], 0)
    _svc().runner.submit("classify", ClassifyParams(finding="cardiomegaly", init="random", image_size=32, cv_repeats=2))
    _wait()
    test_ids = _import(pos.iloc[8:14], 1) + _import(neg.iloc[8:14], 0)  # labeled after the build: a test set
    unl = _import(pd.concat([pos.iloc[14:18], neg.iloc[14:18]]), None)
    at.switch_page("app_pages/classifier.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "12 labeled images" in _texts(at)  # the 16 training images are recognised and left out

    at.button(key=next(b.key for b in at.button if b.key.startswith("val_run:"))).click().run()
    _wait()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (res,) = _svc().store.results(kind="scores")
    v = res["summary"]["validation"]
    assert v["n_positive"] + v["n_negative"] == 12 and v["n_training_excluded"] == 0
    assert 0 <= v["auc_low"] <= v["auc"] <= v["auc_high"] <= 1 and len(v["bins"]) == 10
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Test AUC"] == f"{v['auc']:.2f}" and "Sensitivity" in metrics and "(Wilson)" in _texts(at)
    assert "Download scores (CSV)" in {d.label for d in at.download_button}

    buf = io.BytesIO()  # a batch as a ZIP: one training image, one new image, one broken file
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(pos["path"].iloc[0], "=evil.png")
        zf.write(pos["path"].iloc[20], "new.png")
        zf.writestr("notes.txt", "not an image")
    up = next(u for u in at.get("file_uploader") if u.proto.id and "batch_upload" in str(u.key))
    up.set_value([("batch.zip", buf.getvalue(), "application/zip")]).run()
    at.button(key=next(b.key for b in at.button if b.key.startswith("batch_run:"))).click().run()
    _wait()
    at.run()
    batch = [r for r in _svc().store.results(kind="scores") if r["summary"]["validation"] is None]
    assert len(batch) == 1 and batch[0]["summary"]["training_images"] == 1
    text = Path(batch[0]["summary"]["csv"]).read_text()
    assert "'=evil.png" in text and ",yes," in text  # formula escaped; the training image marked

    at.button(key=next(b.key for b in at.button if b.key.startswith("advice_run:"))).click().run()
    _wait()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (adv,) = _svc().store.results(kind="label_advice")
    assert adv["summary"]["n_labeled"] == 28 and adv["summary"]["n_unlabeled"] == 8
    sugg = adv["summary"]["suggestions"]
    assert len(sugg) == 8 and {s["image_id"] for s in sugg} == set(unl)
    assert "Label these next" in _texts(at) and adv["summary"]["curve"]["sentence"] in _texts(at)
    assert len(adv["summary"]["curve"]["points"]) == 4  # 25/50/75/100% of the 28 labeled images
    first = adv["summary"]["suggestions"][0]["image_id"]
    at.button(key=f"next_pos:{adv['id']}:{first}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    labels = _svc().store.images("cardiomegaly").set_index("id")["cardiomegaly"]
    assert labels[first] == 1.0 and test_ids  # one click labeled it in the store
    assert not [b for b in at.button if b.key == f"next_pos:{adv['id']}:{first}"]  # shown as labeled now
