"""Plotly figures the pages share (pure builders; the pages call st.plotly_chart)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.fewshot.modes import DASH, SHORT

COLLAPSE = (  # (metric key in the job history, title, healthy-direction note)
    ("collapse_std", "Spread (std)", "higher is healthier; near 0 = collapsed"),
    ("collapse_cos", "Mean cosine", "lower is healthier; near 1 = collapsed"),
    ("collapse_erank", "Effective rank", "higher is healthier; near 1 = collapsed"),
)


LIVE_FIGURES_KEPT = 32  # figures remembered by live_figure (a few per watched job)
_live: OrderedDict[tuple, go.Figure] = OrderedDict()
_live_lock = threading.Lock()


def live_figure(build: Callable[..., go.Figure], history: list[dict[str, Any]], *args: Any,
                uses: tuple[str, ...]) -> go.Figure:
    """`build(rows, *args)` for the records of `history` that carry a key starting with one of `uses`; built
    once per distinct content of those records, then reused.

    A watched job's fragment redraws its charts every second (ui.jobs.watch), in every session that watches
    it, and one of these plotly figures takes ~60 ms of CPU to build (bench/app_live_page.py); on a 2-core
    machine that slowed every page while a job ran. A chart changes only when its own records do: the loss
    every step, the collapse monitor every few steps. The key is the builder, `args` and the repr of exactly
    the records the builder is given, so any change of content builds anew (the builders read records by
    their keys and `step`, so the figure equals `build(history, *args)`). The figure is shared between
    sessions: callers pass it to st.plotly_chart unchanged and never modify it. Keeps the LIVE_FIGURES_KEPT
    most recently used figures; thread-safe (each session runs in its own thread)."""
    rows = [h for h in history if any(k.startswith(uses) for k in h)]
    key = (build.__module__, build.__qualname__, repr(rows), args)
    with _live_lock:
        fig = _live.get(key)
        if fig is not None:
            _live.move_to_end(key)
            return fig
    fig = build(rows, *args)
    with _live_lock:
        _live[key] = fig
        while len(_live) > LIVE_FIGURES_KEPT:
            _live.popitem(last=False)
    return fig


def history_frame(history: list[dict[str, Any]], key: str) -> pd.DataFrame:
    """Rows of a job's metric history that carry `key` (step, value), sorted by step."""
    rows = [(h.get("step", i), h[key]) for i, h in enumerate(history) if key in h]
    return pd.DataFrame(rows, columns=["step", key]).sort_values("step") if rows else pd.DataFrame(columns=["step", key])


def loss_figure(history: list[dict[str, Any]], title: str = "Training loss") -> go.Figure:
    d = history_frame(history, "loss")
    fig = go.Figure()
    if len(d):
        fig.add_trace(go.Scatter(x=d["step"], y=d["loss"], mode="lines", name="loss", line={"color": "#1f6feb", "width": 1},
                                 opacity=0.45, hovertemplate="step %{x}: %{y:.4f}<extra></extra>"))
        smooth = d["loss"].ewm(alpha=0.1).mean()
        fig.add_trace(go.Scatter(x=d["step"], y=smooth, mode="lines+markers" if len(d) < 30 else "lines",
                                 name="smoothed", line={"color": "#1f6feb", "width": 2.5},
                                 hovertemplate="step %{x}: %{y:.4f} (smoothed)<extra></extra>"))
    fig.update_layout(title=title, template="plotly_white", height=300, margin={"l": 10, "r": 10, "t": 60, "b": 10},
                      xaxis_title="step", yaxis_title="loss", showlegend=False)
    fig.update_xaxes(rangemode="tozero")
    return fig


