"""Plotly figures the pages share. Pure functions of engine data: easy to test and reuse."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

PALETTE = ["#4C6EF5", "#F76707", "#12B886", "#E64980", "#7950F2", "#FAB005", "#15AABF"]


def training_curves(metrics_by_run: Mapping[str, Sequence[Mapping[str, Any]]]) -> go.Figure:
    """Loss and accuracy per epoch, train solid and validation dashed, one colour per run."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    for i, (run_label, metrics) in enumerate(metrics_by_run.items()):
        colour = PALETTE[i % len(PALETTE)]
        epochs = [m["epoch"] for m in metrics]
        for col, metric in ((1, "loss"), (2, "accuracy")):
            for prefix, dash, name in (("", "solid", "train"), ("val_", "dash", "val")):
                values = [m.get(prefix + metric) for m in metrics]
                if not any(v is not None for v in values):
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=epochs, y=values, mode="lines+markers",
                        line={"color": colour, "dash": dash},
                        name=f"{run_label} {name}", legendgroup=run_label,
                        showlegend=col == 1,
                    ),
                    row=1, col=col,
                )
    fig.update_xaxes(title_text="epoch", dtick=1 if _max_epoch(metrics_by_run) <= 20 else None)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def _max_epoch(metrics_by_run: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
    return max((m["epoch"] for ms in metrics_by_run.values() for m in ms), default=0)


def confusion_heatmap(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=matrix, x=list(classes), y=list(classes), colorscale="Blues",
            text=matrix, texttemplate="%{text}", hovertemplate="true %{y}<br>predicted %{x}"
            "<br>%{z} images<extra></extra>",
        )
    )
    fig.update_layout(xaxis_title="predicted", yaxis_title="true", height=120 + 45 * len(classes),
                      yaxis={"autorange": "reversed"}, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def class_counts_bar(counts: Mapping[str, int]) -> go.Figure:
    labels = list(counts)
    fig = go.Figure(go.Bar(x=labels, y=[counts[c] for c in labels], marker_color=PALETTE[0],
                           text=[counts[c] for c in labels], textposition="outside"))
    fig.update_layout(yaxis_title="images", height=300, margin={"l": 10, "r": 10, "t": 20, "b": 10})
    return fig


def top_k_bar(top: Sequence[tuple[str, float]]) -> go.Figure:
    """Horizontal bars, most likely class on top."""
    labels = [label for label, _ in top][::-1]
    probs = [p for _, p in top][::-1]
    fig = go.Figure(go.Bar(x=probs, y=labels, orientation="h", marker_color=PALETTE[0],
                           text=[f"{p:.1%}" for p in probs], textposition="auto"))
    fig.update_layout(xaxis={"range": [0, 1], "tickformat": ".0%"},
                      height=60 + 32 * len(top), margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig
