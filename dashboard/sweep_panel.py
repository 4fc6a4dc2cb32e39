"""The Runs page's "Strategy sweep" section: one click trains the draft's backbone with every
freeze strategy and from scratch; the comparison table marks the winner, the validation
curves are overlaid, and what transfer learning bought over training from scratch is said."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import tl_engine as tle
from dashboard import access, charts, state
from dashboard.formats import format_duration, format_time
from dashboard.text import md_escape, plotly_text
from tl_engine import sweep

POLL_S = 2
SWEEP_KEY = "sweep_shown"
PICK_KEY = "sweep_pick"


def sweep_table(result: sweep.SweepResult) -> pd.DataFrame:
    """One line per strategy, the winner starred; empty cells where a run has no result."""
    winner = result.winner
    table = pd.DataFrame([{
        "": "★" if winner is not None and row.run_id == winner.run_id else "",
        "Strategy": row.label,
        "Weights": "random init" if row.weights == "none" else row.weights,
        # In percent, one decimal, as the Runs table shows accuracies.
        "Val accuracy": None if row.val_accuracy is None else 100.0 * row.val_accuracy,
        "Time": format_duration(row.seconds) if row.seconds is not None else "",
        "Run": row.run_id,
        "Status": row.status,
    } for row in result.rows])
    table["Val accuracy"] = table["Val accuracy"].astype("Float64")  # <NA> while unknown
    return table


def validation_curves(metrics_by_label: Mapping[str, Sequence[Mapping[str, Any]]],
                      winner: str | None = None, metric: str = "val_accuracy") -> go.Figure:
    """Validation accuracy per epoch, one line per strategy, the winner's drawn thicker;
    the from-scratch baseline dashed."""
    fig = go.Figure()
    for i, (label, metrics) in enumerate(metrics_by_label.items()):
        points = [(m["epoch"], m[metric]) for m in metrics if m.get(metric) is not None]
        if not points:
            continue
        scratch = label.startswith("From scratch")
        fig.add_trace(go.Scatter(
            x=[e for e, _ in points], y=[v for _, v in points], mode="lines+markers",
            name=plotly_text(label) + (" ★" if label == winner else ""),
            line={"color": charts.PALETTE[i % len(charts.PALETTE)],
                  "width": 4 if label == winner else 2, "dash": "dash" if scratch else "solid"},
            marker={"symbol": charts.SYMBOLS[i % len(charts.SYMBOLS)]},
            hovertemplate=f"{plotly_text(label)}<br>epoch %{{x}}: %{{y:.1%}}<extra></extra>"))
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis={"title": "epoch", "dtick": 1}, yaxis_title="validation accuracy",
                      yaxis={"tickformat": ".0%", "range": [0, 1.02]},
                      legend={"orientation": "h", "y": -0.25},
                      title={"text": "Validation accuracy by strategy", "font": {"size": 14}})
    return fig


def _start(ws: tle.Workspace, project: str, dataset: tle.Dataset, draft: dict) -> None:
    if not access.permit("sweep", project):
        return
    with state.engine_errors():
        started = sweep.submit_sweep(ws, project, dataset.id, draft,
                                     started_by=state.user_name())
        # The picker's own state would otherwise keep showing the sweep picked before.
        st.session_state[SWEEP_KEY] = st.session_state[PICK_KEY] = started


def live_sweep(ws: tle.Workspace, sweep_id: str, seen: tuple[tuple[str, str], ...]) -> None:
    """Each strategy's status while the sweep trains; redraws the page when one finishes."""
    result = sweep.sweep_result(ws, sweep_id)
    if tuple((r.run_id, r.status) for r in result.rows) != seen:
        st.rerun()
    done = sum(r.status == tle.RunStatus.COMPLETED for r in result.rows)
    running = next((r for r in result.rows if r.status == tle.RunStatus.RUNNING), None)
    text = f"{done} of {len(result.rows)} strategies trained"
    fraction = done / len(result.rows)
    if running is not None:
        progress = tle.get_run(ws, running.run_id).progress
        fraction += float(progress.fraction or 0.0) / len(result.rows)
        text += f" · now: {running.label}"
        if progress.epochs:
            text += f", epoch {progress.epoch or 0} of {progress.epochs}"
    st.progress(min(1.0, fraction), text=md_escape(text))


def _start_panel(ws: tle.Workspace, project: str, dataset: tle.Dataset, draft: dict) -> None:
    # The partial depths come from the registry's block counts: nothing is built here.
    entries = sweep.sweep_entries(draft)
    st.caption(
        f"Trains **{md_escape(draft['backbone'])}** on **{md_escape(dataset.name)}** with "
        f"every freeze strategy ({_epochs(entries[0].spec.epochs)} each, your draft's other "
        "settings), and the same network from random weights as the baseline. Pretrained "
        "layers fine-tune at a tenth of the head's learning rate. Runs already trained are "
        "reused.")
    if access.guarded_button(st, f"Sweep {len(entries)} strategies", "sweep", project,
                             key="sweep_start", icon=":material/compare_arrows:",
                             help="; ".join(e.label for e in entries)):
        _start(ws, project, dataset, draft)


def _shown_sweep(headers: Sequence[sweep.SweepHeader], names: Mapping[str, str],
                 dataset: tle.Dataset) -> str:
    """The sweep to show: the one this session started or picked, else the newest on the
    current dataset, else the project's newest; a picker when there are several."""
    by_id = {h.sweep_id: h for h in headers}
    sweeps = list(by_id)
    shown = st.session_state.get(SWEEP_KEY)
    if shown not in by_id:
        shown = next((h.sweep_id for h in headers if h.dataset_id == dataset.id), sweeps[0])
    if len(sweeps) > 1:
        shown = st.selectbox(
            "Sweep", sweeps, index=sweeps.index(shown), key=PICK_KEY,
            format_func=lambda s: f"{by_id[s].backbone} on "
            f"{names.get(by_id[s].dataset_id, by_id[s].dataset_id)} · "
            f"{format_time(by_id[s].created_at)} · {s}")
    st.session_state[SWEEP_KEY] = shown
    return shown


def _about(result: sweep.SweepResult, dataset_name: str) -> str:
    """What the shown sweep trained, from its own runs (not the reader's draft)."""
    text = f"{result.backbone} on {dataset_name}"
    if result.epochs:
        text += f", {_epochs(result.epochs)} per strategy"
    if result.started_by:
        text += f", started by {result.started_by}"
    return text + f", {format_time(result.created_at)}."


def _epochs(count: int) -> str:
    return f"{count} epoch" + ("" if count == 1 else "s")


def _no_comparison_text(result: sweep.SweepResult) -> str:
    baseline = result.baseline
    if baseline is not None and baseline.status == "deleted":
        return (f"The from-scratch run {baseline.run_id} was deleted, so what transfer "
                "learning bought cannot be said for this sweep.")
    if baseline is not None and baseline.status != tle.RunStatus.COMPLETED:
        return (f"The from-scratch run {baseline.run_id} is {baseline.status}, so what "
                "transfer learning bought cannot be said yet: resume it on the Training "
                "page.")
    return "No pretrained run of this sweep completed, so there is no winner."


def render(ws: tle.Workspace, project: str, dataset: tle.Dataset | None, draft: dict) -> None:
    st.header("Strategy sweep")
    if dataset is None:
        st.caption("Add a dataset to compare freeze strategies on it.")
        return
    _start_panel(ws, project, dataset, draft)
    headers = sweep.sweep_headers(ws, project)
    if not headers:
        st.caption("No sweep in this project yet.")
        return
    names = {d.id: d.name for d in tle.list_datasets(ws, project)}
    shown = _shown_sweep(headers, names, dataset)
    result = sweep.sweep_result(ws, shown)
    st.caption(md_escape(_about(result, names.get(result.dataset_id, result.dataset_id))))
    seen = tuple((r.run_id, r.status) for r in result.rows)
    if result.active:  # polls the store only while the sweep's runs wait or train
        st.fragment(live_sweep, run_every=POLL_S)(ws, shown, seen)
    st.dataframe(sweep_table(result), hide_index=True, width="stretch", placeholder="–",
                 column_config={"Val accuracy": st.column_config.NumberColumn(
                     "Val accuracy", format="%.1f%%")})
    if result.sentence:
        st.success(md_escape(result.sentence), icon=":material/emoji_events:")
    elif result.active:
        st.caption("The winner and what transfer learning bought show once a pretrained run "
                   "and the from-scratch run have completed.")
    else:
        st.caption(md_escape(_no_comparison_text(result)))
    curves = {row.label: tle.run_metrics(ws, row.run_id) for row in result.rows
              if row.status == tle.RunStatus.COMPLETED}
    if curves:
        winner = result.winner
        st.plotly_chart(validation_curves(curves, winner.label if winner else None),
                        width="stretch", key=f"sweep_curves_{shown}")
