"""Benchmark: AUC vs number of labeled images, across inits and modes, over many random trials."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine.fewshot.plots import auc_vs_shots_figure
from engine.escaping import escape_markdown as md
from engine.fewshot.metrics import (FIXED, WIDENED_MARK, interval_notes, paired_differences, uncertainty_of,
                                    uncertainty_text)
from engine.fewshot.trials import appendix_table, floor_summary, paired_appendix_table, read_summary, read_trials
from engine.jobs import JobSnapshot
from engine.fewshot.modes import LABEL, MODES
from engine.models import list_inits
from engine.tasks import SimilarityParams, SweepParams, partial_sweep_trials
from ui.jobs import job_table, pick_result, start_job, status_block, watch, watched
from ui.plots import benchmark_figure, tidy_auc_figure
from ui.services import Services, services
from ui.study import study_section
from ui.widgets import default_image_size, empty_state, init_label, page_header

SHOTS = [1, 2, 5, 10, 20, 50, 100]
MODE_LABEL = {m: LABEL[m] for m in MODES}  # probe, finetune (the Classifier's), full finetune (engine.fewshot.modes)


def labeled(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with its registry init names replaced by the inits' labels (ui.widgets.init_label), as on every page."""
    if "init" not in df.columns:
        return df
    labels = {i.name: init_label(i) for i in list_inits()}
    return df.assign(init=[labels.get(n, n) for n in df["init"]])


def default_shots(counts: dict, findings: list[str]) -> list[int]:
    """Shot counts the smallest of `findings`' ~70% training pools can give (the sweep skips larger ones);
    findings not selected do not shrink it."""
    fit = max(1, int(0.7 * min(min(counts[f]["positive"], counts[f]["negative"]) for f in findings)))
    return [k for k in SweepParams.shots if k <= fit] or [1]  # the sweep's default shots


def _propose_shots(counts: dict) -> None:
    """Findings changed: propose the shot counts for the new selection (the user can still edit them)."""
    sel = [f for f in st.session_state.get("bm_findings") or [] if f in counts]
    if sel:
        st.session_state["bm_shots"] = default_shots(counts, sel)


def sweep_form(svc: Services) -> None:
    counts = svc.store.counts()
    usable = [f for f, c in counts.items() if c["positive"] >= 2 and c["negative"] >= 2]
    if not usable:
        empty_state("A benchmark needs labeled images: at least a few with and without a finding. Label images on "
                    "the Data page (the demo workspace comes labeled).", link="data", icon=":material/label_off:")
        return
    inits = [i for i in list_inits() if i.available]
    names = {i.name: init_label(i) for i in inits}  # one label per init, as in the results and on every page
    # Findings outside the form: choosing them re-runs the page, so the proposed shot counts follow the selection.
    findings = st.multiselect("Findings", usable, default=usable[:1], key="bm_findings",
                              format_func=lambda f: f"{f} ({counts[f]['positive']}+ / {counts[f]['negative']}−)",
                              help="In brackets: images labeled with (+) and without (−) the finding.",
                              on_change=_propose_shots, args=(counts,))
    if "bm_shots" not in st.session_state:
        st.session_state["bm_shots"] = default_shots(counts, findings or usable[:1])
    with st.form("sweep_form", border=True):
        sel_inits = st.multiselect("Inits", list(names), default=list(names), format_func=names.get, key="bm_inits")
        # Full-width rows: every chosen shot count and mode stays visible as a chip (none hidden by a narrow column).
        shots = st.multiselect("Shots (labeled images per class)", SHOTS, key="bm_shots",
                               help="Proposed from the selected findings: the shot counts the smallest one's ~70% "
                                    "training pool can give (the sweep skips larger ones).")
        c1, c3, c4 = st.columns([4, 2, 3])
        modes = c1.multiselect("Modes", list(MODE_LABEL), default=["probe"], format_func=MODE_LABEL.get, key="bm_modes")
        trials = c3.number_input("Trials per shot count", 1, 100, 10, key="bm_trials",
                                 help="Each trial draws a new random training set and a new patient-level resample of "
                                      "the test set; the spread shows how much luck matters.")
        size = c4.select_slider("Image size (pixels)", [0, 64, 96, 128, 160, 224], value=0, key="bm_size",
                                format_func=lambda v: "each init's own" if not v else f"{v} for all",
                                help="Each init's own: every backbone runs at the size it was trained at (the "
                                     f"registry's; random at {default_image_size(svc.runner.device.type)} px here). "
                                     "A size for all is honoured, and the results warn about each backbone trained "
                                     "at another size (it is misjudged there).")
        go = st.form_submit_button("Run benchmark", type="primary", icon=":material/play_arrow:")
    unavailable = [i for i in list_inits() if not i.available]
    for i in unavailable:
        st.caption(f":material/block: {init_label(i)} is unavailable: {i.reason}")
    if go:
        missing = [n for n, v in (("a finding", findings), ("an init", sel_inits), ("a mode", modes), ("a shot count", shots))
                   if not v]
        if missing:
            st.error("Choose at least " + ", ".join(missing) + ".", icon=":material/error:")
            return
        params = SweepParams(findings=tuple(findings), inits=tuple(sel_inits), modes=tuple(modes),
                             shots=tuple(sorted(int(k) for k in shots)), trials=int(trials),
                             image_size=int(size) or None,  # None: each init at its own size
                             title=", ".join(findings))
        start_job("benchmark", "sweep", lambda: params)  # a refused or failed submit is shown, not raised


