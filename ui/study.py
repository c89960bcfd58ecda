"""The Benchmark page's "whole study" section: launch `study` jobs, follow them, read their reports.

The report is drawn from `engine.study.report.report_sections` (the same sections as report.html), and
the study folder downloads as one ZIP (report.html, report.md, figures, Grad-CAM grids, CSVs).
"""
from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import streamlit as st

from engine.escaping import escape_markdown as md
from engine.fewshot.modes import LABEL
from engine.fewshot.modes import MODES as STUDY_MODES
from engine.jobs import JobSnapshot
from engine.ssl.registry import METHODS
from engine.tasks.study import StudyParams
from ui.jobs import pick_result, start_job, status_block, watch, watched
from ui.services import Services
from ui.widgets import default_image_size, method_label

MODES = {m: LABEL[m] for m in STUDY_MODES}  # engine.fewshot.modes: what each name means


def _usable_findings(svc: Services) -> list[str]:
    return [f for f, c in svc.store.counts().items() if c["positive"] >= 2 and c["negative"] >= 2]


def study_form(svc: Services, shots_default: list[int]) -> None:
    """Methods, findings and budget -> a `study` job over this workspace's images."""
    usable = _usable_findings(svc)
    if not usable:
        st.info("A study needs images labeled with and without a finding (at least 2 of each).", icon=":material/label_off:")
        return
    with st.form("study_form", border=True):
        c1, c2 = st.columns(2)
        methods = c1.multiselect("SSL methods to pretrain", list(METHODS), default=["moco_v2"], format_func=method_label,
                                 key="st_methods")
        findings = c2.multiselect("Findings to evaluate", usable, default=usable[:1], key="st_findings")
        c1, c2, c3, c4 = st.columns(4)
        steps = c1.number_input("Pretraining steps per method", 10, 1_000_000, 300, step=50, key="st_steps",
                                help="300 steps at 64-128 px is a laptop-sized run; a GPU runs tens of epochs.")
        size = c2.select_slider("Image size (pixels)", [64, 96, 128, 160, 224], key="st_size",
                                value=default_image_size(svc.runner.device.type))
        trials = c3.number_input("Trials per shot count", 1, 100, 5, key="st_trials")
        cams = c4.number_input("Grad-CAM images per finding", 0, 64, 8, key="st_cams",
                               help="Scored against the lesion only where images have boxes or masks.")
        c1, c2, c3, c4 = st.columns([3, 3, 2, 2])
        shots = c1.multiselect("Shots (labeled images per class)", [1, 2, 5, 10, 20, 50], default=shots_default,
                               key="st_shots")
        modes = c2.multiselect("Modes", list(MODES), default=["probe"], format_func=MODES.get, key="st_modes")
        batch = c3.selectbox("Pretraining batch", [8, 16, 32, 64, 128, 256], key="st_batch",
                             index=5 if svc.runner.device.type == "cuda" else 2,
                             help="Capped at the number of images. 32 suits a CPU; the recipes' own is 256.")
        name = c4.text_input("Checkpoint prefix", value=f"study-{time.strftime('%m%d-%H%M')}", key="st_name",
                             help="Each method's backbone is saved as PREFIX-METHOD and appears in every init list.")
        reusable = _reusable_backbones()
        reuse = st.multiselect(
            "Existing backbones to evaluate (instead of pretraining their method)", list(reusable),
            format_func=lambda n: f"{n} ({method_label(reusable[n])})", key="st_reuse",
            help="E.g. the shipped backbone: it is compared with the others as it is; its method is then not "
                 "pretrained again in this study. One backbone per method.")
        pool = st.text_input("Pretraining images (optional): a manifest CSV or an image folder on this computer; "
                             "empty = this workspace's images", key="st_pool")
        go = st.form_submit_button("Run the study", type="primary", icon=":material/science:")
    if go:
        _submit(svc, methods, findings, shots, modes, name, pool, int(steps), int(size), int(trials), int(cams),
                int(batch), [(reusable[n], n) for n in reuse])


