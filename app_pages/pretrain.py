"""Pretrain: self-supervised backbones from unlabeled X-rays, with a live loss and collapse monitor."""
from __future__ import annotations

import re
from typing import Any

import pandas as pd
import streamlit as st

from engine.jobs import JobSnapshot
from engine.models import UnknownInitError, init_info, list_inits
from engine.ssl import METHODS
from engine.ssl.monitor import ERANK_MIN, RELATIVE_DROP, STD_MIN, WARMUP_READINGS, collapse_status
from engine.ssl.pretrain import SSL_ARCHS
from engine.tasks import PretrainParams
from engine.tasks.pretrain import pretrain_rows
from ui.backbone_import import import_section
from ui.jobs import job_table, job_warnings, start_job, status_block, watch, watched
from ui.monitor_plots import control_figure, online_eval_figure, study_collapse_figure
from ui.plots import collapse_figure, live_figure, loss_figure
from ui.services import services
from ui.widgets import default_image_size, empty_state, init_label, is_ssl, method_label, page_header

SIZES = [64, 96, 128, 160, 192, 224, 256]  # multiples of 32 (SparK's patch)
# Method texts from the SSL registry (engine/ssl/registry.py).
METHOD_HELP = {name: spec.summary for name, spec in METHODS.items()}
CONTROL_KNOB = {name: spec.collapse_knob.label for name, spec in METHODS.items() if spec.collapse_knob is not None}
LONG_METHODS = " and ".join(spec.label for spec in METHODS.values() if "long" in spec.presets)
KNOBS = "; ".join(f"{METHODS[name].label}: the {knob}" for name, knob in CONTROL_KNOB.items())
NO_KNOB_METHODS = " and ".join(spec.label for name, spec in METHODS.items() if name not in CONTROL_KNOB)


