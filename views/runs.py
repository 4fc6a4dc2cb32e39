"""Runs: every run of the project, compared side by side, each one inspected and exported."""

import streamlit as st

import tl_engine as tle
from dashboard import (
    access,
    calibration_panel,
    charts,
    explain_views,
    formats,
    pages,
    run_views,
    state,
    sweep_panel,
    widgets,
)
from dashboard.text import md_escape, md_escape_frame

EXPORTS = {  # format -> (name, what it is for); models are prepared on request
    "keras": ("Keras (.keras)", "The complete model for Python and Keras 3."),
    "savedmodel": ("SavedModel (.zip)", "TensorFlow Serving, TF.js and other converters."),
    "tflite": ("TFLite", "Phones and edge devices, float32."),
    "tflite-quant": ("TFLite quantized",
                     "Smaller (int8 weights), float32 in and out; probabilities shift a little."),
    "labels": ("labels.txt", "Class names, one per line, in the model's output order."),
    "card": ("Model card (JSON)", "Backbone, training, data, metrics and input spec."),
}
INSTANT = ("labels", "card")  # small files, ready at once

st.title("Runs")
project = state.require_project()
ws = state.workspace()

if flash := st.session_state.pop("runs_flash", None):
    st.success(flash, icon=":material/delete:")

runs = tle.list_runs(ws, project)
if not runs:
    st.info("No runs in this project yet.")
    st.page_link(pages.TRAINING, label="Start one on Training",
                 icon=":material/model_training:")
    sweep_panel.render(ws, project, state.current_dataset(project), state.spec_draft())
    st.stop()

active = [r for r in runs if r.is_active]


def watch_active(seen: tuple[tuple[str, str], ...]) -> None:
    """While runs are queued or training, the page redraws itself when one starts or ends,
    or its worker dies (noticed here, as every reader of a running run notices it)."""
    now = tle.active_runs(ws, project)
    run_views.rerun_if_a_worker_died(ws, now)
    if tuple((r.id, str(r.status)) for r in now) != seen:
        st.rerun()


if active:
    with st.container(border=True):
        st.markdown(f"**{len(active)} run{'s' if len(active) > 1 else ''} queued or training:** "
                    + ", ".join(md_escape(f"{r.id} ({r.status})") for r in active))
        st.page_link(pages.TRAINING, label="Follow progress on Training",
                     icon=":material/model_training:", query_params={"project": project})
    st.fragment(watch_active, run_every=2)(tuple((r.id, str(r.status)) for r in active))

dataset_names = {d.id: d.name for d in tle.list_datasets(ws, project)}
runs_table = run_views.runs_table(runs, ws, dataset_names)
st.dataframe(runs_table, hide_index=True, width="stretch",
             column_config=run_views.runs_columns(runs_table), placeholder="–")

# --- compare ---------------------------------------------------------------------------------
st.header("Compare")
by_id = {r.id: r for r in runs}
finished = [r.id for r in runs if r.status == tle.RunStatus.COMPLETED]
# Compared first: runs on one dataset (the current one, else the newest run's), whose
# accuracies are measured on the same images.
if (current := state.current_dataset(project)) is not None and any(
        by_id[i].dataset_id == current.id for i in finished):
    finished = [i for i in finished if by_id[i].dataset_id == current.id]
elif finished:
    finished = [i for i in finished if by_id[i].dataset_id == by_id[finished[0]].dataset_id]
if "compare_runs" in st.session_state:  # forget runs deleted since (here or elsewhere)
    st.session_state["compare_runs"] = [i for i in st.session_state["compare_runs"] if i in by_id]
compared = st.multiselect(
    "Runs to compare", list(by_id), key="compare_runs",
    # A default beside a value already in the session state draws Streamlit's warning.
    default=None if "compare_runs" in st.session_state else finished[:3],
    format_func=lambda run_id: run_views.run_choice_label(by_id[run_id]),
    placeholder="Choose runs to overlay their curves")
