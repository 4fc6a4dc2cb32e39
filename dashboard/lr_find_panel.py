"""The Training page's "Find a learning rate" section: a learning-rate range test of the
draft's first phase, its loss against the rate, the suggested rate, and one click to make
that rate the draft's."""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
import streamlit as st

import tl_engine as tle
from dashboard import access, charts, controls, state
from dashboard.text import md_escape
from tl_engine import lr_find

POLL_S = 2


def rounded(rate: float) -> float:
    """Two significant digits: a rate people can read and type (6.4e-3, not 6.428e-3)."""
    return float(f"{rate:.1e}")


def loss_curve(points: Sequence[Sequence[float]], suggested: float | None,
               minimum_div10: float | None) -> go.Figure:
    """Smoothed loss against the learning rate (log axis), the suggestion marked. The loss
    axis stops a little above the flat start: the blow-up at the end would flatten the
    rest."""
    losses = [loss for _, loss in points]
    low = min(losses) if losses else 0.0
    top = min(max(losses), 1.15 * max(losses[:20] + [2 * low])) if losses else 1.0
    fig = go.Figure(go.Scatter(
        x=[lr for lr, _ in points], y=losses, mode="lines",
        line={"color": charts.PALETTE[0], "width": 2}, name="smoothed loss",
        hovertemplate="rate %{x:.1e}<br>loss %{y:.3f}<extra></extra>"))
    marks = [(value, text, dash) for value, text, dash in (
        (suggested, "suggested", "solid"), (minimum_div10, "minimum ÷ 10", "dot")) if value]
    lowest = min((value for value, _, _ in marks), default=None)
    for row, (value, text, dash) in enumerate(marks):
        # Each label on the side away from the other line, and on its own height: two
        # close rates would otherwise print one label over the other.
        side = "left" if value == lowest and len(marks) > 1 else "right"
        label_y = top - row * 0.14 * (top - low * 0.95)
        # A line as a trace: shapes on a log axis take log10 coordinates, traces do not.
        fig.add_trace(go.Scatter(
            x=[value, value, value], y=[low * 0.95, label_y, top], mode="lines+text",
            line={"color": charts.PALETTE[1], "dash": dash, "width": 2},
            text=["", f"{text} {value:.1e}", ""], textposition=f"bottom {side}",
            name=text, hovertemplate=f"{text}: {value:.1e}<extra></extra>"))
    fig.update_layout(height=300, margin={"l": 10, "r": 10, "t": 20, "b": 10},
                      xaxis={"type": "log", "title": "learning rate", "exponentformat": "e"},
                      yaxis={"title": "loss", "range": [low * 0.95, top]}, showlegend=False)
    return fig


def _start(ws: tle.Workspace, project: str, dataset: tle.Dataset, draft: dict) -> None:
    if not access.permit("lr_find", project):
        return
    with state.engine_errors():
        lr_find.submit_lr_find(ws, project, dataset.id, draft, started_by=state.user_name())


def use_rate(rate: float) -> None:
    """The draft's learning rate, and the form's control re-seeded with it."""
    state.update_spec(learning_rate=rate)
    st.session_state[controls.widget_key("learning_rate")] = rate
    st.session_state["lr_find_flash"] = f"The learning rate is now {rate:g}."


def live_test(ws: tle.Workspace, run_id: str, status: str) -> None:
    run = tle.get_run(ws, run_id)
    if run.status != status:
        st.rerun()
    progress = run.progress
    loss = (progress.logs or {}).get("loss")
    text = "Waiting for the worker…" if run.status == tle.RunStatus.QUEUED else (
        f"{progress.phase_title or progress.pass_name or 'Preparing'}"
        + (f" · step {progress.step} of {progress.steps}" if progress.steps else "")
        + (f" · loss {loss:.3f}" if loss is not None else ""))
    st.progress(min(1.0, float(progress.fraction or 0.0)), text=md_escape(text))


def render(ws: tle.Workspace, project: str, dataset: tle.Dataset, draft: dict) -> None:
    with st.container(border=True):
        st.markdown("**Find a learning rate**")
        plan = tle.phases(tle.RunSpec.from_dict(draft))
        st.caption(
            f"A range test (Smith 2017): {lr_find.STEPS} steps of the first phase "
            f"({md_escape(plan[0].trainable_text)}) with the rate rising from "
            f"{lr_find.START_LR:g} to {lr_find.END_LR:g}; the suggestion is where the "
            "smoothed loss falls fastest. Later phases scale it by their factor.")
        if access.guarded_button(st, "Find a learning rate", "lr_find", project,
                                 key="lr_find_start", icon=":material/search:"):
            _start(ws, project, dataset, draft)
        run = None
        with state.engine_errors():  # settings the form has not validated yet
            run = lr_find.latest_lr_find(ws, project, dataset.id, draft)
        if run is None:
            return
        if run.is_active:
            st.fragment(live_test, run_every=POLL_S)(ws, run.id, str(run.status))
            return
        if run.status != tle.RunStatus.COMPLETED:
            st.warning(f"The range test {md_escape(run.status)}: "
                       f"{md_escape(run.error or '')}", icon=":material/warning:")
            return
        summary = run.summary
        suggested = rounded(summary["suggested_lr"])
        st.plotly_chart(loss_curve(summary["points"], summary["suggested_lr"],
                                   summary.get("minimum_div10_lr")),
                        width="stretch", key=f"lr_find_curve_{run.id}")
        cols = st.columns([0.6, 0.4], vertical_alignment="center")
        cols[0].markdown(f"Suggested learning rate **{suggested:g}** "
                         f"({summary['suggested_by']}; minimum ÷ 10: "
                         f"{summary['minimum_div10_lr']:.1e})")
        in_draft = math.isclose(float(draft.get("learning_rate", 0.0)), suggested)
        cols[1].button("In the draft" if in_draft else "Use this learning rate",
                       key="lr_find_use", disabled=in_draft, on_click=use_rate,
                       args=(suggested,), type="primary", icon=":material/check:")
        if flash := st.session_state.pop("lr_find_flash", None):
            st.success(flash, icon=":material/check_circle:")