def unique_name(base: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", base).strip("-") or "backbone"
    if base not in taken:
        return base
    i = 2
    while f"{base}-{i}" in taken:
        i += 1
    return f"{base}-{i}"


def image_set_sizes(images: pd.DataFrame, findings: list[str]) -> dict[str, int]:
    """How many images a run on each workspace image set trains on ("all", "finding:<name>"), by the
    job's own rule (engine.tasks.pretrain.pretrain_rows: the test split is left out)."""
    rows = pretrain_rows(images)
    return {"all": len(rows), **{f"finding:{f}": int(rows[f].notna().sum()) for f in findings}}


def image_set_inputs(images: pd.DataFrame, findings: list[str], sizes: dict[str, int]) -> tuple[str, str]:
    """The form's image set: "all", "finding:<name>" or "path", and the path typed for the last."""
    n_test = len(images) - sizes["all"]
    left_out = f"; {n_test} test-split image{'s' * (n_test != 1)} left out" if n_test else ""
    sets = {"all": f"All workspace images ({sizes['all']}{left_out})"}
    for f in findings:
        note = "; test split left out" if n_test else ""
        sets[f"finding:{f}"] = f"Images labeled for {f} ({sizes[f'finding:{f}']}{note})"
    sets["path"] = "A manifest CSV or a folder of images on this computer"
    image_set = st.selectbox("Images", list(sets), format_func=sets.get, key="pt_set",
                             help="Labels are not used: pretraining learns from the pictures alone. Test-split images "
                                  "are never used, so the few-shot test images stay unseen.")
    path = st.text_input("Path (only for 'a manifest CSV or a folder')", key="pt_path")
    return image_set, path


def refusal(name: str, taken: set[str], method: str, preset: str, control: bool, image_set: str, path: str,
            n_images: int, arch: str = "resnet18", start: str = "random") -> str | None:
    """Why a run with these choices cannot start (shown as an error; no job is submitted), or None."""
    if name in taken:
        return f"A backbone named {name!r} exists already: choose another name."
    if start not in ("random", "imagenet"):
        try:
            start_arch = init_info(start).arch
        except UnknownInitError:
            return f"The backbone {start!r} to start from is no longer here: choose another."
        if start_arch != arch:
            return (f"{start!r} is a {start_arch}: a warm start continues the same network, so choose Backbone "
                    f"{start_arch} or start from random weights.")
    try:
        from engine.ssl.presets import preset_overrides

        preset_overrides(method, preset)
    except ValueError as e:  # e.g. no 'long' recipe for SparK / DINO
        return f"{e}"
    if control:
        if method not in CONTROL_KNOB:
            return (f"{method_label(method)} has no regularization weight for collapse control to adjust (SparK's loss "
                    "is reconstruction alone; DINO centres and sharpens its teacher instead). Untick 'Adaptive collapse "
                    "control' or choose MoCo v2, Barlow Twins or masked-contrastive.")
    if image_set == "path" and not path.strip():
        return "Enter the path of a manifest CSV or a folder of images."
    if image_set != "path" and n_images < 2:
        return (f"Pretraining needs at least 2 images and this set has {n_images} (test-split images are left out): "
                "import more on the Data page first.")
    return None


def start_form(images: pd.DataFrame, findings: list[str]) -> None:
    svc = services()
    sizes = image_set_sizes(images, findings)
    counts = svc.store.counts()  # labels per finding: the online evaluation needs both classes
    from engine.paths import checkpoints_dir
    from engine.reservations import reserved_checkpoints

    taken = {i.name for i in list_inits()} | set(reserved_checkpoints(checkpoints_dir()))  # + names of runs in flight
    with st.form("pretrain_form", border=True):
        c1, c2 = st.columns(2)
        method = c1.selectbox("Method", list(METHODS), format_func=method_label, key="pt_method")
        arch = c2.selectbox("Backbone", list(SSL_ARCHS), key="pt_arch",
                            help="resnet18 trains fast on a CPU; resnet50 is the studies' choice on a GPU.")
        starts = ["random", "imagenet"] + [i.name for i in list_inits() if is_ssl(i) and i.available]
        labels = {i.name: init_label(i) for i in list_inits()}
        start = st.selectbox("Start from", starts, key="pt_start",
                             format_func=lambda n: {"random": "Random weights",
                                                    "imagenet": "ImageNet weights (needs the offline file)"}.get(
                                                        n, f"Continue {labels.get(n, n)} (warm start)"),
                             help="A warm start continues a backbone of the same network (e.g. the shipped one) on "
                                  "these images with a new schedule; its card then records the lineage and the "
                                  "epochs summed over every run.")
        image_set, path = image_set_inputs(images, findings, sizes)
        c3, c4, c5 = st.columns(3)
        epochs = c3.number_input("Epochs", 1, 1000, 20, key="pt_epochs",
                                 help="Passes over the images. Studies use 100-800; a short CPU demo uses 10-30.")
        batch = c4.selectbox("Batch size", [8, 16, 32, 64, 128, 256, 512], index=3, key="pt_batch",
                             help="Images per step (capped at the number of images).")
        size = c5.selectbox("Image size (pixels)", SIZES, key="pt_size",
                            index=SIZES.index(default_image_size(svc.runner.device.type)),  # the device's working size
                            help="224 matches the studies; 64-96 is enough for a CPU demo. The backbone records it: "
                                 "classifiers and benchmarks run it at this size.")
        preset = st.radio("Recipe", ["quick", "paper", "study", "long"], horizontal=True, key="pt_preset",
                          format_func={"quick": "Quick (CPU, a few hundred steps)",
                                       "paper": "Paper (each method's published recipe, long GPU runs)",
                                       "study": "Study (the seed study's: MoCo v2 with T 0.07 + variance term)",
                                       "long": "Long (the shipped backbone's: GPU, batch 256, ~10k images)"}.get,
                          help="Quick uses settings measured to beat random init in short runs at batch 32 "
                               "(smaller queue and heads, lower learning rate, milder crops with blur so two "
                               "views share no pixel grain, no DINO local crops). Paper is each method's published "
                               "recipe (MoCo v2: T 0.2, no variance term); Study is the seed study's variant. "
                               "Long is the recipe of the "
                               f"shipped backbone, for {LONG_METHODS}; see engine/ssl/presets.py.")
        cc1, cc2 = st.columns([3, 2])
        control = cc1.checkbox("Adaptive collapse control", key="pt_control",
                               help="At every collapse-monitor reading, double the method's regularization weight "
                                    f"({KNOBS}) "
                                    "while the head's effective rank is below the target, halve it "
                                    "once the rank is 1.25 x the target, within 1/8 to 16 x its starting value. "
                                    f"{NO_KNOB_METHODS} have no such weight and refuse it.")
        target = cc2.number_input("Target effective rank", 0.0, 512.0, 0.0, step=1.0, key="pt_control_target",
                                  help="0 = auto: the run's own first reading (its untrained network's rank), so the "
                                       "run keeps at least the rank it started with.")
        usable = [f for f in findings if min(counts[f]["positive"], counts[f]["negative"]) >= 2]
        online = st.selectbox("Online evaluation", [""] + usable, key="pt_online_eval",
                              format_func=lambda f: f"kNN AUC on the images labeled for {f}" if f else "Off",
                              help="At collapse-monitor readings, a kNN classifier on the backbone's features scores "
                                   "half of the images labeled for this finding from the other half (at most 400): "
                                   "whether the features improve for it, beside the loss. Labels are used only "
                                   "for this.")
        name = st.text_input("Name of the new backbone", value=unique_name(f"{method}-{arch}-{svc.workspace.name}", taken),
                             key="pt_name", help="Letters, digits, '-' and '_'.")
        go = st.form_submit_button("Start pretraining", type="primary", icon=":material/play_arrow:")
    if not go:
        return
    problem = refusal(name, taken, method, preset, control, image_set, path, sizes.get(image_set, 0), arch, start)
    if problem:
        st.error(problem, icon=":material/error:")
        return
    image_ids = None
    if image_set.startswith("finding:"):
        f = image_set.split(":", 1)[1]
        imgs = svc.store.images(f)
        image_ids = tuple(int(i) for i in imgs.loc[imgs[f].notna(), "id"])
    # the name is checked and reserved at submit: another run may have taken it meanwhile
    start_job("pretrain", "pretrain", lambda: PretrainParams(
        method=method, arch=arch, epochs=int(epochs), batch_size=int(batch), image_size=int(size), preset=preset,
        out_name=name, init=start,
        collapse_control=(f"erank:{float(target):g}" if target > 0 else "erank:auto") if control else None,
        data=path.strip() if image_set == "path" else None, image_ids=image_ids, online_eval_finding=online or None))


def draw_job(snap: JobSnapshot) -> None:
    p = snap.params
    st.markdown(f"**{p.get('out_name', 'backbone')}** · {method_label(p.get('method', ''))} · {p.get('arch', '')} · "
                f"{p.get('epochs', '?')} epochs · batch {p.get('batch_size', '?')} · {p.get('image_size', '?')} px · "
                f"{p.get('preset', 'paper')} recipe"
                + (f" · from {p['init']}" if p.get("init", "random") != "random" else "")
                + (f" · collapse control {p['collapse_control']}" if p.get("collapse_control") else ""))
    status_block(snap, "pretrain", show_warnings=False)
    hist = snap.history or []
    losses = [h["loss"] for h in hist if "loss" in h]
    coll = [h for h in hist if "collapse_std" in h]
    status = monitor_status(snap, coll)
    if not losses and not coll:
        if snap.active:
            st.caption(snap.message or "Preparing the images...")
        return
    m1, m2, m3, m4 = st.columns(4)
    if losses:
        m1.metric("Loss", f"{losses[-1]:.4f}", delta=f"{losses[-1] - losses[0]:+.3f}" if len(losses) > 1 else None,
                  delta_color="inverse", help="Latest training loss; the change is since the first step.")
    if coll:
        last = coll[-1]
        m2.metric("Spread (std)", f"{last['collapse_std']:.3f}", help="Collapse monitor: higher is healthier.")
        m3.metric("Mean cosine", f"{last.get('collapse_cos', float('nan')):.3f}", help="Collapse monitor: lower is healthier.")
        m4.metric("Effective rank", f"{last.get('collapse_erank', float('nan')):.1f}", help="Collapse monitor: higher is healthier.")
    c1, c2 = st.columns([2, 3])
    c1.plotly_chart(live_figure(loss_figure, hist, uses=("loss",)), width="stretch", key=f"loss:{snap.id}")
    online_panel(snap, hist, c1)
    if coll:
        c2.plotly_chart(live_figure(collapse_figure, hist, STD_MIN, ERANK_MIN, uses=("collapse_",)), width="stretch",
                        key=f"collapse:{snap.id}")
        st.caption("Collapse monitor: a fixed sample of the training images is embedded every few steps. A healthy run "
                   "keeps the images spread apart (spread above the dotted line, mean cosine well below 1, effective "
                   "rank above the dotted line). If these flatline, the backbone is learning nothing useful.")
        study_metrics(snap, hist, last)
        control_panel(snap, hist, last)
    if snap.state == "done" and snap.result:
        if status == "warning":  # saved and listed, but not called ready: its last reading looks collapsed
            st.warning(f"Backbone **{snap.result.get('checkpoint')}** was saved and appears as an init on the "
                       "Classifier, Benchmark and Grad-CAM pages, but its last collapse-monitor reading looks "
                       "collapsed (above): expect it to do no better than random weights.", icon=":material/warning:")
        elif status == "warmup":  # too short to judge: say so rather than "ready"
            st.info(f"Backbone **{snap.result.get('checkpoint')}** was saved and appears as an init on the "
                    "Classifier, Benchmark and Grad-CAM pages. The run ended within the collapse monitor's warm-up, "
                    "so whether it collapsed was not judged; compare it with random weights on the Benchmark page.",
                    icon=":material/info:")
        else:
            st.success(f"Backbone **{snap.result.get('checkpoint')}** is ready: it now appears as an init on the "
                       "Classifier, Benchmark and Grad-CAM pages.", icon=":material/check_circle:")


def online_panel(snap: JobSnapshot, hist: list[dict[str, Any]], where: Any) -> None:
    """The online evaluation beside the loss (engine.ssl.online_eval): kNN AUC with its interval, and what it means."""
    rows = [h for h in hist if "online_auc" in h]
    if not rows:
        return
    finding = snap.params.get("online_eval_finding") or ""
    where.plotly_chart(live_figure(online_eval_figure, hist, finding, uses=("online_",)), width="stretch",
                       key=f"online:{snap.id}")
    first, last = rows[0], rows[-1]
    d, se = last["online_auc"] - first["online_auc"], (last["online_auc_se"] ** 2 + first["online_auc_se"] ** 2) ** 0.5
    verdict = ("better than at its first reading" if d > 2 * se else "worse than at its first reading" if d < -2 * se
               else "not distinguishable from its first reading")
    n_mem, n_query = int(last["online_n_memory"]), int(last["online_n_query"])
    where.caption(f"kNN on {n_mem} labeled images, scoring {n_query} others: "
                  f"AUC {last['online_auc']:.3f} ± {1.96 * last['online_auc_se']:.3f} (95%) at step {int(last['step'])}, "
                  f"{d:+.3f} vs the first reading ({first['online_auc']:.3f}, step {int(first['step'])}, dashed): "
                  f"{verdict} "
                  "(2 SE, readings treated as independent). Chance is 0.5.")


def study_metrics(snap: JobSnapshot, hist: list[dict[str, Any]], last: dict[str, float]) -> None:
    """The seed study's collapse numbers for the latest reading and over steps (engine.ssl.monitor)."""
    if "collapse_centred_erank" not in last:  # a run from before the study's set was recorded
        return
    with st.expander("The study's metrics (raw std, mean cosine of random pairs, centred effective rank)",
                     icon=":material/compare_arrows:"):
        rows = [{"Features": name, "Raw feature std": last.get(f"{p}raw_std"),
                 "Mean cosine of random pairs": last.get(f"{p}cos"),
                 "Effective rank (centred)": last.get(f"{p}centred_erank"),
                 "Effective rank (uncentred, RankMe)": last.get(f"{p}erank")}
                for name, p in (("head (the loss's space)", "collapse_"), ("backbone (pooled)", "collapse_backbone_"))]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                     column_config={"Raw feature std": st.column_config.NumberColumn(format="%.4g"),
                                    "Mean cosine of random pairs": st.column_config.NumberColumn(format="%.3f"),
                                    "Effective rank (centred)": st.column_config.NumberColumn(format="%.1f"),
                                    "Effective rank (uncentred, RankMe)": st.column_config.NumberColumn(format="%.1f")})
        st.plotly_chart(live_figure(study_collapse_figure, hist, uses=("collapse_",)), width="stretch",
                        key=f"study:{snap.id}")
        st.caption("The numbers the seed study reports, for comparison with it: raw feature std (per-dimension std "
                   "of the unnormalized features, averaged; in feature units, so compare it within one method), mean "
                   "cosine of random pairs (the same quantity as the mean cosine above), and the effective rank of "
                   "the centred features (the direction every image shares does not count, so it is higher than the "
                   "uncentred rank above when the images are nearly parallel). The warnings use the metrics above.")


