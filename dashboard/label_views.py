"""The Dataset page's look at the labels: which ones look wrong (with relabel / remove /
keep, saved as a new version of the dataset) and the dataset as a map of its backbone
features. Both come from one `label-issues` job the worker runs; this module only starts
it, follows it and shows what it stored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import streamlit as st

import tl_engine as tle
from dashboard import access, charts, formats, run_views, state
from dashboard.text import md_escape, plotly_text

SHOWN_SUSPECTS = 48
SUSPECT_COLUMNS = 4
CHOICES = ("Keep", "Relabel", "Remove")
MAP_KEY = "dataset_map"


# --- the job ----------------------------------------------------------------------------


def _start(ws: tle.Workspace, project: str, dataset: tle.Dataset, force: bool = False) -> None:
    if not access.permit("analyse_dataset", project):
        return
    draft = state.spec_draft()
    spec = tle.RunSpec(backbone=draft.get("backbone", "MobileNetV2-0.35"),
                       weights=draft.get("weights", "imagenet"),
                       image_size=int(draft.get("image_size") or 0),
                       seed=int(draft.get("seed", 42)))
    with state.engine_errors():
        tle.submit_label_issues(ws, project, dataset.id, spec, started_by=state.user_name(),
                                force=force)
        st.rerun()


def _progress_text(run: tle.RunRecord) -> str:
    progress = run.progress
    if run.status == tle.RunStatus.QUEUED:
        return "Waiting for the worker (another job is running)…"
    if progress.phase == "features":
        done, total = progress.images_done, progress.images_total
        eta = progress.eta_s
        text = f"Backbone features: {done} / {total} images" if total else "Backbone features…"
        return text + (f" · about {formats.format_duration(eta)} left" if eta else "")
    return "Fitting the probe on 5 folds and looking for label issues…"


def _follow(ws: tle.Workspace, project: str, run_id: str) -> None:
    """Live progress of the job until it ends; then the whole page shows its result."""
    run = tle.get_run(ws, run_id)
    if not run.is_active:
        st.rerun()
    run_views.rerun_if_a_worker_died(ws, [run])
    st.progress(float(run.progress.fraction or 0.0), text=_progress_text(run))
    if access.guarded_button(st, "Cancel", "cancel_run", project, run,
                             key="label_issues_cancel", icon=":material/cancel:"):
        tle.cancel_run(ws, run_id)
        st.rerun()


def label_issues_section(ws: tle.Workspace, project: str, dataset: tle.Dataset
                         ) -> tle.RunRecord | None:
    """Start, follow or show the dataset's label-issues job; returns it when completed."""
    st.subheader("Which labels are wrong")
    if dataset.parent:
        _version_note(ws, dataset)
    job = tle.latest_label_issues(ws, dataset.id)
    if job is None:
        st.caption("A linear probe on the backbone's features (the backbone, weights and size "
                   "of your Model page) predicts each image without seeing its label; images "
                   "whose label the probe confidently disagrees with are listed with the "
                   "label it suggests (confident learning). It also draws the map below.")
        if access.guarded_button(st, "Find label issues", "analyse_dataset", project,
                                 key="label_issues_start", type="primary",
                                 icon=":material/search:"):
            _start(ws, project, dataset)
        return None
    if job.is_active:
        st.fragment(_follow, run_every=1.5)(ws, project, job.id)
        return None
    if job.status != tle.RunStatus.COMPLETED:
        st.warning(f"The last search {job.status}"
                   + (f": {md_escape(job.error)}" if job.error else "."),
                   icon=":material/warning:")
        if st.button("Try again", key="label_issues_retry"):
            _start(ws, project, dataset, force=True)
        return None
    _suspects(ws, project, dataset, job)
    return job


def _version_note(ws: tle.Workspace, dataset: tle.Dataset) -> None:
    parent = dataset.parent or {}
    try:
        named = f"“{md_escape(tle.load_dataset(ws, parent['id']).name)}”"
    except tle.TLError:
        named = "a dataset deleted since"
    st.caption(f"Version {parent.get('version', 2)}: made from {named} ({parent['id']}) "
               f"with {len(parent.get('relabelled', {}))} image(s) relabelled and "
               f"{len(parent.get('removed', []))} removed. That dataset and its runs are "
               "unchanged.")