def draw_running(snap: JobSnapshot) -> None:
    p = snap.params
    st.markdown(f"**{', '.join(map(md, p.get('findings', [])))}** · {len(p.get('inits', []))} inits · "
                f"{', '.join(p.get('modes', []))} · shots {p.get('shots')} · {p.get('trials')} trials")
    status_block(snap, "benchmark", show_warnings=snap.state != "done")  # a finished run's warnings show with its results
    trials = partial_sweep_trials(services().runner, snap.id) if snap.active else None
    if trials is not None:
        st.caption(f"Partial results: {len(trials)} trials so far.")
        st.plotly_chart(tidy_auc_figure(auc_vs_shots_figure(labeled(trials))), width="stretch",
                        key=f"partial:{snap.id}")


def show_sweep(res: dict[str, Any]) -> None:
    s = res["summary"]
    summary_csv, trials_csv = Path(s["summary_csv"]), Path(s["trials_csv"])
    if not summary_csv.exists():
        st.error(f"The results file {summary_csv} is missing.", icon=":material/error:")
        return
    summary = read_summary(summary_csv)  # modes under their current names (engine.fewshot.modes)
    ok = summary[summary["status"] == "ok"]
    for w in s.get("warnings") or []:
        st.warning(w, icon=":material/warning:")
    if s.get("input_sizes"):  # each init's input size (engine.fewshot.sizes): its own, or the one asked for
        st.caption("Input size: " + ", ".join(
            f"{n} {v['image_size']} px" + ("" if v.get("trained") in (None, v["image_size"]) else
                                           f" (trained at {v['trained']})") for n, v in s["input_sizes"].items()))
    if ok.empty:
        st.info("This benchmark produced no results (see the warnings above).")
        return
    trials = read_trials(trials_csv) if trials_csv.exists() else pd.DataFrame()
    show_statistics(floor_summary(ok, trials), trials, str(res["id"]))  # results written before the floor: floored here
    c1, c2 = st.columns(2)
    c1.download_button("Download summary (CSV)", summary_csv.read_bytes(), file_name=f"benchmark-{res['id']}-summary.csv",
                       mime="text/csv", icon=":material/download:", key=f"dl_sum:{res['id']}")
    if trials_csv.exists():
        c2.download_button("Download every trial (CSV)", trials_csv.read_bytes(),
                           file_name=f"benchmark-{res['id']}-trials.csv", mime="text/csv", icon=":material/download:",
                           key=f"dl_trials:{res['id']}")


FACETS = 3  # findings side by side in one figure; more findings continue in the next figure