with state.engine_errors():
    chosen = [by_id[run_id] for run_id in compared]
    if chosen:
        curves = {r.id: tle.run_metrics(ws, r.id) for r in chosen}
        st.plotly_chart(charts.training_curves(curves), width="stretch")
        if note := run_views.identical_curves_text(curves):
            st.caption(note)
        evaluations = {r.id: tle.evaluation(ws, r.id).get("val", {}) for r in chosen
                       if r.status == tle.RunStatus.COMPLETED}
        # st.table renders cells as Markdown; file and class names must read as typed.
        st.table(md_escape_frame(run_views.comparison_table(chosen, evaluations,
                                                            dataset_names)))
        if len({r.dataset_id for r in chosen}) > 1:
            st.warning("These runs trained on different datasets: their accuracies are "
                       "measured on different images, so they do not rank the settings.",
                       icon=":material/compare_arrows:")
        if len(chosen) > 1:
            st.caption("Only the settings that differ among these runs are listed.")

sweep_panel.render(ws, project, state.current_dataset(project), state.spec_draft())


def export_panel(run: tle.RunRecord) -> None:
    """Every export format of a completed run, prepared on request."""
    if not access.permit("export", project, run):
        return
    st.caption("Every export takes RGB pixels 0–255 at "
               f"{run.spec.image_size}×{run.spec.image_size} and predicts what this "
               "app predicts; the model card says so in full.")
    # Prepared exports are kept for the run on screen only: models can be large.
    exports = st.session_state.setdefault("exports", {})
    shown = (run.id, run_views.model_version(ws, run.id))  # a replaced model, new exports
    for other in [k for k in exports if k != shown]:
        del exports[other]
    prepared = exports.setdefault(shown, {})
    # Asked-for formats are kept apart from the click: a second Prepare while the first
    # converts restarts the page, and the first is then prepared in that run, not lost.
    wanted = st.session_state.setdefault("exports_wanted", set())
    for fmt, (label, purpose) in EXPORTS.items():
        name_col, purpose_col, action_col = st.columns([2, 4, 2],
                                                       vertical_alignment="center")
        name_col.markdown(f"**{label}**")
        purpose_col.caption(purpose)
        with action_col:
            slot = st.empty()  # the Prepare button, then its spinner, then the download
            if fmt in INSTANT:
                prepared[fmt] = tle.export_bytes(ws, run.id, fmt)
            elif fmt not in prepared and (shown, fmt) not in wanted:
                slot.button("Prepare", key=f"prep_{fmt}", icon=":material/build:",
                            help="Converting can take a few seconds.",
                            on_click=wanted.add, args=((shown, fmt),))
            elif fmt not in prepared:
                with slot, st.spinner(f"Preparing {label}…"):
                    state.device()
                    prepared[fmt] = tle.export_bytes(ws, run.id, fmt)
                wanted.discard((shown, fmt))
            if fmt in prepared:
                name, data = prepared[fmt]
                slot.download_button(
                    f"Download · {formats.format_file_size(len(data))}", data,
                    file_name=name, key=f"dl_{fmt}", icon=":material/download:",
                    type="secondary" if fmt in INSTANT else "primary")


# --- one run ---------------------------------------------------------------------------------
st.header("Run details")
run = run_views.pick_run(
    runs, "Run", key="runs_detail_run", best_default=False,
    format_func=lambda r: f"{run_views.run_choice_label(r)} · {r.status}")

with state.engine_errors():
    st.markdown(f"#### {md_escape(run.id)} &nbsp; {run_views.status_badge(run)}")
    st.caption(md_escape(
        f"{run.spec.backbone} · {run_views.weights_text(run.spec.weights)} weights · "
        f"{run_views.strategy_text(run.spec)} · started by {run_views.started_by(run)} · "
        f"{formats.format_time(run.created_at)}"))
    cols = st.columns([0.25, 0.75], vertical_alignment="center")
    if cols[0].button("Load these settings", key=f"load_{run.id}", icon=":material/replay:",
                      help="Make this run's settings the ones the Model, Freeze strategy and "
                      "Training pages show, to train it again or vary it."):
        state.load_run_settings(run.spec)
        st.session_state["runs_loaded"] = run.id
    if st.session_state.get("runs_loaded") == run.id:
        cols[1].page_link(pages.TRAINING, label="Settings loaded — go to Training",
                          icon=":material/arrow_forward:")
    if run.error:
        st.error(md_escape(run.error))
    if run.is_active:
        st.info("This run is still "
                + ("waiting in the queue." if run.status == tle.RunStatus.QUEUED else "training."))
        st.page_link(pages.TRAINING, label="Follow it on Training",
                     icon=":material/model_training:",
                     query_params={"project": project, "run": run.id})
    elif run.status in tle.runs.RESUMABLE:
        st.page_link(pages.TRAINING, label="Resume it on Training", icon=":material/resume:",
                     query_params={"project": project, "run": run.id})

    if run.status == tle.RunStatus.COMPLETED:
        val = tle.evaluation(ws, run.id)["val"]
        run_views.show_metrics(run_views.detail_metrics(run, val))
        if kept := run_views.weights_caption(run):
            st.caption(kept)
        widgets.show_hints(tle.run_hints(run, tle.run_metrics(ws, run.id)))

        quality, mistakes, calibrated, export, settings = st.tabs(
            ["Confusion & per class", f"Misclassified ({val['n_misclassified']})",
             "Calibration", "Export", "Settings"])
        with quality:
            left, right = st.columns(2)
            left.markdown(f"**Confusion matrix** · {val['n_images']} validation images")
            with left:
                clicked = explain_views.confusion_chart(val, key=f"confusion_{run.id}")
            table = run_views.per_class_table(val)
            right.markdown("**Per class**")
            scores = ["precision", "recall", "f1"]
            # In percent with one decimal each: "percent" alone drops trailing zeros, and
            # 89.7% then stands beside 87.94%.
            right.dataframe(table.assign(**{m: table[m] * 100 for m in scores}),
                            width="stretch", column_config={
                                m: st.column_config.NumberColumn(m, format="%.1f%%")
                                for m in scores})
            right.plotly_chart(run_views.per_class_bar(table), width="stretch")
            explain_views.drill_down(ws, run.id, val, clicked)

        with mistakes:
            wrong = val["misclassified"]
            if not wrong:
                st.success("Every validation image is classified correctly.")
            else:
                if val["n_misclassified"] > len(wrong):
                    st.caption(f"The {len(wrong)} most confident of {val['n_misclassified']} "
                               "mistakes are stored.")
                if st.toggle("Where did the model look? (Grad-CAM)", key=f"cams_{run.id}",
                             help=explain_views.WHY_HELP):
                    explain_views.mistake_cams(ws, run.id, wrong)
                else:
                    shown = run_views.paged(wrong, key=f"mistakes_page_{run.id}", per_page=12)
                    for start in range(0, len(shown), 4):
                        for column, mistake in zip(st.columns(4), shown[start:start + 4],
                                                   strict=False):
                            with column:
                                run_views.mistake_card(ws, mistake)

        with calibrated:
            calibration_panel.show_calibration(ws, run)

        with export:
            export_panel(run)

        with settings:
            st.dataframe(run_views.spec_table(run.spec), hide_index=True)
            summary = run.result
            st.caption(md_escape(f"Dataset {run.dataset_id} · {summary.n_train} "
                                 f"train / {summary.n_val} val images · device "
                                 f"{'?' if summary.device is None else summary.device}"))

    with st.expander("Delete this run"):
        sure = st.checkbox(f"Yes, delete run {md_escape(run.id)}, its model and exports",
                           key=f"confirm_delete_{run.id}")
        if st.button("Delete run", type="primary", disabled=not sure, key="delete_run") and (
                access.permit("delete_run", project, run)):
            tle.delete_run(ws, run.id)
            st.session_state.pop("exports", None)  # prepared for the run just deleted
            state.set_run(None)
            st.session_state["runs_flash"] = f"Deleted run {run.id}."
            st.rerun()