# --- suspects ----------------------------------------------------------------------------


def _choice_key(dataset: tle.Dataset, suspect: tle.Suspect) -> str:
    return f"suspect_{dataset.id}_{suspect.hash[:16]}"


def _suspects(ws: tle.Workspace, project: str, dataset: tle.Dataset,
              job: tle.RunRecord) -> None:
    summary = job.summary
    suspects = tle.suspects_of(job)
    cols = st.columns(4)
    cols[0].metric("Suspects", len(suspects),
                   help="Images whose label the probe confidently disagrees with.")
    cols[1].metric("Probe accuracy", formats.format_percent(summary.get("probe_accuracy")),
                   help="Out-of-fold accuracy of a linear probe against the given labels.")
    cols[2].metric("Estimated wrong labels", formats.format_percent(summary.get("noise_share")))
    cols[3].metric("Took", formats.format_duration(summary.get("seconds")))
    spec = job.spec
    st.caption(f"{md_escape(spec.backbone)} · {md_escape(spec.weights)} weights · "
               f"{spec.image_size} px · {summary.get('features_computed', 0)} images through "
               f"the backbone, {summary.get('features_reused', 0)} from the feature cache.")
    if not suspects:
        st.success("No likely label issues: the probe agrees with the labels it is confident "
                   "about.", icon=":material/check_circle:")
        return
    shown = suspects[:SHOWN_SUSPECTS]
    st.caption("Most suspicious first. For each image: keep its label, relabel it to the "
               "suggested class, or remove it; then save a new version of the dataset.")
    st.html("<style>.st-key-suspects img {aspect-ratio: 1 / 1; object-fit: cover;}</style>")
    with st.container(key="suspects"):
        for row in range(0, len(shown), SUSPECT_COLUMNS):
            cols = st.columns(SUSPECT_COLUMNS)
            for col, suspect in zip(cols, shown[row:row + SUSPECT_COLUMNS], strict=False):
                with col.container(border=True):
                    _suspect_card(ws, dataset, suspect)
    if len(suspects) > len(shown):
        st.caption(f"…and {len(suspects) - len(shown)} less suspicious ones.")
    relabel, remove = choices(dataset, shown)
    cols = st.columns([0.35, 0.65], vertical_alignment="center")
    save = cols[0].button("Save as a new version", key="suspects_save", type="primary",
                          disabled=not (relabel or remove), icon=":material/save:")
    cols[1].caption(f"{len(relabel)} to relabel, {len(remove)} to remove. The current "
                    "dataset stays as it is, with its runs.")
    if save and access.permit("revise_dataset", project):
        with state.engine_errors():
            revised = tle.revise_dataset(ws, dataset.id, relabel=relabel, remove=remove)
            state.set_dataset(revised.id)
            st.session_state["dataset_flash"] = (
                f"Saved “{md_escape(revised.name)}”: {len(relabel)} relabelled, "
                f"{len(remove)} removed, {len(revised.records)} images.")
            st.rerun()


def _suspect_card(ws: tle.Workspace, dataset: tle.Dataset, suspect: tle.Suspect) -> None:
    path = ws.image_path(suspect.hash)
    if path.is_file():
        st.image(str(path), width="stretch")
    st.markdown(f"**{md_escape(suspect.given)}** → **{md_escape(suspect.suggested)}**?")
    st.caption(f"{md_escape(suspect.filename)} · score {suspect.score:.2f}")
    st.radio("What to do", CHOICES, key=_choice_key(dataset, suspect), horizontal=True,
             label_visibility="collapsed",
             format_func=lambda c: f"To {suspect.suggested}" if c == "Relabel" else c)


