"""Plotly figure of a dataset-similarity report (no streamlit; the Benchmark page and the CLI's HTML use it)."""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import plotly.graph_objects as go

COLOURS = ("#1f6feb", "#cf222e", "#2da44e", "#8250df", "#bf8700", "#0a7f8c", "#d1242f", "#57606a")


def similarity_figure(table: pd.DataFrame, settings: Mapping[str, Any] | None = None) -> go.Figure:
    """SVCCA vs layer, one solid line per candidate set, its chance level (units shuffled) dotted in the
    same colour. `table` has columns candidate, layer, svcca, chance (engine.analysis.similarity)."""
    s = dict(settings or {})
    fig = go.Figure()
    layers = list(dict.fromkeys(table["layer"]))
    for i, (name, d) in enumerate(table.groupby("candidate", sort=False)):
        c = COLOURS[i % len(COLOURS)]
        fig.add_trace(go.Scatter(x=d["layer"], y=d["svcca"], mode="lines+markers", name=str(name),
                                 line={"color": c, "width": 2.5}, legendgroup=str(name),
                                 hovertemplate=f"{name}, %{{x}}: SVCCA %{{y:.3f}}<extra></extra>"))
        fig.add_trace(go.Scatter(x=d["layer"], y=d["chance"], mode="lines", name=f"{name}: chance",
                                 line={"color": c, "width": 1, "dash": "dot"}, legendgroup=str(name), showlegend=False,
                                 hovertemplate=f"{name}, %{{x}}: chance %{{y:.3f}}<extra></extra>"))
    title = "Similarity to " + str(s.get("reference", "the reference"))
    if s.get("init"):
        title += f" through {s['init']}"
    fig.update_layout(title=title, template="plotly_white", height=380, margin={"l": 10, "r": 10, "t": 60, "b": 10},
                      xaxis={"title": "layer", "categoryorder": "array", "categoryarray": layers},
                      yaxis={"title": "SVCCA (mean canonical correlation)", "range": [0, 1.02]},
                      legend={"orientation": "h", "y": -0.25, "x": 0})
    return fig
