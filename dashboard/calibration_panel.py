"""The Runs page's calibration tab: how far the run's confidences can be trusted. A
reliability diagram (accuracy per confidence bin against the diagonal) before and after
temperature scaling, with the expected calibration error and the temperature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

import tl_engine as tle
from dashboard.charts import PALETTE

SPLIT_NAMES = {"test": "test", "val": "validation"}


def reliability_chart(report: Mapping[str, Any]) -> go.Figure:
    """Two panels, before and after temperature scaling: bars of accuracy per confidence
    bin, over the diagonal a perfectly calibrated model would follow."""
    # Confidences start at 1 / classes (0.5 for two): no room for empty bins below them.
    start = min((b["low"] for name in ("before", "after") for b in report["reliability"][name]
                 if b["count"]), default=0.0)
    titles = (f"Before · ECE {report['ece']:.1%}",
              f"After temperature scaling (T = {report['temperature']:.2f}) · "
              f"ECE {report['ece_calibrated']:.1%}")
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=titles,
                        horizontal_spacing=0.06)
    width = 1 / report["n_bins"]
    for col, (name, colour) in enumerate((("before", PALETTE[1]), ("after", PALETTE[0])), 1):
        bins = [b for b in report["reliability"][name] if b["count"]]
        fig.add_trace(go.Bar(
            x=[(b["low"] + b["high"]) / 2 for b in bins], y=[b["accuracy"] for b in bins],
            width=width * 0.92, marker_color=colour, name=f"{name} temperature scaling",
            customdata=[[b["low"], b["high"], b["confidence"], b["count"]] for b in bins],
            hovertemplate=("confidence %{customdata[0]:.0%}–%{customdata[1]:.0%}<br>"
                           "mean confidence %{customdata[2]:.1%}<br>accuracy %{y:.1%}<br>"
                           "%{customdata[3]} images<extra></extra>")), row=1, col=col)
        fig.add_trace(go.Scatter(x=[start, 1], y=[start, 1], mode="lines",
                                 name="perfectly calibrated", showlegend=col == 1,
                                 line={"color": "#495057", "dash": "dash"}), row=1, col=col)
        fig.update_xaxes(title_text="confidence (top class)", range=[start, 1],
                         tickformat=".0%", row=1, col=col)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], tickformat=".0%", row=1, col=1)
    fig.update_annotations(font_size=13)
    fig.update_layout(height=380, legend={"orientation": "h", "y": -0.25},
                      margin={"l": 10, "r": 10, "t": 64, "b": 10})  # clear of the toolbar
    return fig


def show_calibration(ws: tle.Workspace, run: tle.RunRecord) -> None:
    """The tab's content for a completed run."""
    report = tle.evaluation(ws, run.id).get("calibration")
    if not report:
        st.info("This run was trained before calibration was measured: train it again to "
                "see how far its confidences can be trusted.")
        return
    split = SPLIT_NAMES.get(report["split"], report["split"])
    cols = st.columns(3)
    cols[0].metric("ECE before", f"{report['ece']:.1%}",
                   help="Expected calibration error (15 bins): the mean gap between "
                        "confidence and accuracy, weighted by the images in each bin.")
    cols[1].metric("ECE after", f"{report['ece_calibrated']:.1%}",
                   f"{(report['ece_calibrated'] - report['ece']) * 100:+.1f} points",
                   delta_color="inverse",
                   help="The same, after temperature scaling: what Prediction and the "
                        "exports report.")
    cols[2].metric("Temperature T", f"{report['temperature']:.2f}",
                   help="Probabilities become softmax(log p / T): T > 1 softens an "
                        "over-confident model, T < 1 sharpens an under-confident one.")
    st.plotly_chart(reliability_chart(report), width="stretch", key=f"reliability_{run.id}")
    flatters = (" — the images T was fitted on, so the figure after scaling flatters it"
                if report["split"] == "val" else "")
    st.caption(f"On the {report['n_images']} {split} images{flatters}. T is fitted on the "
               "validation images (lowest negative log-likelihood) and applied to every "
               "prediction and export. A bar under the diagonal: more confident than right.")