def show_statistics(ok: pd.DataFrame, trials: pd.DataFrame, rid: str) -> None:
    """Per init x shots: mean AUC with its 95% interval, and the paired difference d to a chosen reference
    init (SE, interval, wins): two panels per finding (facets) and two appendix-style tables."""
    labels = {i.name: init_label(i) for i in list_inits()}
    inits = list(dict.fromkeys(ok["init"]))
    ref = inits[0]
    if len(inits) > 1:
        ref = st.selectbox("Reference init for the paired difference d", inits,
                           index=inits.index("random") if "random" in inits else 0, key=f"bm_ref:{rid}",
                           format_func=lambda n: labels.get(n, n),
                           help="d = an init's AUC minus the reference's AUC in the same trial (same training and "
                                "test images); > 0 means better than the reference.")
    paired = pd.DataFrame(paired_differences(trials, ref)) if len(inits) > 1 and len(trials) else pd.DataFrame()
    findings = sorted(ok["finding"].unique())
    for i in range(0, len(findings), FACETS):
        fig = benchmark_figure(ok, paired, findings[i:i + FACETS], ref, labels)
        st.plotly_chart(fig, width="stretch", key=f"fig:{rid}:{i}")
    method = uncertainty_of(trials) if len(trials) else str(ok["uncertainty"].iloc[0]) if "uncertainty" in ok else FIXED
    st.caption("Top: mean test AUC over the trials with its 95% interval (dotted: chance, 0.5). Bottom: the paired "
               f"difference d to {labels.get(ref, ref)}, with its 95% interval; the black line is 0 (no difference). "
               "Solid: probe; dashed: finetune (the last stage, as the Classifier trains it); long dashes: full "
               "finetune (the whole backbone, the seed study's). Hover a point for the full init name, SE and wins. "
               + uncertainty_text(method))
    st.markdown("**Test AUC: mean [95% interval] over trials**")
    st.table(labeled(appendix_table(ok, interval=True)))
    widened_notes(ok.get("auc_ci_note", []))
    if len(paired):
        st.markdown(f"**Paired difference d vs {labels.get(ref, ref)}: d [95% interval] (wins/trials)**")
        st.table(labeled(paired_appendix_table(paired)))
        widened_notes(paired.get("ci_note", []))
    elif len(inits) > 1:
        st.info("The trials file of this benchmark is missing, so the paired difference cannot be computed.")


def widened_notes(notes) -> None:
    """Under a table: each distinct small-sample floor note once, for the cells marked WIDENED_MARK."""
    for note in interval_notes(notes):
        st.caption(f"{WIDENED_MARK.strip()} {note}.")


# ------------------------------------------------------------------------------- dataset similarity

SIM_LAYERS = ["layer1", "layer2", "layer3", "layer4"]


def similarity_form(svc: Services) -> None:
    """Reference set (the workspace's labeled images or a path) + candidate pools -> a `similarity` job."""
    from engine.models import default_init

    inits = [i for i in list_inits() if i.available]
    names = [i.name for i in inits]
    findings = svc.store.findings()
    refs = {"all": f"All images of this workspace ({len(svc.store.images())})"}
    refs.update({f"finding:{f}": f"Images labeled for {f}" for f in findings})
    refs["path"] = "A manifest CSV or a folder of images on this computer"
    with st.form("similarity_form", border=True):
        c1, c2 = st.columns(2)
        first = default_init()
        init = c1.selectbox("Backbone", names, index=names.index(first) if first in names else 0, key="sim_init",
                            help="The network whose activations are compared; a chest X-ray backbone sees X-ray "
                                 "differences, a random one mostly image statistics.")
        ref = c2.selectbox("Your images (the reference)", list(refs), format_func=refs.get, key="sim_ref")
        ref_path = st.text_input("Reference path (only for 'a manifest CSV or a folder')", key="sim_ref_path")
        cands = st.text_area("Candidate pools, one per line (a manifest CSV or an image folder; optionally NAME=PATH)",
                             key="sim_cands", height=100,
                             placeholder="cxr_pool=/data/cxr_pool\nnih=/data/nih_pneumonia/manifest.csv")
        c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
        layers = c1.multiselect("Layers", SIM_LAYERS, default=SIM_LAYERS, key="sim_layers",
                                help="ResNet stages, early (edges, texture) to late (anatomy, global content).")
        n_images = c2.number_input("Images per set", 3, 2000, 200, key="sim_n",
                                   help="Every set is sampled (seeded) to this many images, or to the smallest set.")
        size = c3.select_slider("Image size (pixels)", [0, 64, 96, 128, 160, 224], value=0, key="sim_size",
                                format_func=lambda v: "the backbone's own" if not v else str(v),
                                help="The backbone's own: the size it was trained at (the registry's input contract).")
        grid = c4.number_input("Pooling grid", 1, 8, 4, key="sim_grid",
                               help="Each layer's map is average-pooled to grid x grid positions; 1 = global average. "
                                    "SVCCA needs more units (channels x positions) than kept directions.")
        go = st.form_submit_button("Compare", icon=":material/compare_arrows:")
    if not go:
        return
    lines = [c.strip() for c in cands.splitlines() if c.strip()]
    problems = []
    if not lines:
        problems.append("enter at least one candidate pool (a manifest CSV or a folder of images)")
    if ref == "path" and not ref_path.strip():
        problems.append("enter the reference path, or choose the workspace's images as the reference")
    if not layers:
        problems.append("choose at least one layer")
    if problems:
        st.error("To compare: " + "; ".join(problems) + ".", icon=":material/error:")
        return
    start_job("similarity", "similarity", lambda: SimilarityParams(
        init=init, candidates=tuple(lines), layers=tuple(l for l in SIM_LAYERS if l in layers),
        n_images=int(n_images), image_size=int(size) or None, grid=int(grid),
        reference_path=ref_path.strip() if ref == "path" else None,
        reference_finding=ref.split(":", 1)[1] if ref.startswith("finding:") else None,
        title=f"{'workspace' if ref != 'path' else ref_path.strip()} vs {len(lines)} pool(s) · {init}"))