def control_panel(snap: JobSnapshot, hist: list[dict[str, Any]], last: dict[str, float]) -> None:
    """Live view of the adaptive collapse controller: weight in use, its adjustments, weight and rank over steps."""
    if "collapse_control_weight" not in last:
        return
    knob = CONTROL_KNOB.get(snap.params.get("method", ""), "weight")
    adjustments = [line for line in snap.log if "collapse control:" in line]
    auto = str(snap.params.get("collapse_control", "")).endswith(("auto", "erank"))
    st.markdown(f"**Adaptive collapse control** · target effective rank {last.get('collapse_control_target', 0):.1f}"
                + (" (auto: the run's first reading)" if auto else ""))
    c1, c2 = st.columns(2)
    c1.metric(f"{knob[:1].upper() + knob[1:]} in use", f"{last['collapse_control_weight']:.4g}",
              help="Doubled at a reading below the target, halved at 1.25 x the target or more, within 1/8 to 16 x "
                   "the starting value (engine/ssl/monitor.py).")
    c2.metric("Adjustments (latest log)", len(adjustments))
    st.plotly_chart(live_figure(control_figure, hist, knob, uses=("collapse_",)), width="stretch",
                    key=f"control:{snap.id}")
    weights = {h.get("collapse_control_weight") for h in hist if "collapse_control_weight" in h}
    if len(weights) <= 1:
        st.info(f"No adjustment was needed so far: the effective rank stayed at or above the target at every reading, "
                f"so the {knob} stayed at its starting value {last['collapse_control_weight']:.4g}.",
                icon=":material/info:")
    if adjustments:
        st.code("\n".join(adjustments[-8:]), language=None)


