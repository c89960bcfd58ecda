"""One report of a study folder: appendix-style tables, AUC-vs-shots plots, Grad-CAM grids, collapse histories.

`write_report(out_dir)` reads what the stages wrote (study.json, pretrain/*.json, sweeps/*/trials.csv and
summary.csv, gradcam/*/*/summary.csv and grid PNGs) and writes

    report.md    tables in Markdown; figures linked (relative paths)
    report.html  the same tables, the plots inline (plotly, JavaScript embedded: works offline), grids as <img>

Tables follow the seed study's appendix: AUC mean ± std over trials per finding x init x mode x shots,
then the paired difference to random init per trial (mean d, its standard error and 95% interval, wins;
the trials of one (finding, mode, shots) train every init on the same images and score it on the same
test sample, engine.fewshot.metrics.paired_differences). The text under each table says what was
resampled (metrics.RESAMPLED: episodes and test patients; metrics.FIXED for sweeps written before).
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from engine.atomic import atomic_write_text
from engine.fewshot.trials import appendix_table, read_summary, read_trials
from engine.study.config import current_state

# keys of the checkpoint json's collapse records (engine.ssl.monitor): RankMe-style, then the seed study's
COLLAPSE_KEYS = ("erank", "std", "cos", "centred_erank", "raw_std")


def _md_table(df: pd.DataFrame) -> str:
    """A Markdown table of `df` (index dropped; cells as given)."""
    if df.empty:
        return "(none)\n"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def paired_table(trials: pd.DataFrame, baseline: str = "random") -> pd.DataFrame:
    """Paired differences to `baseline` per (finding, mode, shots, init): d, SE, its 95% interval and wins/n.
    An interval the small-sample floor widened ends in metrics.WIDENED_MARK; the notes saying why, each once,
    are in the frame's `attrs["notes"]`."""
    from engine.fewshot.metrics import WIDENED_MARK, interval_notes, paired_differences

    if trials.empty or baseline not in set(trials["init"]):
        return pd.DataFrame()
    rows = paired_differences(trials, baseline)
    out = pd.DataFrame([{"finding": r["finding"], "mode": r["mode"], "shots": r["shots"], "init": r["init"],
                         "AUC": f"{r['auc']:.3f}", f"AUC {baseline}": f"{r['auc_random']:.3f}",
                         "d": f"{r['diff']:+.3f}", "SE": f"{r['se']:.3f}",
                         "95% interval": (f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
                                          + (WIDENED_MARK if r.get("ci_note") else "")) if r["se"] == r["se"] else "",
                         "wins": f"{r['wins']}/{r['n']}"}
                        for r in rows])
    out.attrs["notes"] = [f"{WIDENED_MARK.strip()} {n}." for n in interval_notes(r.get("ci_note") for r in rows)]
    return out


def uncertainty_line(trials: pd.DataFrame) -> str:
    """What the intervals of a sweep's trials cover, in words (engine.fewshot.metrics.uncertainty_text)."""
    from engine.fewshot.metrics import uncertainty_of, uncertainty_text

    return "" if trials.empty else uncertainty_text(uncertainty_of(trials))