def _reusable_backbones() -> dict[str, str]:
    """{checkpoint name: its SSL method} of the available checkpoints a study can evaluate (--reuse)."""
    from engine.models import list_inits

    return {i.name: i.method for i in list_inits() if i.available and i.method in METHODS}


def _submit(svc: Services, methods, findings, shots, modes, name, pool, steps, size, trials, cams, batch,
            reuse: list[tuple[str, str]] = ()) -> None:
    missing = [n for n, v in (("a method or an existing backbone", list(methods) + list(reuse)),
                              ("a finding", findings), ("a shot count", shots), ("a mode", modes)) if not v]
    twice = sorted({m for m, _ in reuse if sum(m == k for k, _ in reuse) > 1})
    if missing or twice:
        st.error(("Choose at least " + ", ".join(missing) + ". " if missing else "")
                 + (f"Choose one existing backbone per method ({', '.join(twice)} twice)." if twice else ""),
                 icon=":material/error:")
        return
    labels = [method_label(m) for m in methods if m not in dict(reuse)] + [n for _, n in reuse]
    start_job("study", "study", lambda: StudyParams(
        methods=tuple(methods), findings=tuple(findings), name=name.strip(), steps=steps, batch_size=batch,
        image_size=size, shots=tuple(sorted(int(k) for k in shots)), trials=trials, modes=tuple(modes),
        gradcam_images=cams, pretrain_path=pool.strip() or None, reuse=tuple(f"{m}={n}" for m, n in reuse),
        title=f"{', '.join(labels)} · {', '.join(findings)}"))


def draw_study_job(snap: JobSnapshot) -> None:
    p = snap.params
    st.markdown(f"**{md(p.get('title') or 'study')}** · {p.get('steps')} steps · shots {p.get('shots')} · "
                f"{p.get('trials')} trials")
    status_block(snap, "study")


def show_study(res: dict[str, Any]) -> None:
    """The report of one study result: its sections in order, and the folder as a ZIP."""
    from engine.study.report import report_sections

    out = Path(res["path"])
    try:
        sections = report_sections(out)
    except (OSError, ValueError) as e:
        st.error(md(f"The study folder {out} cannot be read: {e}"), icon=":material/error:")
        return
    for i, (kind, title, payload) in enumerate(sections):
        if kind == "h2":
            st.markdown(f"#### {title}")
        elif kind == "h3":
            st.markdown(f"**{title}**")
        elif kind == "text":
            st.caption(payload)
        elif kind == "table" and payload.empty:
            st.caption("(none)")
        elif kind == "table":
            st.dataframe(payload, hide_index=True, width="stretch")
        elif kind == "fig":
            st.plotly_chart(payload, width="stretch", key=f"study:{res['id']}:{i}")
        elif kind == "img" and (out / payload).exists():
            st.image(str(out / payload), caption=title, width="stretch")
    st.download_button("Download the study (ZIP: report.html, tables, figures)", _zip(out),
                       file_name=f"study-{res['id']}.zip", mime="application/zip", icon=":material/download:",
                       key=f"dl_study:{res['id']}")


def _zip(out: Path) -> bytes:
    """The study folder without pretraining run states and caches (report, figures, CSVs, grids)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(out.rglob("*")):
            rel = f.relative_to(out)
            if f.is_file() and rel.parts[0] not in ("runs",) and not any(p.startswith(".") for p in rel.parts):
                z.write(f, rel.as_posix())
    return buf.getvalue()


def study_section(svc: Services, shots_default: list[int]) -> None:
    st.divider()
    st.subheader("The whole study")
    st.caption("The seed study in one run: pretrain each SSL method on your images, then benchmark every backbone "
               "against random init (and ImageNet where available) over shots x trials, localize with Grad-CAM, and "
               "collect it all in one report. Also from the command line: `python -m engine study`.")
    results = svc.store.results(kind="study")
    with st.expander("Start a study", expanded=not results, icon=":material/add_circle:"):
        study_form(svc, shots_default)
    job = watched("study", ["study"])
    snap = svc.runner.snapshot(job) if job is not None else None
    if snap is not None and snap.state != "done":
        watch(job, draw_study_job)
    if results:
        show_study(pick_result(results, "Study", "st", job, snap))