def show_similarity(res: dict[str, Any]) -> None:
    """A finished comparison: the sentence naming the closest pool, the layer plot, the table, downloads."""
    from engine.analysis.plots import similarity_figure

    s = res["summary"]
    table_csv = Path(s["table_csv"])
    if not table_csv.exists():
        st.error(f"The results file {table_csv} is missing.", icon=":material/error:")
        return
    table = pd.read_csv(table_csv)
    ranking = pd.read_csv(s["ranking_csv"]) if Path(s["ranking_csv"]).exists() else None
    st.success(s.get("sentence", ""), icon=":material/join_inner:")
    st.plotly_chart(similarity_figure(table, s.get("settings")), width="stretch", key=f"sim:{res['id']}")
    st.caption("SVCCA (Raghu et al. 2017) between your images and each pool, as the backbone sees them at each layer: "
               "1 = the two sets occupy the same directions of the layer's feature space, lower = different image "
               "statistics. Dotted: the same computation with the pairing shuffled (chance); read each line against "
               "its dotted line. Figures are comparable only at the same number of images, size and grid.")
    st.markdown("**SVCCA by layer**")
    wide = table.pivot_table(index="candidate", columns="layer", values="svcca", sort=False).reset_index()
    if ranking is not None:
        wide = ranking[["rank", "candidate", "mean_svcca", "mean_chance"]].merge(wide, on="candidate")
    wide = wide.rename(columns={"rank": "Rank", "candidate": "Pool", "mean_svcca": "Mean SVCCA",
                                "mean_chance": "Chance (mean)"})
    st.dataframe(wide, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in wide.columns
                                if c not in ("Rank", "Pool")})
    st.download_button("Download the table (CSV)", table_csv.read_bytes(), file_name=f"similarity-{res['id']}.csv",
                       mime="text/csv", icon=":material/download:", key=f"dl_sim:{res['id']}")


def draw_similarity_job(snap: JobSnapshot) -> None:
    p = snap.params
    st.markdown(f"**{md(p.get('title', 'similarity'))}** · {', '.join(p.get('layers') or SIM_LAYERS)} · "
                f"{p.get('n_images')} images per set")
    status_block(snap, "similarity")


def similarity_section(svc: Services) -> None:
    st.divider()
    st.subheader("Dataset similarity")
    st.caption("Which pretraining pool looks most like your images? SVCCA compares the activations of two image sets "
               "at each layer of a backbone (MoCo-Transfer, Chen et al. 2023). A pool closer to your images is the "
               "better candidate for pretraining a backbone for them.")
    results = svc.store.results(kind="similarity")
    with st.expander("Compare image sets", expanded=not results, icon=":material/add_circle:"):
        similarity_form(svc)
    job = watched("similarity", ["similarity"])
    snap = svc.runner.snapshot(job) if job is not None else None
    if snap is not None and snap.state != "done":
        watch(job, draw_similarity_job)
    if results:
        show_similarity(pick_result(results, "Comparison", "sim", job, snap))


# ------------------------------------------------------------------------------------------- page

svc = services()
page_header(
    "Benchmark",
    "How good is each starting backbone with 1, 5, 10, 20... labeled images per class? Each point is averaged over "
    "many random draws of the training images, each tested on its own resample of the held-out patients.",
)
st.subheader("New benchmark")
sweep_form(svc)
job = watched("benchmark", ["sweep"])
snap = svc.runner.snapshot(job) if job is not None else None
if snap is not None:
    st.subheader("Progress")
    watch(job, draw_running)
    with st.expander("Earlier runs"):
        job_table(["sweep"], "benchmark")

results = svc.store.results(kind="sweep")
st.divider()
st.subheader("Results")
if not results:
    empty_state("No finished benchmark yet. Results appear here when a run ends; earlier ones stay available.",
                icon=":material/monitoring:")
else:
    show_sweep(pick_result(results, "Benchmark", "bm", job, snap))

similarity_section(svc)
_counts = svc.store.counts()
_usable = [f for f, c in _counts.items() if c["positive"] >= 2 and c["negative"] >= 2]
study_section(svc, default_shots(_counts, _usable[:1]) if _usable else [1])