def gradcam_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Grad-CAM summary.csv -> per init: n (images x episodes) and each localization score as "mean [lo, hi]"
    (bootstrap over those)."""
    from engine.explain.localization import METRICS

    if summary.empty:
        return pd.DataFrame()
    rows = [{"init": r["init"], "n": int(r["n"]),
             **{m: f"{r[m + '_mean']:.3f} [{r[m + '_lo']:.3f}, {r[m + '_hi']:.3f}]" for m in METRICS}}
            for r in summary.to_dict("records")]
    return pd.DataFrame(rows)


def pretrain_table(records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """pretrain/<method>.json records -> method, checkpoint, steps, epochs, seconds, last loss, final collapse metrics."""
    rows = []
    for method, r in records.items():
        final = ((r.get("collapse") or {}).get("final")) or {}
        loss = r.get("loss") or {}
        rows.append({"method": method, "checkpoint": r.get("name", "") + (" (reused)" if r.get("reused") else ""),
                     "collapsed?": _collapse_verdict(final, (r.get("collapse") or {}).get("history")),
                     "steps": r.get("steps", ""),
                     "epochs": _fmt(r.get("epochs")), "images": r.get("n_images", ""),
                     "seconds": _fmt(r.get("train_seconds"), 0), "last loss": _fmt(loss.get("last_mean")),
                     **{k: _fmt(final.get(k)) for k in COLLAPSE_KEYS}})
    return pd.DataFrame(rows)


def _collapse_verdict(final: dict[str, Any], history: list[dict[str, Any]] | None = None) -> str:
    """The monitor's verdict on the last reading (engine.ssl.monitor.collapse_status: against the run's own
    early readings in `history` after a warm-up; without a history, the floors std < STD_MIN, erank <
    ERANK_MIN): "yes: <why>", "no", "not judged (warm-up only)", or "" without a reading."""
    from engine.ssl.monitor import collapse_status

    if not final:
        return ""
    step = history[-1].get("step") if history else None
    level, _, problems = collapse_status(final, step, history=history)
    if level == "warmup":
        return "not judged (warm-up only)"
    return "yes: " + "; ".join(problems) if level == "warning" else "no"


PRETRAIN_LEGEND = ("Collapse monitor's last reading on the head embedding: erank = effective rank (RankMe, uncentred), "
                   "std = spread of the L2-normalized embeddings, cos = mean cosine of random pairs (1 = all the same), "
                   "centred_erank and raw_std = the seed study's versions. 'collapsed?' is the monitor's verdict "
                   "(against the run's own early readings after a warm-up).")


def _fmt(v: Any, digits: int = 3) -> str:
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return ""


def collapse_figure(records: dict[str, dict[str, Any]]):
    """Plotly figure: the monitored collapse metrics of every method against the pretraining step."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    keys = COLLAPSE_KEYS[:3]
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=["effective rank (RankMe)", "std of normalized embeddings", "mean cosine of pairs"])
    for i, (method, r) in enumerate(records.items()):
        hist = ((r.get("collapse") or {}).get("history")) or []
        for j, k in enumerate(keys):
            pts = [(h["step"], h[k]) for h in hist if k in h and "step" in h]
            if pts:
                x, y = zip(*pts)
                fig.add_trace(go.Scatter(x=x, y=y, name=method, legendgroup=method, showlegend=j == 0,
                                         line={"color": f"hsl({(i * 67) % 360},60%,45%)"}), row=1, col=j + 1)
    fig.update_layout(height=320, margin={"t": 40, "b": 30, "l": 40, "r": 10})
    return fig


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def report_sections(out: Path) -> list[tuple[str, str, Any]]:
    """A study folder's report as (kind, title, payload) in order, for write_report and the app: kind is
    h2 | h3 (title), text (payload str), table (DataFrame), fig (plotly Figure), img (Path relative to `out`).

    Raises FileNotFoundError / json.JSONDecodeError when study.json is missing or damaged."""
    state = current_state(json.loads((out / "study.json").read_text()))  # mode names: engine.fewshot.modes
    cfg = state["config"]
    parts: list[tuple[str, str, Any]] = [("text", "", _settings_line(cfg, state))]
    order = {m: i for i, m in enumerate([*cfg["methods"], *(m for m, _ in cfg["reuse"])])}
    files = sorted((out / "pretrain").glob("*.json"), key=lambda p: (order.get(p.stem, len(order)), p.stem))
    records = {p.stem: json.loads(p.read_text()) for p in files}
    parts += [("h2", "Pretraining", None), ("table", "", pretrain_table(records)), ("text", "", PRETRAIN_LEGEND)]
    if records:
        parts.append(("fig", "collapse", collapse_figure(records)))
    for sweep in sorted((out / "sweeps").glob("*")) if (out / "sweeps").exists() else []:
        summary = read_summary(sweep / "summary.csv") if (sweep / "summary.csv").exists() else pd.DataFrame()
        trials = read_trials(sweep / "trials.csv") if (sweep / "trials.csv").exists() else pd.DataFrame()
        parts += [("h2", f"Few-shot AUC: {sweep.name}", None),
                  ("text", "", "AUC on the held-out test set, mean ± std over trials (appendix style). "
                               + _test_sizes(trials)),
                  ("table", "", appendix_table(summary, include_skipped=True))]
        parts += [("text", "", line) for line in _skipped_lines(summary)]
        paired = paired_table(trials)
        parts += [
                  ("h3", "Paired difference to random init (same images per trial)", None),
                  ("table", "", paired), *(("text", "", n) for n in paired.attrs.get("notes", [])),
                  ("text", "", uncertainty_line(trials))]
        if not summary.empty:
            from engine.fewshot.plots import auc_vs_shots_figure

            for finding in sorted(set(summary["finding"])):
                parts.append(("fig", f"{sweep.name}-{finding}", auc_vs_shots_figure(summary, finding)))
    parts += _gradcam_sections(out, state)
    return parts