def monitor_status(snap: JobSnapshot, coll: list[dict[str, Any]]) -> str:
    """One current collapse status line for the run (the latest of its monitor readings `coll`, in plain
    words, judged against the run's own early readings after a warm-up, the same rule for every method:
    engine.ssl.monitor.collapse_status), the earlier readings' warnings on demand in an expander, then
    the job's other warnings. Returns the status level."""
    last = coll[-1] if coll else None
    level, line, problems = collapse_status(last, last.get("step") if last else None, "collapse_", history=coll)
    earlier = [w for w in job_warnings(snap) if w.startswith("collapse") and w != f"collapse: {line}"]
    others = [w for w in job_warnings(snap) if not w.startswith("collapse")]
    if level == "warning":
        st.warning(f"**Collapse monitor:** {line}", icon=":material/warning:")
    elif level == "ok":
        st.success(f"**Collapse monitor:** {line[:1].upper() + line[1:]}"
                   + (f" {len(earlier)} earlier reading{'s' * (len(earlier) != 1)} looked collapsed (details below)."
                      if earlier else ""), icon=":material/check_circle:")
    elif level in ("baseline", "warmup") or snap.active:
        st.caption(f"Collapse monitor: {line[:1].upper() + line[1:]}")
    if last is not None or earlier:
        with st.expander("Collapse monitor details", icon=":material/monitor_heart:"):
            st.markdown(f"Every method is judged by the same rule, on its head embedding (if it has one) and on "
                        f"its pooled backbone features, against the run's own early readings: the step-0 reading "
                        f"of the untrained network and the next {WARMUP_READINGS} are the warm-up (only outright "
                        f"collapse is flagged then); afterwards a reading is flagged when its spread, effective "
                        f"rank or 1 - mean cosine falls below {RELATIVE_DROP:g} x the median of the early "
                        f"readings, or under the floors spread {STD_MIN:g} / effective rank {ERANK_MIN:g} "
                        f"(engine/ssl/monitor.py). A mean cosine near 1 alone is no collapse: an untrained "
                        f"network's is ~0.99 on X-rays.")
            for p in problems:
                st.markdown(f"- latest reading: {p}")
            if earlier:
                st.markdown(f"Earlier readings that looked collapsed ({len(earlier)}):")
                st.code("\n".join(earlier[-20:]), language=None, wrap_lines=True)
    for w in others:
        st.warning(w, icon=":material/warning:")
    return level


