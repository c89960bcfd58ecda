"""Classifier: a few labeled X-rays -> a classifier with an honest accuracy estimate -> predictions with Grad-CAM."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from engine.explain.single_image import heatmap_caveat
from engine.fewshot.classifier import MIN_PER_CLASS, ClassifierDataError, OperatingPoint, check_counts
from engine.escaping import escape_markdown as md
from engine.fewshot.classifier.operating import adjust_to_prevalence
from engine.fewshot.metrics import WIDENED_MARK, interval_notes
from engine.jobs import JobSnapshot
from engine.models import ARCHS, input_size_for, list_inits
from engine.tasks import ClassifyParams
from ui.classifier_panels import operating_panel, prevalence_panel, review_panel, usability_banner
from ui.inference import (DEFAULT_OPACITY, LoadedClassifier, explain_uploads, familiarity_note, fmt_pair, headline,
                          training_note, verdict)
from ui.jobs import set_watched, status_block, watch, watched
from ui.label_next import label_next_section
from ui.validation import validation_section
from ui.services import Services, services
from ui.widgets import UPLOAD_TYPES, empty_state, init_label, method_label, page_header, page_link, synthetic_notice

MODES = {
    "probe": "Probe (recommended): keep the backbone fixed and fit a simple logistic regression on its features. "
             "Fast, and the most reliable with few images.",
    "finetune": "Finetune: also adjust the backbone's last stage (the Benchmark's finetune is this same model). "
                "Slower; can help with 50+ images, can overfit with fewer.",
}


@st.cache_resource(show_spinner="Loading the classifier...", max_entries=4)
def load_classifier(path: str, mtime: float, device: str) -> LoadedClassifier:
    from engine.fewshot.classifier import Classifier

    return LoadedClassifier(Classifier.load(path, device=device))


def pick_training_images(svc: Services) -> tuple[str | None, list[int]]:
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
        page_link("data", label="Label more images on the Data page", icon=":material/arrow_forward:")
        return None, []
    return finding, [int(i) for i in use["id"]]


def measured_aucs(svc: Services, finding: str, n_pos: int, n_neg: int) -> dict[str, dict[str, Any]]:
    """{init: the best cross-validated estimate} among this workspace's classifiers for `finding` built on the
    same number of images of each class (measured evidence on the user's own images)."""
    best: dict[str, dict[str, Any]] = {}
    for r in svc.store.results(kind="classifier"):
        s = r["summary"]
        c, e = s.get("counts") or {}, s.get("estimate") or {}
        if s.get("finding") != finding or (c.get("positive"), c.get("negative")) != (n_pos, n_neg) or "auc" not in e:
            continue
        if s["init"] not in best or e["auc"] > best[s["init"]]["auc"]:
            best[s["init"]] = {**e, "name": r["name"], "mode": s.get("mode")}
    return best


@st.cache_data(show_spinner="Timing this machine...", max_entries=32, ttl=60)
def expected_seconds(n: int, mode: str, arch: str, size: int, device: str,
                     sample_paths: tuple[str, ...] = ()) -> dict[str, float]:
    """Build time timed now (engine.fewshot.classifier.timing), so it includes the current load; kept 60 s."""
    from engine.fewshot.classifier import estimate_seconds

    return estimate_seconds(n, mode, arch, size, device=device, sample_paths=sample_paths)


def fmt_minutes(seconds: float) -> str:
    return f"about {max(1, round(seconds))} s" if seconds < 90 else f"about {seconds / 60:.0f} min"


def suggestion(measured: dict[str, dict[str, Any]], available: list, n_images: int) -> tuple[str | None, str]:
    """(suggested init or None, why): the best cross-validated AUC on these images when several backbones
    were tried, else the best shipped backbone (measured on real X-rays), else none."""
    shipped = [i for i in available if i.shipped]
    if len(measured) >= 2:
        suggested = max(measured, key=lambda k: measured[k]["auc"])
        m = measured[suggested]
        return suggested, (
            f"Suggested: **{suggested}** had the highest cross-validated AUC on your {n_images} images "
            f"({m['auc']:.2f}, 95% interval {m['ci_low']:.2f}-{m['ci_high']:.2f}) of the {len(measured)} backbones "
            "you tried. Overlapping intervals mean the difference may be chance.")
    if shipped:
        ev = shipped[0].info.get("evaluation_summary")
        return shipped[0].name, (
            f"Suggested: **{shipped[0].name}** ships with scarce-cxr: {shipped[0].provenance}."
            + (f" Measured on real labeled X-rays it was not trained on: {ev}" if ev else "")
            + " Not yet measured on your images: *Compare backbones* below does that.")
    return None, ("No backbone is suggested: none has been measured on your images yet. *Compare backbones* builds a "
                  "quick probe with each one and shows their cross-validated AUC.")


def compare_button(svc: Services, finding: str, ids: list[int], by_name: dict, untried: list[str]) -> None:
    """Probe every backbone not tried yet on these images (one classify job each, marked `comparison`: they
    fill the measured table, never the classifier list nor the display of the classifier the user built)."""
    dev = svc.runner.device.type
    size = {n: input_size_for(by_name[n], dev) for n in untried}  # each at its own input size (the registry's)
    eta = sum(expected_seconds(len(ids), "probe", by_name[n].arch, size[n], "cuda" if dev == "cuda" else "cpu"
                               )["seconds"] for n in untried)
    running = job_running(svc, "classifier_compare")
    if running:
        st.caption(":material/hourglass_top: Comparing backbones... the table above fills in as each probe finishes.")
    if st.button(f"Compare backbones on these images ({len(untried)} probe{'s' if len(untried) != 1 else ''}, {fmt_minutes(eta)})",
                 icon=":material/compare_arrows:", key="clf_compare", disabled=running,
                 help="Builds a probe classifier with each backbone not tried yet and lists their "
                      "cross-validated AUC, so the suggestion rests on your own images."):
        jid = None
        for n in untried:
            jid = svc.runner.submit("classify", ClassifyParams(
                finding=finding, image_ids=tuple(ids), init=n, mode="probe",
                image_size=size[n], comparison=True, title=f"{finding} ({n}, probe, comparison)"))
        set_watched("classifier_compare", jid)
        st.rerun()


def job_running(svc: Services, page: str) -> bool:
    """True while the job this page key watches is queued or running (its button is then disabled)."""
    jid = st.session_state.get(f"watch:{page}")
    if jid is None:
        return False
    try:
        return bool(svc.runner.snapshot(jid).active)
    except KeyError:
        return False


def pick_init(svc: Services, finding: str, ids: list[int]) -> str | None:
    """Step 2: starting backbone. Suggested only on measured evidence (see `suggestion`)."""
    st.subheader("2 · Starting backbone")
    inits = list_inits()
    available = [i for i in inits if i.available]
    by_name = {i.name: i for i in available}
    synthetic = {i.name for i in available if i.kind == "synthetic"}  # recorded training data, not the name
    labeled = svc.store.images(finding)
    y = labeled.loc[labeled["id"].isin(ids), finding].to_numpy()
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    measured = {k: v for k, v in measured_aucs(svc, finding, n_pos, n_neg).items() if k in by_name}
    suggested, why = suggestion(measured, available, n_pos + n_neg)
    names = list(by_name)
    default = suggested if suggested in by_name else "random"
    choice = st.radio("Initialization", names, index=names.index(default),
                      format_func=lambda n: init_label(by_name[n])
                      + ("  (suggested)" if n == suggested else ""),
                      key="clf_init:" + ",".join(names) + f":{suggested}")  # a new suggestion resets the choice
    st.caption(why)
    chosen = by_name.get(choice)
    if chosen is not None and choice != suggested:
        if choice in synthetic:
            st.warning(f"**{choice}** was pretrained on synthetic phantom images (its training record says so), not "
                       "on real X-rays: it is not expected to help on real images.", icon=":material/science:")
        else:
            st.caption(f"**{choice}**: {chosen.provenance}.")
    if measured:
        rows = [{"backbone": k, "AUC": round(v["auc"], 3),
                 "95% interval": f"{v['ci_low']:.2f}-{v['ci_high']:.2f}" + (WIDENED_MARK if v.get("ci_note") else ""),
                 "method": v.get("mode"), "classifier": v["name"]}
                for k, v in sorted(measured.items(), key=lambda kv: -kv[1]["auc"])]
        st.caption(f"Measured on your {n_pos + n_neg} images (cross-validated):")
        st.dataframe(rows, hide_index=True, width="stretch")
        for note in interval_notes(v.get("ci_note") for v in measured.values()):
            st.caption(f"{WIDENED_MARK.strip()} {note}.")
    untried = [n for n in names if n not in measured]
    if untried:
        compare_button(svc, finding, ids, by_name, untried)
    for i in inits:
        if not i.available:
            st.caption(f":material/block: **{method_label(i.method)}** is unavailable: {i.reason}")
    return choice


def draw_build(snap: JobSnapshot) -> None:
    status_block(snap, "classifier", show_log=False)
    if snap.active:
        st.caption(snap.message or "Starting...")


def show_result(res: dict[str, Any], usable: bool = True) -> None:
    """The chosen classifier: AUC with interval, plain-language meaning, downloads (the classifier file only
    when it is usable; the model card always)."""
    s = res["summary"]
    est = s.get("estimate") or {}
    counts = s.get("counts") or {}
    st.markdown(f"**{md(res['name'])}** · {md(s['finding'])} · {md(s['init'])} · {s['mode']} · "
                f"{counts.get('positive', '?')} with / {counts.get('negative', '?')} without")
    c1, c2, c3 = st.columns([1, 1, 2])
    c1.metric("Estimated AUC", f"{est['auc']:.2f}", help="Area under the ROC curve, by cross-validation.")
    c2.metric("95% interval", f"{est['ci_low']:.2f} – {est['ci_high']:.2f}",
              help=est.get("ci_note") or "Percentile bootstrap over the images' cross-validated scores.")
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
    for w in est.get("warnings") or []:
        st.warning(w, icon=":material/warning:")
    path, card = Path(res["path"]), Path(s.get("card", ""))
    d1, d2, _ = st.columns([1, 1, 2])
    if path.exists() and not usable:
        d1.caption(":material/block: No download: this classifier is marked not usable.")
    elif path.exists():
        d1.download_button("Download classifier", path.read_bytes(), file_name=path.name,
                           mime="application/octet-stream", icon=":material/download:", key=f"dl_clf:{res['id']}")
    if card.is_file():
        d2.download_button("Download model card", card.read_text(encoding="utf-8"), file_name=card.name,
                           mime="text/markdown", icon=":material/description:", key=f"dl_card:{res['id']}")
        with st.expander("Model card"):
            st.markdown(card.read_text(encoding="utf-8"))


def open_classifier(res: dict[str, Any], device: str) -> LoadedClassifier | None:
    """The cached loaded classifier, or None with the reason shown (missing or refused file)."""
    from engine.fewshot.classifier import ClassifierLoadError

    path = Path(res["path"])
    if not path.exists():
        st.error(f"The classifier file {path} is missing; build the classifier again.", icon=":material/error:")
        return None
    try:
        return load_classifier(str(path), path.stat().st_mtime, device)
    except ClassifierLoadError as e:
        st.error(str(e), icon=":material/error:")
        return None


def explained(res: dict[str, Any], loaded: LoadedClassifier, files: list) -> list:
    """Scores + heatmaps of the uploaded files, computed once per file set (kept in the session: the opacity
    slider, the operating point and the prevalence redraw without re-scoring)."""
    import hashlib

    key = ("clf_explained", res["id"], tuple((f.name, hashlib.sha256(f.getvalue()).hexdigest()) for f in files))
    cache = st.session_state.setdefault("clf_explained", {})
    if key not in cache:
        with st.spinner(f"Scoring and explaining {len(files)} image(s)..."):
            cache.clear()  # one file set at a time
            cache[key] = explain_uploads(loaded, [(f.name, f.getvalue()) for f in files])
    return cache[key]


def predict_panel(res: dict[str, Any], loaded: LoadedClassifier | None, op: OperatingPoint | None,
                  prevalence: float | None, usable: bool) -> None:
    st.subheader("4 · Try it on new X-rays")
    s = res["summary"]
    if loaded is None:
        return
    if not usable and not st.checkbox("Score images anyway, only to see how it fails (its answers are not to be "
                                      "relied on)", key=f"clf_force:{res['id']}"):
        return
    files = st.file_uploader("New chest X-rays (PNG, JPEG, DICOM)", type=[t for t in UPLOAD_TYPES if t != "zip"],
                             accept_multiple_files=True, key=f"clf_predict:{res['id']}")
    if not files:
        st.caption("Each image gets a calibrated probability, a verdict at the operating point above, a warning when "
                   "it is unlike the training images, and a Grad-CAM heatmap of what raised the score.")
        return
    opacity = st.slider("Heatmap opacity (where the map is highest; the X-ray shows through where it is low)", 0.0,
                        1.0, DEFAULT_OPACITY, 0.05, key="clf_opacity")
    threshold = op.threshold if op is not None else loaded.clf.threshold
    train_q = loaded.clf.training_prevalence
    caveat = heatmap_caveat(loaded.clf.image_size)
    for r in explained(res, loaded, files):
        st.markdown(f"##### {md(r.name)}")  # the uploaded file's name: text, never Markdown
        if r.error:
            st.error(md(r.error), icon=":material/broken_image:")
            continue
        c1, c2, c3 = st.columns([2, 2, 3])
        c1.image(r.image, caption="X-ray", clamp=True, width="stretch")
        c2.image(r.overlay_at(opacity), caption="Grad-CAM: red = regions that raised the score", width="stretch")
        c2.caption(f":material/info: {caveat}")
        with c3:
            st.markdown(f"### {md(headline(r.probability, threshold, s['finding']))}")
            ps, _ = fmt_pair(r.probability, threshold)
            st.metric(f"Probability of {s['finding']} (calibrated)", ps,
                      help=f"Calibrated at the training prevalence ({train_q:.0%} of the training images have it).")
            st.progress(min(max(r.probability, 0.0), 1.0))
            st.markdown(verdict(r.probability, threshold, s["finding"]))
            if prevalence is not None and train_q == train_q and abs(prevalence - train_q) > 0.001:
                adj = float(adjust_to_prevalence(r.probability, train_q, prevalence))
                st.markdown(f"At the expected prevalence **{prevalence:.1%}** its probability is **{adj:.2f}** "
                            "(Bayes' odds adjustment); the verdict, sensitivity and specificity stay the same.")
            note = familiarity_note(r)
            if note:
                st.warning(note, icon=":material/help:")
            if training_note(r):
                st.info(training_note(r), icon=":material/school:")
            st.caption("Decision support only: a clinician must review every image.")


# ------------------------------------------------------------------------------------------- page

svc = services()
page_header(
    "Classifier",
    "Build a classifier for one finding from a few labeled chest X-rays, see how well it is likely to work, "
    "then use it on new images.",
)
synthetic_notice(svc.workspace)
left, right = st.columns([1, 1], gap="large")
with left:
    finding, ids = pick_training_images(svc)
with right:
    init = pick_init(svc, finding, ids) if finding else None
if finding and init:
    st.subheader("3 · Build")
    mode = st.radio("Method", list(MODES), format_func=lambda m: MODES[m], key="clf_mode")
    info = next((i for i in list_inits() if i.name == init), None)
    size = input_size_for(info if info is not None else init, svc.runner.device.type)  # the init's input contract
    arch = info.arch if info is not None and info.arch in ARCHS else "resnet18"  # the registry's arch
    imgs = svc.store.images()
    sample = tuple(imgs.loc[imgs["id"].isin(ids[:2]), "file"].astype(str))
    eta = expected_seconds(len(ids), mode, arch, size, "cuda" if svc.runner.device.type == "cuda" else "cpu", sample)
    st.caption(f":material/schedule: Expected time on this machine: **{fmt_minutes(eta['seconds'])}** "
               f"({len(ids)} images at {size} px; {int(eta['trainings'])} model fits for "
               f"{int(eta['repeats'])} repeat(s) of cross-validation plus the final one; timed on this computer "
               "within the last minute, so it includes the current load; it grows if other jobs start).")
    building = job_running(svc, "classifier")
    if st.button("Build classifier", type="primary", icon=":material/construction:", key="clf_build", disabled=building,
                 help="Disabled while a build runs." if building else None):
        jid = svc.runner.submit("classify", ClassifyParams(finding=finding, image_ids=tuple(ids), init=init, mode=mode,
                                                           image_size=size, title=f"{finding} ({init}, {mode})"))
        set_watched("classifier", jid)
        st.rerun()

job = watched("classifier", ["classify"])
snap = svc.runner.snapshot(job) if job is not None else None
if snap is not None and (snap.params or {}).get("comparison"):
    job, snap = None, None  # a comparison probe never takes over the display of the user's own build
if snap is not None and snap.state != "done":
    watch(job, draw_build)  # progress while building; the error if it failed

results = [r for r in svc.store.results(kind="classifier") if not r["summary"].get("comparison")]
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
        format_func=lambda i: f"{by_id[i]['name']}  (AUC {by_id[i]['summary']['estimate']['auc']:.2f})"
        + ("  - NOT USABLE" if by_id[i]["summary"].get("usable") is False else ""),
    )
    res = by_id[pick]
    loaded = open_classifier(res, "cuda" if svc.runner.device.type == "cuda" else "cpu")
    usable = usability_banner(loaded.clf) if loaded is not None else True
    show_result(res, usable)
    op = prevalence = None
    if loaded is not None:
        op, rep = operating_panel(res, loaded.clf)
        prevalence = prevalence_panel(res, loaded.clf, op, rep)
        imgs = svc.store.images()
        names = dict(zip(imgs["id"].astype(int), imgs["name"]))
        review_panel(res, loaded.clf, op, svc.store.thumbnail, names)
    predict_panel(res, loaded, op, prevalence, usable)
    validation_section(svc, res, loaded)  # ui/validation.py: test set, batch scoring (issue 21 item 6)
    label_next_section(svc, res)  # ui/label_next.py: learning curve, label these next (issue 21 item 7)