def _gradcam_sections(out: Path, state: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Each Grad-CAM study: its scores (bootstrap), their yardsticks and sanity checks (across episodes), its
    warnings and grids; then why Grad-CAM was skipped where it was (study.json's gradcam_skipped)."""
    from engine.explain.yardstick import YARDSTICK_LEGEND, yardstick_tables

    parts: list[tuple[str, str, Any]] = []
    for cam in sorted((out / "gradcam").glob("*/*")) if (out / "gradcam").exists() else []:
        summary = _read_csv(cam / "summary.csv")
        meta = json.loads((cam / "study.json").read_text()) if (cam / "study.json").exists() else {}
        parts += [("h2", f"Grad-CAM localization: {cam.parent.name} / {cam.name}", None),
                  ("text", "", "energy ratio, pointing game and top-q IoU against the lesion, mean [95% bootstrap "
                               "CI over images x episodes]"),
                  ("table", "", gradcam_table(summary))]
        tables = yardstick_tables(summary)
        for title, table in tables.items():
            parts += [("h3", f"{title}: against chance, content-free maps and randomized models"
                       if not title.startswith("Sanity") else title, None), ("table", "", table)]
        parts.append(("text", "", YARDSTICK_LEGEND if tables else "This Grad-CAM study predates the chance levels, "
                      "baselines and sanity checks: run it again to see them."))
        parts += [("text", "", f"Warning: {w}") for w in meta.get("warnings", [])]
        parts += [("img", p.stem, p.relative_to(out)) for p in sorted(cam.glob("grid_*.png"))]
    skipped = state.get("gradcam_skipped") or {}
    if skipped:
        parts.append(("h3", "Grad-CAM not run", None))
        parts += [("text", "", f"{where}: {why}.") for where, why in skipped.items()]
    return parts


def _test_sizes(trials: pd.DataFrame) -> str:
    """'Test set: nodule 15 images, ...' from the trials' n_test (the median over trials: with resampled test
    sets each trial's sample has about the pool's size), and a warning for small ones."""
    from engine.fewshot.sweep import SMALL_TEST

    if trials.empty or "n_test" not in trials:
        return ""
    n = trials.groupby("finding")["n_test"].median()
    small = [f for f, k in n.items() if k < 2 * SMALL_TEST]
    return ("Test set: " + ", ".join(f"{f} {int(k)} images" for f, k in n.items()) + "."
            + (f" Small test set ({', '.join(small)}): fewer than {2 * SMALL_TEST} images, so every interval is "
               "wide and a difference may not hold on other patients." if small else ""))


def _skipped_lines(summary: pd.DataFrame) -> list[str]:
    """One line per skipped group of a sweep summary, with the sweep's reason (e.g. too few images, offline)."""
    if summary.empty or "status" not in summary:
        return []
    sk = summary[summary["status"] != "ok"]
    msgs = sk.groupby("message", sort=False) if "message" in sk else []
    return [f"Skipped ({', '.join(sorted(set(map(str, g['init']))))}): {m}" for m, g in msgs]


def _settings_line(cfg: dict[str, Any], state: dict[str, Any]) -> str:
    secs = sum(float(s.get("seconds", 0)) for s in state.get("stages", {}).values())
    reused = dict(cfg["reuse"])
    trained = [m for m in cfg["methods"] if m not in reused]
    return ((f"Pretrained {', '.join(trained)} on {data_in_words(cfg['pretrain_data'])} (recipe {cfg['preset']}"
             + (f", {cfg['steps']} steps" if cfg["steps"] else "") + ")" if trained else "Nothing pretrained")
            + (f"; reused {', '.join(f'{m}={n}' for m, n in reused.items())}" if reused else "")
            + f"; evaluated on {', '.join(data_in_words(p) for p in cfg.get('eval_manifests', []))}"
            + f"; {cfg['image_size']} px; shots {', '.join(map(str, cfg['shots']))} x {cfg['trials']} trials; "
            f"modes {', '.join(cfg['modes'])}; baselines {', '.join(cfg['baselines'])}; seed {cfg['seed']}. "
            f"Stages took {secs / 60:.1f} min in all.")


def data_in_words(path: str) -> str:
    """A data source in words for the report's first line: the app's exports are "this workspace's images",
    a manifest "the manifest NAME.csv (in FOLDER)", a folder "the image folder NAME"; never a full run path."""
    p = Path(path)
    if p.name in ("workspace-pretrain.csv", "workspace.csv"):
        return "this workspace's images" + (" labeled for the findings" if p.name == "workspace.csv" else "")
    if p.suffix.lower() == ".csv":
        return f"the manifest {p.name}" + (f" (folder {p.parent.name})" if p.parent.name else "")
    return f"the image folder {p.name or path}"


def write_report(out_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into a study folder; returns both paths.

    Raises FileNotFoundError when `out_dir` holds no study.json (not a study folder).
    """
    out = Path(out_dir)
    if not (out / "study.json").exists():
        raise FileNotFoundError(f"{out} holds no study.json: not a study folder (run `python -m engine study` first)")
    parts = report_sections(out)
    md, body, js_in = ["# Study report\n"], [], False
    for kind, title, payload in parts:
        if kind in ("h2", "h3"):
            md.append(f"\n{'#' * int(kind[1])} {title}\n")
            body.append(f"<{kind}>{html.escape(title)}</{kind}>")
        elif kind == "text":
            md.append(payload + "\n")
            body.append(f"<p>{html.escape(payload)}</p>")
        elif kind == "table":
            md.append(_md_table(payload))
            body.append(payload.to_html(index=False, border=0, classes="t") if not payload.empty else "<p>(none)</p>")
        elif kind == "fig":
            fig_path = out / "figures" / f"{title}.html"
            atomic_write_text(fig_path, payload.to_html(include_plotlyjs=True, full_html=True))
            md.append(f"[figure: {title}](figures/{fig_path.name})\n")
            body.append(payload.to_html(include_plotlyjs=not js_in, full_html=False))  # plotly.js once, inline
            js_in = True
        elif kind == "img":
            md.append(f"![{title}]({payload.as_posix()})\n")
            body.append(f'<p><img src="{html.escape(payload.as_posix())}" alt="{html.escape(title)}" '
                        'style="max-width:100%"></p>')
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table.t{border-collapse:collapse;"
             "font-size:13px}table.t td,table.t th{border:1px solid #ccc;padding:3px 6px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Study report</title><style>{style}</style>"
            f"</head><body><h1>Study report</h1>{''.join(body)}</body></html>")
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, "\n".join(md))
    atomic_write_text(html_path, page)
    return md_path, html_path
