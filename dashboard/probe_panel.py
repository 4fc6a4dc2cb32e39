"""The Model page's "Will it transfer?" section: probe the backbones whose weights are here
on the current dataset, follow the probe jobs live, rank them, and make one the draft's."""

from __future__ import annotations

import streamlit as st

import tl_engine as tle
from dashboard import access, state, widgets
from dashboard.formats import format_duration
from dashboard.text import md_escape

POLL_S = 2


def probe_choices(draft: dict) -> list[tle.ProbeChoice]:
    """Every backbone with ImageNet weights here, plus the draft's own backbone and
    weights, each with its random-init reference, at the draft's input size."""
    size = int(draft.get("image_size") or 0)
    own = tle.ProbeChoice(draft["backbone"], draft["weights"], size)
    if own.weights == "imagenet" and tle.weights_status(
            tle.get_backbone(own.backbone), probe_network=False) != "cached":
        own = tle.ProbeChoice(own.backbone, "none", size)  # no weights to probe here
    return tle.probe.with_references([*tle.default_choices(size), own])


def _choice_text(choice: tle.ProbeChoice) -> str:
    return f"{choice.backbone} · {widgets.weights_label(choice.weights)}"


def _use(row: tle.ProbeRow) -> None:
    state.load_model_choice(backbone=row.backbone, weights=row.weights,
                            image_size=row.image_size)
    st.session_state["probe_flash"] = (f"The draft now uses {row.backbone} with "
                                       f"{widgets.weights_label(row.weights)} weights at "
                                       f"{row.image_size} px.")


def _row_title(row: tle.ProbeRow) -> str:
    return (f"**{md_escape(row.backbone)}** · {md_escape(widgets.weights_label(row.weights))}"
            f" · {row.image_size} px")


def _row_line(row: tle.ProbeRow) -> str:
    text = (f"probe **{row.probe_accuracy:.2f}** · kNN {row.knn_accuracy:.2f} · "
            f"evidence {row.evidence:.3f} · {format_duration(row.seconds)}")
    if row.faster_than_training:
        text += (f" · {row.faster_than_training:.0f}× faster than its frozen training "
                 f"({format_duration(row.train_seconds)})"
                 if row.faster_than_training >= 1.5 else
                 f" · its frozen training took {format_duration(row.train_seconds)}")
    return text


def ranked_table(ws: tle.Workspace, dataset: tle.Dataset, draft: dict) -> None:
    rows = tle.probe_table(ws, dataset.id)
    if not rows:
        st.caption("No probe on this dataset yet.")
        return
    if flash := st.session_state.pop("probe_flash", None):
        st.success(md_escape(flash), icon=":material/check_circle:")
    total = sum(row.seconds for row in rows)
    st.caption(f"{len(rows)} models probed on {rows[0].n_images} images in "
               f"{format_duration(total)}, ranked by LogME evidence (how well a linear model "
               "on the features explains the labels; higher is better). Probe: 5-fold "
               "linear-probe accuracy; kNN: leave-one-out 5-nearest-neighbour accuracy.")
    best = max(row.probe_accuracy for row in rows)
    for i, row in enumerate(rows):
        chosen = (row.backbone, row.weights, row.image_size) == (
            draft["backbone"], draft["weights"], draft["image_size"])
        with st.container(border=True):
            cols = st.columns([0.34, 0.46, 0.2], vertical_alignment="center")
            cols[0].markdown(f"{i + 1}. {_row_title(row)}")
            cols[1].markdown(_row_line(row))
            cols[1].progress(min(1.0, row.probe_accuracy), text=None)
            cols[2].button("In the draft" if chosen else "Use this backbone",
                           key=f"probe_use_{row.run_id}", disabled=chosen, on_click=_use,
                           args=(row,), type="primary" if row.probe_accuracy == best
                           and not chosen else "secondary", width="stretch")
    for row in rows:
        if row.weights == "none":
            continue
        reference = next((r for r in rows if r.backbone == row.backbone and
                          r.weights == "none" and r.image_size == row.image_size), None)
        if reference:
            gain = row.probe_accuracy - reference.probe_accuracy
            st.caption(f"{md_escape(row.backbone)}: "
                       f"{md_escape(widgets.weights_label(row.weights))} "
                       f"{row.probe_accuracy:.2f} · random init {reference.probe_accuracy:.2f}"
                       f" — pretraining is worth {gain:+.2f} in probe accuracy on these "
                       "images.")


def live_probes(ws: tle.Workspace, dataset_id: str, seen_active: tuple[str, ...]) -> None:
    """The dataset's queued and running probes; redraws the page once when that set
    changes (a probe finished: the table has a new row)."""
    active = tle.probe_jobs(ws, dataset_id, active_only=True)
    if tuple(run.id for run in active) != seen_active:
        st.rerun()
    for run in active:
        progress = run.progress
        what = progress.phase_title or progress.pass_name or run.status
        st.progress(min(1.0, float(progress.fraction or 0.0)),
                    text=f"{md_escape(run.spec.backbone)} · "
                         f"{md_escape(widgets.weights_label(run.spec.weights))}: "
                         f"{md_escape(str(what))}")


def render(ws: tle.Workspace, project: str, dataset: tle.Dataset | None, draft: dict) -> None:
    st.subheader("Will it transfer?")
    if dataset is None:
        st.caption("Add a dataset to score the backbones on your own photos before training.")
        return
    choices = probe_choices(draft)
    st.caption(f"Scores each backbone on **{md_escape(dataset.name)}** from its features "
               "alone, in seconds once features are cached, before any training — each with "
               "random weights beside it, to show what the pretraining is worth here.")
    cols = st.columns([0.3, 0.7], vertical_alignment="center")
    if access.guarded_button(cols[0], f"Probe {len(choices)} models", "probe", project,
                             key="probe_start", icon=":material/query_stats:",
                             help="; ".join(_choice_text(c) for c in choices)):
        with state.engine_errors():
            tle.submit_probes(ws, project, dataset.id, choices, started_by=state.user_name())
            st.rerun()
    cols[1].caption(", ".join(md_escape(_choice_text(c)) for c in choices)
                    + f" · {draft.get('image_size') or 'own'} px")
    active = tuple(run.id for run in tle.probe_jobs(ws, dataset.id, active_only=True))
    # Polls the store only while probes are queued or running: an idle page costs nothing.
    st.fragment(live_probes, run_every=POLL_S if active else None)(ws, dataset.id, active)
    ranked_table(ws, dataset, draft)
