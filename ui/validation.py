"""Classifier page, "Test it and score many images": external validation on labeled workspace images the
classifier was not trained on, and background batch scoring of a folder / ZIP with a CSV download
(job kind `score_images`, engine.tasks.scoring)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine import paths
from engine.tasks import ScoreImagesParams
from ui.advice_plots import reliability_figure
from ui.jobs import set_watched, status_block, watch, watched
from ui.services import Services

PAGE = "classifier_scores"


def _test_candidates(svc: Services, clf: Any) -> pd.DataFrame:
    """Workspace images labeled for the classifier's finding that are not its training images (by content)."""
    df = svc.store.images(clf.finding) if clf.finding in svc.store.findings() else pd.DataFrame()
    if df.empty:
        return df
    df = df[df[clf.finding].notna()]
    train = set(clf.training_keys)
    return df[[Path(f).stem not in train for f in df["file"]]]


def _submit(svc: Services, params: ScoreImagesParams) -> None:
    try:
        jid = svc.runner.submit("score_images", params)
    except ValueError as e:
        st.error(str(e), icon=":material/error:")
        return
    set_watched(PAGE, jid)
    st.rerun()


def _test_set_form(svc: Services, res: dict[str, Any], clf: Any) -> None:
    cand = _test_candidates(svc, clf)
    n_train = len(clf.training_keys)
    if cand.empty:
        st.info(f"No labeled image of '{clf.finding}' is left that the classifier was not trained on "
                f"({n_train} training images recorded). Import a labeled test set on the Data page (images from "
                "another day, machine or hospital are the honest test), then measure it here. With a manifest on "
                "disk: `python -m engine validate --model M --manifest test.csv --finding F`.",
                icon=":material/info:")
        return
    test = cand[cand["split"] == "test"]
    use = test if len(test) else cand
    y = use[clf.finding]
    st.markdown(f"**{len(use)} labeled images** the classifier has not seen ({int((y == 1).sum())} with "
                f"{clf.finding}, {int((y == 0).sum())} without" + (", marked as test split" if len(test) else "")
                + "). Training images are recognised by their pixels and left out.")
    if st.button("Measure on these images", icon=":material/fact_check:", key=f"val_run:{res['id']}"):
        _submit(svc, ScoreImagesParams(classifier=res["path"], image_ids=tuple(int(i) for i in use["id"]),
                                       finding=clf.finding, name=f"{res['name']}: test set of {len(use)}",
                                       title=f"test {res['name']}"))


def _batch_form(svc: Services, res: dict[str, Any]) -> None:
    up = st.file_uploader("A ZIP of X-rays (or a few images) to score in the background", type=["zip", "png", "jpg",
                          "jpeg", "dcm", "dicom", "tif", "tiff"], accept_multiple_files=True,
                          key=f"batch_upload:{res['id']}")
    folder = st.text_input("...or a folder on this computer", key=f"batch_folder:{res['id']}",
                           placeholder="/path/to/images")
    if not st.button("Score in the background", icon=":material/playlist_play:", key=f"batch_run:{res['id']}",
                     disabled=not up and not folder.strip()):
        return
    if folder.strip():
        src = Path(folder.strip()).expanduser()
        if not src.is_dir():
            st.error(f"{src} is not a folder on this computer; give the folder that holds the images.",
                     icon=":material/error:")
            return
    else:
        src = paths.sub(svc.workspace, "runs") / "score_uploads" / time.strftime("%Y%m%d-%H%M%S")
        src.mkdir(parents=True, exist_ok=True)
        for f in up:  # a ZIP is read as an archive by the job; images are scored as they are
            (src / Path(f.name).name).write_bytes(f.getvalue())
        zips = list(src.glob("*.zip"))
        src = zips[0] if len(up) == 1 and zips else src
    _submit(svc, ScoreImagesParams(classifier=res["path"], source=str(src), title=f"score with {res['name']}",
                                   name=f"{res['name']} on {Path(str(src)).name}"))


def show_scores(r: dict[str, Any]) -> None:
    """One `scores` result: its validation report (when labeled), counts, the CSV download and a preview."""
    s = r["summary"]
    v = s.get("validation")
    if v:
        c1, c2, c3 = st.columns(3)
        c1.metric("Test AUC", f"{v['auc']:.2f}", help="95% interval: percentile bootstrap over the test images")
        c1.caption(f"95% CI {v['auc_low']:.2f} – {v['auc_high']:.2f}" + (
            f" · cross-validated estimate {v['cv_auc']:.2f}" if v.get("cv_auc") is not None else "")
            + (f" · {v['auc_ci_note']}" if v.get("auc_ci_note") else ""))
        c2.metric("Sensitivity", f"{v['sensitivity']:.0%}")
        c2.caption(f"95% CI {v['sensitivity_low']:.0%} – {v['sensitivity_high']:.0%} (Wilson) · "
                   f"{v['counts']['tp']} of {v['n_positive']} found")
        c3.metric("Specificity", f"{v['specificity']:.0%}")
        c3.caption(f"95% CI {v['specificity_low']:.0%} – {v['specificity_high']:.0%} (Wilson) · "
                   f"{v['counts']['tn']} of {v['n_negative']} cleared")
        if v["auc_low"] <= 0.5:
            st.error("On these test images the classifier is not shown to work: its AUC interval includes 0.5 "
                     "(chance).", icon=":material/block:")
        for w in v.get("warnings") or []:
            st.warning(w, icon=":material/warning:")
        st.plotly_chart(reliability_figure(v["bins"], s["finding"]), key=f"rel:{r['id']}")
        st.caption(f"Brier score {v['brier']:.3f} (lower is better; {v['brier_baseline']:.3f} for always saying the "
                   f"test prevalence). Cut-off {v['threshold']:.2f}.")
    st.markdown(f"**{s['images']} images scored**: {s['likely']} called *{s['finding']} likely*, "
                f"{s['unfamiliar']} unlike the training images, {s['training_images']} training images, "
                f"{s['errors']} unreadable.")
    csv = Path(s["csv"])
    if csv.is_file():
        text = csv.read_text(encoding="utf-8")
        st.download_button("Download scores (CSV)", text, file_name=f"{r['name']}.csv".replace("/", "_"),
                           mime="text/csv", icon=":material/download:", key=f"dl_scores:{r['id']}")
        with st.expander("Scores per image"):
            st.dataframe(pd.read_csv(csv, dtype=str, keep_default_na=False).head(500), hide_index=True)


def validation_section(svc: Services, res: dict[str, Any], loaded: Any) -> None:
    """The section under the chosen classifier (app_pages/classifier.py calls it at the end of the page)."""
    if loaded is None:
        return
    clf = loaded.clf
    st.subheader("5 · Test it on images it has not seen, score many at once")
    t1, t2 = st.tabs(["Labeled test set", "Score a folder or ZIP"])
    with t1:
        _test_set_form(svc, res, clf)
    with t2:
        _batch_form(svc, res)
    job = watched(PAGE, ["score_images"])
    snap = svc.runner.snapshot(job) if job is not None else None
    if snap is not None and snap.state != "done":
        watch(job, lambda s: status_block(s, PAGE, show_log=False))
    mine = [r for r in svc.store.results(kind="scores") if r["summary"].get("classifier") == res["path"]]
    if mine:
        by = {r["id"]: r for r in mine}
        pick = st.selectbox("Scored sets", list(by), key=f"scores_pick:{res['id']}",
                            format_func=lambda i: by[i]["name"])
        show_scores(by[pick])
