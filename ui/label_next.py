"""Classifier page, "Will more labels help, and which?": the learning curve of the user's labeled images with a
cautious extrapolation, and the unlabeled images to label next, each labeled with one click
(job kind `label_advice`, engine.tasks.scoring; rules in engine.fewshot.learning_curve / engine.fewshot.active)."""
from __future__ import annotations

from typing import Any

import streamlit as st

from engine.tasks import LabelAdviceParams
from ui.advice_plots import learning_curve_figure
from ui.jobs import set_watched, status_block, watch, watched
from ui.services import Services
from ui.widgets import chunks

PAGE = "classifier_advice"
EXTRA = 20  # "labelling 20 more images would probably..."


def _label(svc: Services, finding: str, image_id: int, value: int) -> None:
    try:
        svc.store.set_labels(finding, {image_id: value})
    except ValueError as e:  # the image was deleted meanwhile
        st.error(str(e), icon=":material/error:")
        return
    st.toast(f"Labeled: {'with' if value else 'without'} {finding}. Rebuild the classifier to use it.")


def _suggestions(svc: Services, advice: dict[str, Any]) -> None:
    s = advice["summary"]
    finding, sugg = s["finding"], s["suggestions"]
    if not sugg:
        st.info("The workspace holds no unlabeled images for this finding. Upload more X-rays on the Data page "
                "(without labels) and run this again to get a list of the most useful ones to label.",
                icon=":material/info:")
        return
    st.markdown(f"**Label these next** ({len(sugg)} of {s['n_unlabeled']} unlabeled images): the images least like "
                "any you have labeled, spread over the backbone's view of your images (core-set / k-center "
                "selection, Sener & Savarese 2018). On NIH pneumonia, adding images this way raised the AUC by "
                "about 0.02 more than random picks; picking the images the classifier is least sure about did not "
                "beat random there (bench/active_learning.py). p = the current classifier's probability.")
    st.caption(f"Does the X-ray show {finding}? **With** / **Without** saves the label at once (Data page labels).")
    df = svc.store.images(finding)
    now = dict(zip(df["id"].astype(int), df[finding]))
    for row in chunks(sugg, 5):
        cols = st.columns(5)
        for c, g in zip(cols, row):
            iid = int(g["image_id"])
            if iid not in now:
                c.caption(f"image {iid} was deleted")
                continue
            c.image(svc.store.thumbnail(iid, 160), width="stretch",
                    caption=f"#{sugg.index(g) + 1} · p = {g['probability']:.2f}")
            v = now[iid]
            if v == v:  # labeled since the list was made
                c.success(f"{'with' if v == 1 else 'without'} {finding}", icon=":material/check:")
                continue
            b1, b2 = c.columns(2)
            if b1.button("With", key=f"next_pos:{advice['id']}:{iid}", help=f"this X-ray shows {finding}"):
                _label(svc, finding, iid, 1)
                st.rerun()
            if b2.button("Without", key=f"next_neg:{advice['id']}:{iid}", help=f"this X-ray does not show {finding}"):
                _label(svc, finding, iid, 0)
                st.rerun()


def _curve(advice: dict[str, Any]) -> None:
    c = advice["summary"]["curve"]
    ex = c["extrapolation"]
    if ex["trusted"]:
        st.markdown(f"**{c['sentence']}**")
    else:
        st.info(c["sentence"], icon=":material/info:")
    st.plotly_chart(learning_curve_figure(c), key=f"lc:{advice['id']}")
    st.caption("Each point: the cross-validated AUC of a probe on random subsets of your labeled images (mean of "
               "several subsets, 95% interval). The dashed line is an inverse power law AUC(n) = a - b n^-c "
               "(Figueroa et al. 2012; Hestness et al. 2017), shown only when the curve rises clearly and the "
               "extrapolation stays within twice your labeled images.")


def label_next_section(svc: Services, res: dict[str, Any], ids: list[int] | None = None) -> None:
    """The section under the chosen classifier (app_pages/classifier.py calls it at the end of the page)."""
    s = res["summary"]
    finding, init = s["finding"], s["init"]
    st.subheader("6 · Will more labels help, and which?")
    job = watched(PAGE, ["label_advice"])
    snap = svc.runner.snapshot(job) if job is not None else None
    busy = snap is not None and snap.active
    if st.button("Analyse my labels", icon=":material/query_stats:", key=f"advice_run:{res['id']}", disabled=busy,
                 help="Embeds your labeled and unlabeled images once with this classifier's backbone, draws the "
                      "learning curve and ranks the unlabeled images to label next."):
        try:
            jid = svc.runner.submit("label_advice", LabelAdviceParams(
                finding=finding, init=init, image_size=s.get("image_size"), extra=EXTRA,
                image_ids=tuple(ids) if ids else None, title=f"label advice: {finding} ({init})"))
        except ValueError as e:
            st.error(str(e), icon=":material/error:")
        else:
            set_watched(PAGE, jid)
            st.rerun()
    if snap is not None and snap.state != "done":
        watch(job, lambda x: status_block(x, PAGE, show_log=False))
    done = [r for r in svc.store.results(kind="label_advice")
            if r["summary"].get("finding") == finding and r["summary"].get("init") == init]
    if not done:
        st.caption("A learning curve from your own labeled images says whether labelling more is likely to raise the "
                   "AUC, and a ranked list says which unlabeled images would help most.")
        return
    advice = done[0]  # newest
    _curve(advice)
    _suggestions(svc, advice)