def collapse_figure(history: list[dict[str, Any]], std_min: float | None = None, erank_min: float | None = None) -> go.Figure:
    """Three small panels: std, mean cosine, effective rank over steps, with the warning thresholds."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t, _ in COLLAPSE], horizontal_spacing=0.08)
    for c, (key, title, _) in enumerate(COLLAPSE, start=1):
        d = history_frame(history, key)
        if len(d):
            fig.add_trace(go.Scatter(x=d["step"], y=d[key], mode="lines+markers", marker={"size": 4}, name=title,
                                     line={"color": "#2da44e", "width": 2},
                                     hovertemplate="step %{x}: %{y:.3f}<extra></extra>"), row=1, col=c)
    if std_min is not None:
        fig.add_hline(y=std_min, line={"color": "#cf222e", "dash": "dot", "width": 1}, row=1, col=1)
    if erank_min is not None:
        fig.add_hline(y=erank_min, line={"color": "#cf222e", "dash": "dot", "width": 1}, row=1, col=3)
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=3)
    fig.update_layout(title="Collapse monitor", template="plotly_white", height=300,
                      margin={"l": 10, "r": 10, "t": 60, "b": 10}, showlegend=False)
    fig.update_xaxes(title_text="step", rangemode="tozero")
    return fig



def tidy_auc_figure(fig: go.Figure) -> go.Figure:
    """Draw the ± std bands of an AUC-vs-shots figure as plain areas (no vertex markers)."""
    fig.update_traces(mode="lines", selector={"fill": "toself"})
    fig.update_layout(height=460, margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig


# ------------------------------------------------------------------------------------- benchmark statistics

MODE_SHORT = SHORT  # engine.fewshot.modes: one name per mode
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22")
_DASH = DASH


def short_label(name: str, limit: int = 26) -> str:
    """A legend-sized init name: the registry name, cut to `limit` characters with an ellipsis."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def benchmark_figure(summary: pd.DataFrame, paired: pd.DataFrame, findings: list[str], reference: str,
                     labels: dict[str, str] | None = None) -> go.Figure:
    """AUC vs shots (top row) and the paired difference d vs `reference` (bottom row), one column per finding.

    summary: a sweep's summary.csv rows with status "ok" (init = registry names; auc_mean, auc_ci_low/high).
    paired: engine.fewshot.metrics.paired_differences rows against `reference` (diff, ci_low, ci_high, se,
    wins, n). Error bars are the 95% intervals as stored; a zero line marks "no better than the reference"
    and a dotted 0.5 line chance AUC. Legend entries are short init names (short_label) with the mode; the
    full label (`labels`, name -> words) shows on hover. Shots on a log axis; each (init, mode) is shifted a
    little sideways (the hover says the true shot count) so overlapping error bars stay readable; each row
    shares its y axis across findings.
    """
    labels = labels or {}
    cols = max(1, len(findings))
    fig = make_subplots(rows=2, cols=cols, shared_xaxes=True, shared_yaxes=True, vertical_spacing=0.1,
                        horizontal_spacing=0.03,
                        subplot_titles=list(findings), row_heights=[0.55, 0.45])
    inits = list(dict.fromkeys(summary["init"])) if len(summary) else []
    color = {n: _COLORS[i % len(_COLORS)] for i, n in enumerate(inits)}
    groups = list(dict.fromkeys(zip(summary["init"], summary["mode"]))) if len(summary) else []
    shift = {g: 1.0 + 0.035 * (i - (len(groups) - 1) / 2) for i, g in enumerate(groups)}  # x factor (log axis)
    shown: set[tuple[str, str]] = set()
    for c, finding in enumerate(findings, start=1):
        s = summary[summary["finding"] == finding]
        for (init, mode), g in s.groupby(["init", "mode"], sort=False):
            _add_curve(fig, g.sort_values("shots"), "auc_mean", "auc_ci_low", "auc_ci_high", init, mode, color[init],
                       labels, shown, 1, c, shift.get((init, mode), 1.0), "AUC %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]")
        p = paired[paired["finding"] == finding] if len(paired) else paired
        for (init, mode), g in (p.groupby(["init", "mode"], sort=False) if len(p) else []):
            _add_curve(fig, g.sort_values("shots"), "diff", "ci_low", "ci_high", init, mode, color.get(init, "#444"),
                       labels, shown, 2, c, shift.get((init, mode), 1.0), "d %{y:+.3f} [%{customdata[0]:+.3f}, %{customdata[1]:+.3f}], "
                                            "SE %{customdata[2]:.3f}, wins %{customdata[3]:.0f}/%{customdata[4]:.0f}")
        fig.add_hline(y=0.5, line={"color": "gray", "dash": "dot", "width": 1}, row=1, col=c)
        fig.add_hline(y=0.0, line={"color": "black", "width": 1}, row=2, col=c)
    shots = sorted(set(summary["shots"].astype(int))) if len(summary) else [1, 5, 10, 20, 50]
    # the range padded around the shot counts (log units): with one shot count, autorange would stretch the small
    # sideways shifts to the plot's edges and leave the tick in empty space between the points
    lo, hi = np.log10(min(shots)) - 0.15, np.log10(max(shots)) + 0.15
    fig.update_xaxes(type="log", tickvals=shots, ticktext=[str(k) for k in shots], range=[lo, hi])
    fig.update_xaxes(title_text="shots per class", row=2)
    fig.update_yaxes(title_text="test AUC (95% CI)", row=1, col=1)
    fig.update_yaxes(title_text=f"d vs {short_label(reference, 16)}", row=2, col=1)
    fig.update_layout(template="plotly_white", height=620, hovermode="closest",
                      margin={"l": 10, "r": 10, "t": 70, "b": 10},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.12, "xanchor": "left", "x": 0})
    return fig


def _add_curve(fig: go.Figure, g: pd.DataFrame, y: str, lo: str, hi: str, init: str, mode: str, color: str,
               labels: dict[str, str], shown: set, row: int, col: int, shift: float, what: str) -> None:
    """One (init, mode) line with asymmetric error bars in one facet; one legend entry per (init, mode)."""
    import numpy as np

    key = (init, mode)
    m, l, h = (g[k].to_numpy(float) for k in (y, lo, hi))
    extra = [g[k].to_numpy(float) if k in g else np.full(len(g), np.nan) for k in ("se", "wins", "n")]
    full = f"{labels.get(init, init)} ({mode})"
    fig.add_trace(go.Scatter(
        x=g["shots"].to_numpy(float) * shift, y=m, mode="lines+markers", text=g["shots"].astype(int).astype(str), name=f"{short_label(init)} · {MODE_SHORT.get(mode, mode)}",
        legendgroup=f"{init}|{mode}", showlegend=key not in shown,
        line={"color": color, "dash": _DASH.get(mode, "dashdot"), "width": 2},
        error_y={"type": "data", "symmetric": False, "array": np.nan_to_num(h - m), "arrayminus": np.nan_to_num(m - l),
                 "thickness": 1.2, "width": 4},
        customdata=np.c_[l, h, *extra], hovertemplate=f"{full}<br>%{{text}} shots: {what}<extra></extra>"),
        row=row, col=col)
    shown.add(key)
