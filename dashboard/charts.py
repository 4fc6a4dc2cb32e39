"""Plotly figures the pages share. Pure functions of engine data: easy to test and reuse."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.text import plotly_text

PALETTE = ["#4C6EF5", "#F76707", "#12B886", "#E64980", "#7950F2", "#FAB005", "#15AABF"]


CURVE_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
# Per run a marker symbol, so runs differ by more than colour (projectors, colour blindness).
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "cross", "star", "hexagon"]
# (train, val) dashes by a line's place among identical lines: one drawn on top of another
# run's line is dotted, so the line underneath still shows through.
TWIN_DASHES = [("solid", "dash"), ("dot", "dashdot"), ("longdash", "longdashdot")]
SAME_WITHIN = 1e-9


def identical_groups(
    metrics_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
    keys: Sequence[str] = CURVE_METRICS,
) -> dict[str, list[str]]:
    """Each run whose curves (by default epochs, train and val loss and accuracy; else the
    metrics in `keys`) equal another run's within 1e-9, mapped to those other runs in their
    given order. Runs without any value for `keys`, and runs without a twin, are left out."""
    groups: list[list[str]] = []
    for run, metrics in metrics_by_run.items():
        if not any(m.get(key) is not None for m in metrics for key in keys):
            continue
        group = next((g for g in groups
                      if _same_curves(metrics_by_run[g[0]], metrics, keys)), None)
        if group is None:
            groups.append([run])
        else:
            group.append(run)
    return {run: [other for other in group if other != run]
            for group in groups if len(group) > 1 for run in group}


def _same_curves(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]],
                 keys: Sequence[str]) -> bool:
    if [m["epoch"] for m in a] != [m["epoch"] for m in b]:
        return False
    return all(_same_value(x.get(key), y.get(key))
               for x, y in zip(a, b, strict=True) for key in keys)


def _same_value(x: Any, y: Any) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return x == y or abs(float(x) - float(y)) <= SAME_WITHIN


def overlaps(metrics_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
             keys: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
    """Each run whose curves coincide with an EARLIER listed run's over all the epochs of
    the shorter of the two (the same settings trained for fewer epochs, say), mapped to
    those runs and how many epochs they share. A line that coincides is drawn on top of
    the earlier one, so it must look different."""
    found: dict[str, list[tuple[str, int]]] = {}
    runs = list(metrics_by_run)
    for i, run in enumerate(runs):
        for other in runs[:i]:
            shared = _shared_prefix(metrics_by_run[run], metrics_by_run[other], keys)
            if shared:
                found.setdefault(run, []).append((other, shared))
    return found


def _shared_prefix(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]],
                   keys: Sequence[str]) -> int:
    """How many epochs a and b share when one is the other's beginning; 0 when they differ
    anywhere in the shorter one (or hold no value for `keys`)."""
    n = min(len(a), len(b))
    if not n or [m["epoch"] for m in a[:n]] != [m["epoch"] for m in b[:n]]:
        return 0
    if not any(m.get(key) is not None for m in a[:n] for key in keys):
        return 0
    same = all(_same_value(x.get(key), y.get(key))
               for x, y in zip(a[:n], b[:n], strict=True) for key in keys)
    return n if same else 0


def _overlap_note(run: str, shared_with: Sequence[tuple[str, int]],
                  metrics_by_run: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    parts = []
    for other, shared in shared_with:
        if shared == len(metrics_by_run[run]) == len(metrics_by_run[other]):
            parts.append(f"identical to {other}")
        else:
            last = metrics_by_run[run][shared - 1]["epoch"]
            parts.append(f"same as {other} up to epoch {last}")
    return f" ({'; '.join(parts)})" if parts else ""


def training_curves(metrics_by_run: Mapping[str, Sequence[Mapping[str, Any]]]) -> go.Figure:
    """Loss and accuracy per epoch, train solid and validation dashed, one colour and marker
    symbol per run. Both axes zoom to the data, so 96.8 % and 97.3 % are told apart. A line
    identical to an earlier run's is drawn dotted on top, with smaller markers, and the
    legend says which run's lines it repeats."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    # How many earlier lines each line lies on: 0 is drawn plain, 1 dotted on top, ...
    places = {key: {run: len(shared) for run, shared in
                    overlaps(metrics_by_run, (key,)).items()} for key in CURVE_METRICS}
    for i, (run_label, metrics) in enumerate(metrics_by_run.items()):
        colour = PALETTE[i % len(PALETTE)]
        symbol = SYMBOLS[i % len(SYMBOLS)]
        epochs = [m["epoch"] for m in metrics]
        for prefix, split, split_index in (("", "train", 0), ("val_", "val", 1)):
            shared = overlaps(metrics_by_run, (prefix + "loss", prefix + "accuracy"))
            note = _overlap_note(run_label, shared.get(run_label, []), metrics_by_run)
            for col, metric in ((1, "loss"), (2, "accuracy")):
                values = [m.get(prefix + metric) for m in metrics]
                if not any(v is not None for v in values):
                    continue
                place = places[prefix + metric].get(run_label, 0)
                value_format = "%{y:.2%}" if metric == "accuracy" else "%{y:.4f}"
                fig.add_trace(
                    go.Scatter(
                        x=epochs, y=values, mode="lines+markers",
                        line={"color": colour,
                              "dash": TWIN_DASHES[place % len(TWIN_DASHES)][split_index]},
                        marker={"symbol": symbol, "size": max(5, 9 - 2 * place)},
                        name=f"{run_label} {split}{note}", legendgroup=run_label,
                        showlegend=col == 1, cliponaxis=False,
                        hovertemplate=f"{run_label} {split}<br>epoch %{{x}}: {value_format}"
                                      "<extra></extra>",
                    ),
                    row=1, col=col,
                )
    fig.update_xaxes(title_text="epoch", dtick=1 if _max_epoch(metrics_by_run) <= 20 else None)
    loss = _finite(metrics_by_run, ("loss", "val_loss"))
    if loss:
        fig.update_yaxes(range=_padded_range(loss, low=0.0, high=None), row=1, col=1)
    accuracy = _finite(metrics_by_run, ("accuracy", "val_accuracy"))
    low, high = _padded_range(accuracy, low=0.0, high=1.0) if accuracy else (0.0, 1.0)
    fig.update_yaxes(range=[low, high], tickformat=f".{_percent_decimals(high - low)}%",
                     row=1, col=2)
    # The top margin leaves the subplot titles clear of the chart's toolbar on hover.
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 64, "b": 10},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def _max_epoch(metrics_by_run: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
    return max((m["epoch"] for ms in metrics_by_run.values() for m in ms), default=0)


def _finite(metrics_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
            keys: Sequence[str]) -> list[float]:
    values = (m.get(key) for ms in metrics_by_run.values() for m in ms for key in keys)
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _padded_range(values: Sequence[float], low: float, high: float | None) -> list[float]:
    """From the smallest to the largest value, with a tenth of the span (or a little, for a
    flat line) either side, kept within [low, high]."""
    smallest, largest = min(values), max(values)
    pad = max((largest - smallest) * 0.1, abs(largest) * 0.01, 0.005)
    start = max(low, smallest - pad)
    end = largest + pad if high is None else min(high, largest + pad)
    return [start, end]


def _percent_decimals(span: float) -> int:
    """Decimals for percent ticks about a fifth of `span` apart, so neighbours differ."""
    step_in_points = max(span, 1e-6) * 100 / 5
    return max(0, -math.floor(math.log10(step_in_points)))


def confusion_heatmap(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> go.Figure:
    labels = [plotly_text(c) for c in classes]
    fig = go.Figure(
        go.Heatmap(
            z=matrix, x=labels, y=labels, colorscale="Blues",
            text=matrix, texttemplate="%{text}", hovertemplate="true %{y}<br>predicted %{x}"
            "<br>%{z} images<extra></extra>",
        )
    )
    fig.update_layout(xaxis_title="predicted", yaxis_title="true", height=120 + 45 * len(classes),
                      yaxis={"autorange": "reversed"}, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def class_counts_bar(counts: Mapping[str, int]) -> go.Figure:
    labels = [plotly_text(label) for label in counts]
    fig = go.Figure(go.Bar(x=labels, y=list(counts.values()), marker_color=PALETTE[0],
                           text=list(counts.values()), textposition="outside"))
    fig.update_layout(yaxis_title="images", height=300, margin={"l": 10, "r": 10, "t": 20, "b": 10})
    return fig


def top_k_bar(top: Sequence[tuple[str, float]]) -> go.Figure:
    """Horizontal bars, most likely class on top."""
    labels = [plotly_text(label) for label, _ in top][::-1]
    probs = [p for _, p in top][::-1]
    fig = go.Figure(go.Bar(x=probs, y=labels, orientation="h", marker_color=PALETTE[0],
                           text=[f"{p:.1%}" for p in probs], textposition="auto"))
    fig.update_layout(xaxis={"range": [0, 1], "tickformat": ".0%"},
                      height=60 + 32 * len(top), margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig
