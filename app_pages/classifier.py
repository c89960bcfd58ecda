"""Classifier: a few labeled X-rays -> a classifier with an honest accuracy estimate -> predictions with Grad-CAM."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from engine.fewshot.classifier import MIN_PER_CLASS, ClassifierDataError, check_counts
from engine.models import list_inits
from ui.inference import LoadedClassifier, explain_uploads, fmt_probability, verdict
from ui.jobs import ACTIVE, set_watched, status_block, watch, watched
from ui.services import services
from ui.widgets import UPLOAD_TYPES, empty_state, init_label, is_ssl, method_label, page_header

MODES = {
    "probe": "Probe (recommended): keep the backbone fixed and fit a simple logistic regression on its features. "
             "Fast, and the most reliable with few images.",
    "finetune": "Finetune: also adjust the backbone's weights. Slower; can help with 50+ images, can overfit with fewer.",
}


@st.cache_resource(show_spinner="Loading the classifier...", max_entries=4)
def load_classifier(path: str, mtime: float, device: str) -> LoadedClassifier:
    from engine.fewshot.classifier import Classifier

    return LoadedClassifier(Classifier.load(path, device=device))


def pick_training_images(svc: Any) -> tuple[str | None, list[int]]:
    """Step 1: finding and labeled images. Returns (finding, image ids) or (None, [])."""
    st.subheader("1 · Labeled images")
    findings = svc.store.findings()
    counts = svc.store.counts()
    if not findings or not any(c["positive"] + c["negative"] for c in counts.values()):
        empty_state("No labeled images yet. On the Data page, upload X-rays and mark which ones show the finding "
                    f"(at least {MIN_PER_CLASS} with it and {MIN_PER_CLASS} without).", link="data",
                    link_label="Go to Data: upload and label images", icon=":material/label_off:")
        return None, []
    finding = st.selectbox(
        "Finding to detect", findings, key="clf_finding",
        format_func=lambda f: f"{f}  ({counts[f]['positive']} with, {counts[f]['negative']} without)",
    )
    imgs = svc.store.images(finding)
    labeled = imgs[imgs[finding].notna()]
    names = dict(zip(labeled["id"].astype(int), labeled["name"]))
    leave_out = st.multiselect(
        "Leave images out (optional)", list(names), format_func=lambda i: names[i], key=f"clf_leave_out:{finding}",
        help="By default every image labeled for this finding is used.", placeholder="All labeled images are used",
    )
    use = labeled[~labeled["id"].isin(leave_out)]
    y = use[finding].to_numpy()
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    c1, c2, c3 = st.columns(3)
    c1.metric("Images used", len(use))
    c2.metric(f"With {finding}", n_pos)
    c3.metric(f"Without {finding}", n_neg)
    try:
        for w in check_counts(y, finding):
            st.warning(w, icon=":material/warning:")
    except ClassifierDataError as e:
        st.error(f"{e}", icon=":material/block:")
        st.page_link("app_pages/data.py", label="Label more images on the Data page", icon=":material/arrow_forward:")
        return None, []
    return finding, [int(i) for i in use["id"]]


def pick_init(svc: Any) -> str | None:
    """Step 2: starting backbone, defaulting to the best shipped one (measured on real X-rays), else
    the newest self-supervised one."""
    st.subheader("2 · Starting backbone")
    inits = list_inits()
    available = [i for i in inits if i.available]
    shipped = [i for i in available if i.shipped]
    ssl = [i for i in available if is_ssl(i)]
    by_name = {i.name: i for i in available}
    default = shipped[0].name if shipped else ssl[0].name if ssl else "random"
    choice = st.radio("Initialization", list(by_name), index=list(by_name).index(default),
                      format_func=lambda n: init_label(by_name[n]) + ("  (suggested)" if n == default and ssl else ""),
                      # a new backbone resets the choice to the new suggestion
                      key="clf_init:" + ",".join(by_name))
    chosen = by_name.get(choice)
    if chosen is not None and chosen.shipped:
        measured = chosen.info.get("evaluation_summary")
        st.caption(f"{'Suggested: ' if choice == default else ''}**{choice}**: {chosen.provenance}."
                   + (f" Measured on real labeled X-rays it was not in: {measured}" if measured else ""))
    elif ssl and choice == ssl[0].name and not shipped:
        info = ssl[0].info or {}
        st.caption(f"Suggested: **{ssl[0].name}** is the newest self-supervised backbone, pretrained on "
                   f"{info.get('n_images', 'unlabeled')} chest X-rays. Backbones pretrained on chest X-rays usually "
                   "give better classifiers from few labeled images than random or ImageNet weights.")
    elif not ssl:
        running = [j for j in svc.runner.jobs() if j.kind == "pretrain" and j.state in ACTIVE]
        msg = ("No self-supervised backbone yet: pretraining is in progress, see Pretrain. "
               "Until it finishes you can use random weights (expect a weak classifier)."
               if running else
               "No self-supervised backbone yet: start one on the Pretrain page. Random weights work but are weak.")
        empty_state(msg, link="pretrain", link_label="Go to Pretrain", icon=":material/hourglass_top:")
    for i in inits:
        if not i.available:
            st.caption(f":material/block: **{method_label(i.method)}** is unavailable: {i.reason}")
    return choice


def draw_build(snap: Any) -> None:
    status_block(snap, "classifier", show_log=False)
    if snap.active:
        st.caption(snap.message or "Starting...")


def show_result(res: dict[str, Any]) -> None:
    """The chosen classifier: AUC with interval, plain-language meaning, downloads."""
    s = res["summary"]
    est = s.get("estimate") or {}
    counts = s.get("counts") or {}
    st.markdown(f"**{res['name']}** · {s['finding']} · {s['init']} · {s['mode']} · "
                f"{counts.get('positive', '?')} with / {counts.get('negative', '?')} without")
    c1, c2, c3 = st.columns([1, 1, 2])
    c1.metric("Estimated AUC", f"{est['auc']:.2f}", help="Area under the ROC curve, by cross-validation.")
    c2.metric("95% interval", f"{est['ci_low']:.2f} – {est['ci_high']:.2f}")
    width = est["ci_high"] - est["ci_low"]
    how = "very uncertain" if width > 0.3 else "uncertain" if width > 0.15 else "fairly precise"
    c3.markdown(
        f"**What this means.** If you take one X-ray with {s['finding']} and one without, the classifier gives the "
        f"first a higher score about **{100 * est['auc']:.0f}%** of the time (50% is a coin flip, 100% is perfect). "
        f"The estimate is **{how}**: with {counts.get('positive', 0) + counts.get('negative', 0)} images, the true "
        f"value for new images like these is probably between {est['ci_low']:.2f} and {est['ci_high']:.2f}."
    )
    if est.get("sentence"):
        st.caption(est["sentence"])
    if est["ci_low"] <= 0.5:
        advice = "Label more images" + ("." if s["init"] not in ("random", "imagenet") and not
                                        s["init"].startswith(("random-", "imagenet-")) else
                                        ", or start from a self-supervised backbone (see Pretrain).")
        st.warning(f"The interval includes 0.5: the classifier may be no better than chance. {advice}",
                   icon=":material/warning:")
    for w in est.get("warnings") or []:
        st.warning(w, icon=":material/warning:")
    path, card = Path(res["path"]), Path(s.get("card", ""))
    d1, d2, _ = st.columns([1, 1, 2])
    if path.exists():
        d1.download_button("Download classifier", path.read_bytes(), file_name=path.name,
                           mime="application/octet-stream", icon=":material/download:", key=f"dl_clf:{res['id']}")
    if card.is_file():
        d2.download_button("Download model card", card.read_text(encoding="utf-8"), file_name=card.name,
                           mime="text/markdown", icon=":material/description:", key=f"dl_card:{res['id']}")
        with st.expander("Model card"):
            st.markdown(card.read_text(encoding="utf-8"))


def predict_panel(res: dict[str, Any], device: str) -> None:
    st.subheader("4 · Try it on new X-rays")
    s = res["summary"]
    path = Path(res["path"])
    if not path.exists():
        st.error(f"The classifier file {path} is missing; build the classifier again.", icon=":material/error:")
        return
    files = st.file_uploader("New chest X-rays (PNG, JPEG, DICOM)", type=[t for t in UPLOAD_TYPES if t != "zip"],
                             accept_multiple_files=True, key=f"clf_predict:{res['id']}")
    if not files:
        st.caption("Each image gets a probability and a Grad-CAM heatmap showing which regions drove the score.")
        return
    loaded = load_classifier(str(path), path.stat().st_mtime, device)
    with st.spinner("Scoring and explaining..."):
        results = explain_uploads(loaded, [(f.name, f.getvalue()) for f in files])
    threshold = float(s.get("threshold", 0.5))
    for r in results:
        st.markdown(f"##### {r.name}")
        if r.error:
            st.error(r.error, icon=":material/broken_image:")
            continue
        c1, c2, c3 = st.columns([2, 2, 3])
        c1.image(r.image, caption="X-ray", clamp=True, width="stretch")
        c2.image(r.overlay, caption="Grad-CAM: red = regions that raised the score", width="stretch")
        with c3:
            st.metric(f"Probability of {s['finding']}", fmt_probability(r.probability))
            st.progress(min(max(r.probability, 0.0), 1.0))
            st.markdown(verdict(r.probability, threshold, s["finding"]))
            st.caption("Decision support only: a clinician must review every image.")


# ------------------------------------------------------------------------------------------- page

svc = services()
page_header(
    "Classifier",
    "Build a classifier for one finding from a few labeled chest X-rays, see how well it is likely to work, "
    "then use it on new images.",
)
left, right = st.columns([1, 1], gap="large")
with left:
    finding, ids = pick_training_images(svc)
with right:
    init = pick_init(svc) if finding else None
if finding and init:
    st.subheader("3 · Build")
    mode = st.radio("Method", list(MODES), format_func=lambda m: MODES[m], key="clf_mode")
    if st.button("Build classifier", type="primary", icon=":material/construction:", key="clf_build"):
        size = int((next((i.info for i in list_inits() if i.name == init), {}) or {}).get("image_size") or 224)
        jid = svc.runner.submit("classify", {"finding": finding, "image_ids": ids, "init": init, "mode": mode,
                                             "image_size": size, "title": f"{finding} ({init}, {mode})"})
        set_watched("classifier", jid)
        st.rerun()

job = watched("classifier", ["classify"])
snap = svc.runner.snapshot(job) if job is not None else None
if snap is not None and snap.state != "done":
    watch(job, draw_build)  # progress while building; the error if it failed

results = svc.store.results(kind="classifier")
if results:
    st.divider()
    st.subheader("Your classifier")
    by_id = {r["id"]: r for r in results}
    newest = (snap.result or {}).get("result_id") if snap is not None and snap.state == "done" else None
    order = list(by_id)
    if newest in by_id and st.session_state.get("clf_seen_job") != job:
        st.session_state["clf_result"] = newest  # a build just finished: show what it made
        st.session_state["clf_seen_job"] = job
    pick = st.selectbox(
        "Classifier", order, index=order.index(newest) if newest in by_id else 0, key="clf_result",
        format_func=lambda i: f"{by_id[i]['name']}  (AUC {by_id[i]['summary']['estimate']['auc']:.2f})",
    )
    show_result(by_id[pick])
    predict_panel(by_id[pick], "cuda" if svc.runner.device.type == "cuda" else "cpu")
