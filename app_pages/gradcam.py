"""Grad-CAM: where does each backbone look? One image, or a finding's held-out positives, across all inits."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine.escaping import escape_markdown as md
from engine.explain.gradcam import METHODS
from engine.explain.yardstick import YARDSTICK_LEGEND, yardstick_tables
from engine.explain.single_image import heatmap_caveat
from engine.jobs import JobSnapshot
from engine.models import list_inits
from engine.tasks import GradcamImageParams, GradcamStudyParams
from ui.jobs import job_table, start_job, status_block, watch, watched
from ui.services import Services, services
from ui.widgets import empty_state, init_label, page_header

METHOD_LABEL = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM (slow)",
                "ablationcam": "Ablation-CAM (slow)"}
LAYERS = {"layer4": "last stage (layer4, coarse)", "layer3": "layer3 (finer)", "layer2": "layer2 (finest, noisier)"}
SCORE_HELP = ("**Energy in region**: share of the heatmap inside the lesion's box or mask. **Energy ratio**: that share "
              "divided by the region's share of the image (1 = no better than a flat map). **Pointing hit**: the "
              "hottest pixel lies inside the region. **Top-15% IoU**: overlap of the hottest 15% of pixels with the region.")


FLAT_MAP_NOTE = ("flat map: Grad-CAM found no positive evidence for the finding in this image (the gradients "
                 "point away from it or vanish), so the overlay shows no hot spot; scored as a flat map")


def is_flat(r: dict[str, Any]) -> bool:
    v = r.get("empty_map")
    return bool(v) and str(v).lower() not in ("false", "0", "nan")


def fmt_scores(r: dict[str, Any]) -> str:
    parts = [f"p = {r['probability']:.2f} (calibrated)" if "probability" in r
             else f"p = {r.get('prob', float('nan')):.2f}"]
    if r.get("energy_ratio") == r.get("energy_ratio") and "energy_ratio" in r:
        parts += [f"in region {100 * r['energy_in_region']:.0f}%", f"ratio {r['energy_ratio']:.1f}",
                  "hit" if r.get("pointing_hit") == 1 else "miss", f"IoU {r['topq_iou']:.2f}"]
    return " · ".join(parts)


def controls(svc: Services) -> dict[str, Any] | None:
    counts = svc.store.counts()
    usable = [f for f, c in counts.items() if c["positive"] >= 2 and c["negative"] >= 2]
    if not usable:
        empty_state("Grad-CAM needs a finding with labeled images (a few with and a few without it). Label images on "
                    "the Data page.", link="data", icon=":material/label_off:")
        return None
    inits = [i for i in list_inits() if i.available]
    names = {i.name: init_label(i) for i in inits}
    c1, c2, c3 = st.columns(3)
    finding = c1.selectbox("Finding", usable, key="gc_finding")
    method = c2.selectbox("Method", list(METHODS), format_func=METHOD_LABEL.get, key="gc_method")
    layer = c3.selectbox("Layer", list(LAYERS), format_func=LAYERS.get, key="gc_layer")
    sel = st.multiselect("Inits", list(names), default=list(names), format_func=names.get, key="gc_inits")
    for i in list_inits():
        if not i.available:
            st.caption(f":material/block: {init_label(i)} is unavailable: {i.reason}")
    if not sel:
        st.warning("Choose at least one init.")
        return None
    return {"finding": finding, "method": method, "layer": layer, "inits": sel}


def one_image_form(svc: Services, common: dict[str, Any]) -> None:
    f = common["finding"]
    imgs = svc.store.images(f)
    pos = imgs[imgs[f] == 1]
    if pos.empty:
        st.info(f"No image is labeled with {md(f)}.")
        return
    has_region = {int(i): any(r["finding"] == f for r in svc.store.regions(int(i))) for i in pos["id"][:500]}
    order = sorted(has_region, key=lambda i: not has_region[i])
    names = dict(zip(pos["id"].astype(int), pos["name"]))
    c1, c2 = st.columns([3, 1])
    image_id = c1.selectbox("Image (labeled with the finding)", order, key=f"gc_image:{f}",
                            format_func=lambda i: names[i] + ("  · region known" if has_region[i] else ""))
    c2.image(svc.store.thumbnail(image_id, 160), width=120)
    st.caption("For each init a probe is fitted on the finding's other labeled images (this image left out), then "
               "explained on this image.")
    if st.button("Explain this image with every init", type="primary", icon=":material/visibility:", key="gc_go_one"):
        params = GradcamImageParams(**common, image_id=int(image_id), image_size=None,  # each init's own size
                                    title=f"{names[image_id]} ({f})")
        start_job("gradcam", "gradcam_image", lambda: params)


def study_form(svc: Services, common: dict[str, Any]) -> None:
    c = svc.store.counts()[common["finding"]]
    fit = max(1, int(0.7 * min(c["positive"], c["negative"])))  # about what the 70% training pool allows
    c1, c2 = st.columns(2)
    shots = c1.number_input("Labeled images per class for each classifier", 1, 100, min(10, fit),
                            key=f"gc_shots:{common['finding']}",
                            help="Drawn from the finding's training pool; the explained images are held out.")
    n = c2.number_input("Held-out positives to explain", 1, 32, 4, key="gc_n")
    if st.button("Run the Grad-CAM study", type="primary", icon=":material/grid_view:", key="gc_go_study"):
        params = GradcamStudyParams(**common, shots=int(shots), n_images=int(n), image_size=None,  # the engine's:
                                    title=common["finding"])  # one grid at the largest of the inits' own sizes
        start_job("gradcam", "gradcam", lambda: params)


def draw_image_result(res: dict[str, Any]) -> None:
    rows = res.get("rows") or []
    names = {i.name: init_label(i) for i in list_inits()}
    st.markdown(f"**{md(res['finding'])}** · {METHOD_LABEL.get(res['method'], res['method'])} · {res['layer']} · "
                f"probes fitted on {res.get('n_train', '?')} images · "
                + ("lesion outlined in green" if res.get("region") != "none" else "no box or mask known for this image"))
    cols = st.columns(min(len(rows) + 1, 6))
    if Path(res.get("original", "")).exists():
        cols[0].image(res["original"], width="stretch")
        cols[0].markdown("**X-ray**" + ("  \nlesion outlined in green" if res.get("region") != "none" else ""))
    for k, r in enumerate(rows):
        c = cols[(k + 1) % len(cols)]
        if Path(r["overlay"]).exists():
            c.image(r["overlay"], width="stretch")
        c.markdown(f"**{names.get(r['init'], r['init'])}**  \n{fmt_scores(r)}")
        if is_flat(r):
            c.caption(f":material/info: {FLAT_MAP_NOTE}.")
    st.caption(f":material/info: {heatmap_caveat(int(res.get('image_size') or 224), str(res.get('layer') or 'layer4'))}")
    if res.get("region") != "none":
        st.caption(SCORE_HELP)


def draw_job(snap: JobSnapshot) -> None:
    status_block(snap, "gradcam", show_log=False)
    if snap.active:
        st.caption(snap.message or "Starting...")
    elif snap.state == "done" and snap.kind == "gradcam_image" and snap.result:
        draw_image_result(snap.result)


def show_study(res: dict[str, Any]) -> None:
    s = res["summary"]
    loc_csv, sum_csv = Path(s["localization_csv"]), Path(s["summary_csv"])
    loc = pd.read_csv(loc_csv) if loc_csv.exists() else pd.DataFrame()
    names = {i.name: init_label(i) for i in list_inits()}
    st.markdown(f"**{md(s['finding'])}** · {METHOD_LABEL.get(s.get('method'), s.get('method'))} · "
                f"classifiers from {s.get('shots')} images per class · {s.get('images')} held-out positives")
    if sum_csv.exists():
        summ = pd.read_csv(sum_csv)
        if len(summ):
            cols = {"init": "Init", "n": "Images", "energy_in_region_mean": "Energy in region",
                    "energy_ratio_mean": "Energy ratio", "pointing_hit_mean": "Pointing hits",
                    "topq_iou_mean": "Top-15% IoU"}
            table = summ[[c for c in cols if c in summ.columns]].rename(columns=cols)
            table["Init"] = [names.get(i, i) for i in table["Init"]]
            st.markdown("**Localization, averaged over the images of every training episode** (Images = images x "
                        "episodes)")
            st.dataframe(table, hide_index=True, width="stretch", column_config={
                "Energy in region": st.column_config.NumberColumn(format="percent"),
                "Energy ratio": st.column_config.NumberColumn(format="%.2f"),
                "Pointing hits": st.column_config.NumberColumn(format="percent"),
                "Top-15% IoU": st.column_config.NumberColumn(format="%.3f")})
            st.caption(SCORE_HELP)
            tables = yardstick_tables(summ)
            for title, yard in tables.items():
                st.markdown(f"**{title}**" + ("" if title.startswith("Sanity") else
                                              ": against chance, content-free maps and randomized models"))
                st.dataframe(yard, hide_index=True, width="stretch")
            if tables:
                st.caption(YARDSTICK_LEGEND)
            else:
                st.caption("This study predates the chance levels, baselines and sanity checks: run it again to "
                           "see them.")
    if s.get("grids"):
        st.caption(f":material/info: {heatmap_caveat(int(s.get('image_size') or 224), str(s.get('layer') or 'layer4'))}")
    for g in s.get("grids", []):
        gp = Path(g)
        if not gp.exists():
            continue
        st.image(str(gp), width="stretch")
        if len(loc):
            name = gp.stem.removeprefix("grid_")
            sub = loc[(loc["image"].astype(str) == name) & (loc["episode"] == 0 if "episode" in loc else True)]
            if len(sub):
                recs = sub.to_dict("records")
                st.caption("  |  ".join(f"**{names.get(r['init'], r['init'])}**: {fmt_scores(r)}" for r in recs))
                flat = [names.get(r["init"], r["init"]) for r in recs if is_flat(r)]
                if flat:
                    st.caption(f":material/info: {', '.join(flat)}: {FLAT_MAP_NOTE}.")


# ------------------------------------------------------------------------------------------- page

svc = services()
page_header(
    "Grad-CAM",
    "Where does each backbone look? The same finding is explained with every init side by side. Where the lesion's "
    "box or mask is known it is outlined in green and the heatmap's overlap with it is scored.",
)
common = controls(svc)
if common is not None:
    kind = st.segmented_control("Explain", ["One image", "A finding's held-out positives"], default="One image",
                                key="gc_kind", required=True)
    if kind == "One image":
        one_image_form(svc, common)
    else:
        study_form(svc, common)

job = watched("gradcam", ["gradcam_image", "gradcam"])
if job is not None:
    st.divider()
    watch(job, draw_job)
    with st.expander("Earlier runs"):
        job_table(["gradcam_image", "gradcam"], "gradcam")

studies = svc.store.results(kind="gradcam")
if studies:
    st.divider()
    st.subheader("Studies")
    by_id = {r["id"]: r for r in studies}
    pick = st.selectbox("Study", list(by_id), key="gc_study", format_func=lambda i: by_id[i]["name"])
    show_study(by_id[pick])