def choices(dataset: tle.Dataset, suspects: Sequence[tle.Suspect]
            ) -> tuple[dict[str, str], set[str]]:
    """The relabels (hash -> suggested label) and removals chosen on the cards."""
    relabel: dict[str, str] = {}
    remove: set[str] = set()
    for suspect in suspects:
        choice = st.session_state.get(_choice_key(dataset, suspect), "Keep")
        if choice == "Relabel":
            relabel[suspect.hash] = suspect.suggested
        elif choice == "Remove":
            remove.add(suspect.hash)
    return relabel, remove


# --- the map -------------------------------------------------------------------------------


def dataset_map_figure(points: Sequence[Mapping[str, Any]], classes: Sequence[str],
                       explained: Sequence[float] = ()) -> go.Figure:
    """One trace per class, then the suspects and the outliers drawn over them with their
    own markers. customdata holds each point's image hash, for the click."""
    figure = go.Figure()

    def hover(p: Mapping[str, Any]) -> str:
        return f"{plotly_text(p['file'])}<br>{plotly_text(p['label'])}"

    for i, label in enumerate(classes):
        members = [p for p in points if p["label"] == label]
        figure.add_trace(go.Scatter(
            x=[p["x"] for p in members], y=[p["y"] for p in members], mode="markers",
            name=plotly_text(label), customdata=[p["hash"] for p in members],
            hovertext=[hover(p) for p in members], hoverinfo="text",
            marker={"size": 7, "color": charts.PALETTE[i % len(charts.PALETTE)],
                    "opacity": 0.75}))
    marks = (("suspect", "suspected wrong label", "x", "#C92A2A"),
             ("outlier", "outlier in its class", "diamond-open", "#212529"))
    for key, name, symbol, colour in marks:
        marked = [p for p in points if p.get(key)]
        figure.add_trace(go.Scatter(
            x=[p["x"] for p in marked], y=[p["y"] for p in marked], mode="markers", name=name,
            customdata=[p["hash"] for p in marked], hovertext=[hover(p) for p in marked],
            hoverinfo="text", marker={"size": 12, "symbol": symbol, "color": colour,
                                      "line": {"width": 2, "color": colour}}))
    shares = list(explained) + [0.0, 0.0]
    figure.update_layout(
        height=460, margin={"l": 10, "r": 10, "t": 10, "b": 10}, clickmode="event+select",
        legend={"orientation": "h", "y": -0.12},
        xaxis_title=f"1st principal component ({shares[0]:.0%} of the variance)",
        yaxis_title=f"2nd ({shares[1]:.0%})")
    return figure


def dataset_map_section(ws: tle.Workspace, dataset: tle.Dataset,
                        job: tle.RunRecord | None) -> None:
    st.subheader("The dataset as a map")
    stored = tle.map_of(ws, job) if job is not None else None
    if not stored:
        st.caption("Each image as a point, placed by its backbone features: similar images "
                   "land close together. Press “Find label issues” above to draw it.")
        return
    st.caption("Each image as a point, placed by its backbone features (PCA): similar images "
               "land close together. ✕ marks a suspected wrong label, ◇ an image far from "
               "the rest of its class. Click a point to see the image.")
    figure = dataset_map_figure(stored["points"], dataset.classes, stored.get("explained", ()))
    event = st.plotly_chart(figure, width="stretch", on_select="rerun",
                            selection_mode="points", key=f"{MAP_KEY}_{dataset.id}")
    picked = _picked_hash(event)
    by_hash = {p["hash"]: p for p in stored["points"]}
    if picked in by_hash:
        point = by_hash[picked]
        cols = st.columns([0.22, 0.78])
        path = ws.image_path(picked)
        if path.is_file():
            cols[0].image(str(path), width="stretch")
        notes = (["suspected wrong label"] if point.get("suspect") else []) + (
            [f"outlier (z {point['outlier_z']:.1f})"] if point.get("outlier") else [])
        cols[1].markdown(f"**{md_escape(point['label'])}** · {md_escape(point['file'])}")
        if notes:
            cols[1].caption(" · ".join(notes))


def _picked_hash(event: Any) -> str | None:
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points:
        data = point.get("customdata")
        if isinstance(data, list):
            data = data[0] if data else None
        if isinstance(data, str):
            return data
    return None