BACKBONE_COLUMNS = ["Name", "Method", "Images", "Size (px)", "Epochs", "Mean cosine", "Eff. rank", "Created"]


def backbones_table() -> None:
    inits = list_inits()
    trained = [i for i in inits if is_ssl(i) and i.available]  # unreadable ones: their reason below
    if trained:
        rows = []
        for i in trained:
            info = i.info or {}
            final = (info.get("collapse") or {}).get("final") or {}
            rows.append({
                "Name": i.name, "Method": method_label(i.method), "Arch": i.arch,
                "Epochs": round(float(info["epochs"]), 1) if info.get("epochs") is not None else None,
                "Steps": info.get("steps"), "Images": info.get("n_images"), "Size (px)": info.get("image_size"),
                "Spread (std)": final.get("std"), "Mean cosine": final.get("cos"), "Eff. rank": final.get("erank"),
                "Raw std (study)": final.get("raw_std"), "Centred eff. rank (study)": final.get("centred_erank"),
                "Created": str(info.get("created", "")).replace("T", " "),
            })
        table = pd.DataFrame(rows)
        fmt = {"Spread (std)": st.column_config.NumberColumn(format="%.3f"),
               "Mean cosine": st.column_config.NumberColumn(format="%.3f"),
               "Eff. rank": st.column_config.NumberColumn(format="%.1f"),
               "Raw std (study)": st.column_config.NumberColumn(format="%.4g"),
               "Centred eff. rank (study)": st.column_config.NumberColumn(format="%.1f")}
        # the columns that fit the page's width (a wider table is cut off on the right); the rest on demand
        st.dataframe(table[BACKBONE_COLUMNS].assign(Created=table["Created"].str[:16]), hide_index=True,
                     width="stretch", column_config=fmt)
        with st.expander("All columns (arch, steps, spread, the seed study's metrics)"):
            st.dataframe(table, hide_index=True, width="stretch", column_config=fmt)
    else:
        st.info("No pretrained backbone yet.", icon=":material/model_training:")
    for i in inits:
        if is_ssl(i) and i.available:
            continue
        if i.available:
            st.caption(f":material/check_circle: **{init_label(i)}** is always available.")
        else:
            st.caption(f":material/block: **{init_label(i)}** is unavailable: {i.reason}")


# ------------------------------------------------------------------------------------------- page

svc = services()
page_header(
    "Pretrain",
    "Teach a backbone what chest X-rays look like from unlabeled images (self-supervised learning). "
    "A classifier built on such a backbone needs far fewer labeled images.",
)
images = svc.store.images()
job = watched("pretrain", ["pretrain"])
snap = svc.runner.snapshot(job) if job is not None else None
with st.expander("New pretraining run", expanded=snap is None or not snap.active, icon=":material/add_circle:"):
    c1, c2 = st.columns([3, 2], gap="large")
    with c1:
        start_form(images, svc.store.findings())
    with c2:
        st.markdown("**Which method?**")
        st.markdown("\n".join(f"- **{method_label(m)}**: {METHOD_HELP[m]}" for m in METHODS if m in METHOD_HELP))
st.subheader("Progress")
if job is None:
    empty_state("No pretraining run yet. Start one above; progress, the loss curve and the collapse monitor appear "
                "here.", icon=":material/model_training:")
else:
    watch(job, draw_job)
with st.expander("Earlier runs", expanded=False):
    job_table(["pretrain"], "pretrain")
st.divider()
st.subheader("Backbones")
st.caption("Backbones pretrained here; the Classifier, Benchmark and Grad-CAM pages can start from any of them. "
           "Spread, mean cosine and effective rank are the collapse monitor's last reading of the method's head "
           "(RankMe-style); raw std and centred effective rank are the same reading in the seed study's terms.")
backbones_table()
with st.expander("Import a backbone", icon=":material/upload:"):
    import_section()
