"""Training: hyper-parameters, start a run, and watch it live. The run trains in a worker
process; this page only writes the request and reads the store, so a refresh, a closed
tab or a second browser all show the same job."""

from __future__ import annotations

import streamlit as st

import tl_engine as tle
from dashboard import access, controls, lr_find_panel, pages, run_views, state, widgets
from dashboard.formats import format_duration, format_params, ordinal
from dashboard.text import md_escape

RECENT_RUNS = 30

ws = state.workspace()
project = state.require_project()
dataset = state.current_dataset(project)
draft = state.spec_draft()

st.title("Training")
st.caption("Runs train in a background worker, one at a time: leave this page, close the tab "
           "or watch from another browser — the run carries on.")
if flash := st.session_state.pop("training_flash", None):
    kind, text = flash
    getattr(st, kind)(text, icon=":material/info:" if kind == "info" else ":material/check_circle:")
access.role_note(project, "train", "start training runs")
if "worker_prewarmed" not in st.session_state and access.can("train", project):
    # Once per session: a worker started now has TensorFlow loaded and the default backbone
    # built by the time the settings are chosen.
    st.session_state["worker_prewarmed"] = True
    tle.prewarm_worker(ws)


# --- the settings form ---------------------------------------------------------------


def settings_form(dataset: tle.Dataset) -> None:
    plan = tle.phases(tle.RunSpec.from_dict(draft))
    overrides: dict[str, dict[str, object]] = {
        "val_split": {"disabled": dataset.has_given_val},
        "test_split": {"disabled": dataset.has_given_test},
    }
    if len(plan) > 1:
        overrides["epochs"] = {
            "label": "Epochs of the last phase",
            "more_help": f"The last phase: {plan[-1].title.lower()}. The earlier phases "
            f"({sum(p.epochs for p in plan[:-1])} epochs) are set on the Freeze strategy page."}
    with st.form("train_form"):
        values = controls.grid(controls.page_settings("training", draft), draft, columns=3,
                               overrides=overrides)
        if dataset.has_given_test:
            st.caption("This dataset brings its own train/val/test split: it is used as is.")
        elif dataset.has_given_val:
            st.caption("This dataset brings its own train/val split: its validation part is "
                       "used as is; a test split is carved out of its training part.")
        force = st.checkbox("Force retrain", key="train_force",
                            help="Train again even if an identical run exists.")
        refused = access.refusal("train", project)  # told before they try, not on click
        submitted = st.form_submit_button("Start training", type="primary",
                                          icon=":material/play_arrow:",
                                          disabled=refused is not None,
                                          help=md_escape(refused) if refused else None)
    if not submitted or not access.permit("train", project):
        return
    s = st.session_state
    state.update_spec(**values)
    weights = state.spec_draft()["weights"]
    if weights not in ("imagenet", "none") and tle.find_weight_file(weights) is None:
        # Loaded from an older run, say: the page trains only from the administrator's
        # weights folder, and never says whether another path exists on the server.
        st.error("The weights file of these settings is not offered on this server: choose "
                 "the starting weights on the Model page.", icon=":material/warning:")
        return
    with state.engine_errors():
        spec = tle.RunSpec.from_dict(state.spec_draft())
        submission = tle.submit_run(ws, project, dataset.id, spec, force=force,
                                    started_by=state.user_name())
        state.set_run(submission.run_id)
        state.start_device_setup()  # this server loads the run's model once it completes
        if submission.cached:
            s["training_flash"] = ("info", "An identical run already exists — showing it. "
                                   "Tick “Force retrain” to train it again.")
        elif submission.status == tle.RunStatus.RUNNING:
            s["training_flash"] = ("info", "An identical run is already training — showing it.")
        else:
            # What happened, not what is: the banner outlives the queue (the panel below
            # refreshes on its own), so it must stay true once the run is training.
            s["training_flash"] = ("success", f"Run {submission.run_id} was queued.")
        s.pop("train_force", None)  # one run per tick, not every run from now on
        st.rerun()


if dataset is None:
    st.info("Add a dataset first: training needs labelled photos.")
    st.page_link(pages.DATASET, label="Go to Dataset", icon=":material/photo_library:")
    st.stop()

left, right = st.columns([0.64, 0.36], gap="medium")
with left:
    settings_form(dataset)
    lr_find_panel.render(ws, project, dataset, state.spec_draft())
with right, st.container(border=True):
    st.markdown(f"**Dataset** &nbsp; {md_escape(dataset.name)} · {len(dataset.records)} images · "
                f"{len(dataset.classes)} classes")
    widgets.show_spec(state.spec_draft(), dataset.has_given_val, dataset.has_given_test)
    widgets.show_hints(tle.spec_hints(tle.RunSpec.from_dict(state.spec_draft())))
    plan = tle.phases(tle.RunSpec.from_dict(state.spec_draft()))
    if any(phase.cached_features for phase in plan):
        which = "" if len(plan) == 1 else " in the head phase"
        st.caption(f":material/bolt: Frozen backbone without augmentation{which}: each "
                   "image's features are computed once and cached, so epochs take seconds.")
    if any(phase.cached_activations for phase in plan):
        st.caption(":material/bolt: Only the top of the backbone trains, without augmentation: "
                   "the frozen bottom runs once per image and its activations are cached.")
    on_pixels = [phase for phase in plan if phase.pixels_reason]
    if on_pixels:  # one spec, one reason: every such phase has the same
        titles = ", ".join(phase.title for phase in on_pixels)
        st.caption(f":material/info: {titles}: the whole backbone runs on every image every "
                   f"epoch, not on cached activations: {on_pixels[0].pixels_reason}.")
    # A horizontal container sizes each link to its label and wraps: nothing is clipped.
    with st.container(horizontal=True, gap="small"):
        st.page_link(pages.DATASET, label="Dataset", icon=":material/photo_library:")
        st.page_link(pages.MODEL, label="Model", icon=":material/memory:")
        st.page_link(pages.FREEZE, label="Freeze strategy", icon=":material/ac_unit:")


# --- which run to show ---------------------------------------------------------------
# A tab shows the run its user started or picked, never whichever job happens to be
# active: other people's runs appear in the queue list, with who started them.

runs = tle.list_runs(ws, project)
by_id = {run.id: run for run in runs}
shown = by_id.get(state.current_run_id() or "")
me = state.user_name()
if shown is None and me:
    shown = next((r for r in runs if r.started_by == me), None)  # newest first
active_ids = tuple(r.id for r in reversed(runs) if r.is_active)  # oldest first, as queued

st.divider()
if not runs:
    st.subheader("Runs")
    st.caption("No run in this project yet: set the options above and press Start training.")
else:
    choices = [run.id for run in runs[:RECENT_RUNS]]
    if shown is not None and shown.id not in choices:
        choices.append(shown.id)
    labels = {run_id: widgets.run_label(by_id[run_id]) for run_id in choices}
    # A keyed selectbox keeps its old option labels; a key that changes with them does not.
    pick_key = f"training_run_pick_{hash(tuple(labels.values())) & 0xFFFFFFFF:x}"
    st.session_state[pick_key] = shown.id if shown else None
    st.selectbox("Run", choices, key=pick_key, format_func=labels.get,
                 placeholder="Choose a run to show",
                 on_change=lambda: state.set_run(st.session_state[pick_key]))


# --- live and final views ------------------------------------------------------------


def eta_text(progress: tle.Progress) -> str:
    parts = [progress.phase_title
             or widgets.PHASE_NAMES.get(progress.phase or "", "Working")]
    if progress.pass_name:
        passes = 1 if progress.passes is None else progress.passes
        of = f" ({progress.pass_index} of {passes})" if passes > 1 else ""
        parts.append(f"{progress.pass_name}{of}")
    if progress.images_total:
        parts.append(f"{progress.images_done or 0} / {progress.images_total} images")
    elif progress.epochs:
        parts.append(f"epoch {progress.epoch or 0} / {progress.epochs}")
        if progress.steps:
            parts.append(f"step {progress.step or 0} / {progress.steps}")
    if progress.images_per_s:
        parts.append(f"{progress.images_per_s:.0f} images/s")
    if progress.eta_s is not None:
        scope = " in this phase" if progress.eta_scope == "phase" else ""
        parts.append(f"about {format_duration(progress.eta_s)} left{scope}")
    return " · ".join(parts)


def queue_list(active: list[tle.RunRecord], shown_id: str | None) -> None:
    """Everyone's queued and running runs in this project, in the order they train."""
    others = [r for r in active if r.id != shown_id]
    if not others:
        return
    with st.container(border=True):
        st.markdown(f"**Queue** · {len(active)} run{'s' if len(active) > 1 else ''} "
                    "queued or training in this project")
        for run in others:
            cols = st.columns([0.8, 0.2], vertical_alignment="center")
            where = "training" if run.status == tle.RunStatus.RUNNING else "waiting"
            cols[0].markdown(
                f"{widgets.STATUS_ICONS[run.status]} {run.id} · {where} · "
                f"{md_escape(run.spec.backbone)} · started by "
                f"{md_escape(run_views.started_by(run))}")
            if cols[1].button("Show", key=f"show_{run.id}"):
                state.set_run(run.id)
                st.rerun()


def show_queued(run: tle.RunRecord) -> None:
    waiting_ahead = (tle.queue_position(ws, run.id) or 1) - 1
    training = tle.running_run(ws)
    if training is None:
        # Nobody trains: make sure a worker is on its way (cheap when one already is).
        tle.ensure_worker(ws)
        st.info(f"{ordinal(waiting_ahead + 1)} in queue — starting the worker "
                "(loading TensorFlow takes a few seconds)…", icon=":material/schedule:")
    elif training.project not in access.visible_projects():
        # One worker serves every project: say that it is busy, not what with or for whom.
        st.info(f"{ordinal(waiting_ahead + 2)} in queue — a run of another project "
                "is training.", icon=":material/schedule:")
    else:
        # The run in training counts as first in the queue, as people read a queue.
        who = md_escape(training.started_by or "someone")
        st.info(f"{ordinal(waiting_ahead + 2)} in queue — another run is training: "
                f"{md_escape(training.spec.backbone)} by {who}.", icon=":material/schedule:")


def show_running(run: tle.RunRecord) -> None:
    progress = run.progress
    if (silent := run.silent_for()) is not None:
        # Engine-made text (a run id, a process number): its commands shown as code.
        st.warning(run.stalled_message(silent), icon=":material/hourglass_disabled:")
    if progress == tle.Progress():  # nothing reported yet
        st.progress(0.0, text="Preparing: loading the backbone and the images…")
    else:
        st.progress(min(1.0, float(progress.fraction or 0.0)), text=eta_text(progress))
        logs = progress.logs or {}
        cols = st.columns(4)
        cols[0].metric("Elapsed", format_duration(progress.elapsed_s))
        eta = progress.eta_s
        cols[1].metric("Time left", "estimating…" if eta is None else format_duration(eta))
        cols[2].metric("Loss (batch)", f"{logs['loss']:.3f}" if "loss" in logs else "–")
        cols[3].metric("Accuracy (batch)",
                       f"{logs['accuracy']:.1%}" if "accuracy" in logs else "–")
    if run.cancel_requested:
        st.caption("Cancelling: the run stops after the current batch.")


def live_panel(shown_id: str | None, shown_status: str | None,
               seen_active: tuple[str, ...]) -> None:
    """The queue and the shown run while anything in this project is queued or running.
    Each refresh reads only the active runs and the shown run's metrics."""
    active = tle.active_runs(ws, project)
    run_views.rerun_if_a_worker_died(ws, active)  # then shown as interrupted, with Resume
    if tuple(r.id for r in active) != seen_active:
        st.rerun()  # a run started or finished: redraw the whole page once, in the new state
    run = next((r for r in active if r.id == shown_id), None)
    if shown_status in tle.runs.ACTIVE and (run is None or run.status != shown_status):
        st.rerun()
    queue_list(active, shown_id)
    if run is None:
        return
    with st.container(border=True):
        cols = st.columns([0.8, 0.2], vertical_alignment="center")
        cols[0].markdown(f"**{widgets.STATUS_ICONS[run.status]} {run.status.capitalize()}** · "
                         f"{md_escape(run.spec.backbone)} · started by "
                         f"{md_escape(run_views.started_by(run))}")
        if access.guarded_button(cols[1], "Cancel run", "cancel_run", project, run,
                                 disabled=run.cancel_requested, key=f"cancel_{run.id}",
                                 icon=":material/stop:"):
            with state.engine_errors():
                tle.cancel_run(ws, run.id)
                st.rerun()
        if run.status == tle.RunStatus.QUEUED:
            show_queued(run)
        else:
            show_running(run)
    metrics = tle.run_metrics(ws, run.id)
    if metrics:
        st.plotly_chart(widgets.curves(run.id, metrics), width="stretch",
                        key=f"live_curves_{run.id}")
        if (overfit := tle.overfitting(metrics)) is not None:
            widgets.show_hints([overfit.hint])


def use_head_weights(run_id: str) -> None:
    if not access.permit("change_run", project, tle.get_run(ws, run_id)):
        return
    with state.engine_errors():
        tle.use_head_phase_weights(ws, run_id)
        st.session_state["training_flash"] = ("success", "The model now holds the head-phase "
                                              "weights; predictions and exports use them.")


def final_panel(run: tle.RunRecord) -> None:
    who = md_escape(run_views.started_by(run))
    if run.status == tle.RunStatus.COMPLETED:
        if run_views.just_finished(run):
            run_views.preload_predictor(ws, run.id)
        summary = run.result
        kept = run_views.weights_kept_text(run)
        st.success(f"Completed — validation accuracy **{run.val_accuracy:.1%}**"
                   + (f" · {kept}" if kept else "")
                   + f" · {md_escape(run.spec.backbone)} · started by {who}",
                   icon=":material/check_circle:")
        cols = st.columns(5)
        cols[0].metric("Val accuracy", f"{run.val_accuracy:.1%}", help=kept)
        final = summary.final_val_accuracy
        cols[1].metric("Val accuracy, last epoch", "–" if final is None else f"{final:.1%}")
        test = summary.test_accuracy
        cols[2].metric("Test accuracy", "–" if test is None else f"{test:.1%}",
                       help=None if test is not None else "No test split: set one in the "
                       "form above for an untouched holdout.")
        cols[3].metric("Epochs · time", f"{run.epochs_run} · "
                       f"{format_duration(run.seconds)}")
        cols[4].metric("Trainable params", format_params(summary.trainable_params))
        if caption := run_views.weights_caption(run):
            st.caption(caption)
        for note in summary.notes:
            st.caption(f":material/info: {md_escape(note)}")
    elif run.status == tle.RunStatus.FAILED:
        st.error(f"The run failed: {md_escape(run.error)}", icon=":material/error:")
    else:
        st.warning(f"The run was {run.status}." + (f" {md_escape(run.error)}" if run.error
                                                   else ""), icon="⏸️")
    metrics = tle.run_metrics(ws, run.id)
    if run.status == tle.RunStatus.COMPLETED:
        widgets.show_hints(tle.run_hints(run, metrics))
        result = run.result
        if result.head_model_available and result.weights_from != "head":
            st.button("Use the head-phase weights", key=f"use_head_{run.id}",
                      icon=":material/undo:", on_click=use_head_weights, args=(run.id,),
                      help="Make the model the one from the end of the head phase (the "
                      "fine-tuned one is kept beside it).")
        elif result.weights_from == "head":
            st.caption("This run's model holds the head-phase weights; the fine-tuned model "
                       f"reached {result.finetuned_val_accuracy or 0:.1%}.")
    if metrics:
        st.plotly_chart(widgets.curves(run.id, metrics), width="stretch",
                        key=f"curves_{run.id}")
    cols = st.columns(4, vertical_alignment="center")
    if run.status == tle.RunStatus.COMPLETED:
        cols[0].page_link(pages.PREDICTION, label="Try it on new photos",
                          icon=":material/image_search:")
        cols[1].page_link(pages.RUNS, label="Compare runs", icon=":material/leaderboard:")
    elif cols[0].button("Resume", key=f"resume_{run.id}", icon=":material/play_arrow:",
                        type="primary") and access.permit("resume_run", project, run):
        with state.engine_errors():
            tle.resume_run(ws, run.id)
            st.rerun()
    cols[2].button("Load these settings", key=f"load_{run.id}",
                   on_click=state.load_run_settings, args=(run.spec,),
                   help="Copy this run's settings into the Model, Freeze and Training pages.")
    with st.expander("Settings of this run"):
        try:  # whose split the run used: the dataset's own, or the one it made
            trained_on = tle.load_dataset(ws, run.dataset_id)
        except tle.TLError:
            trained_on = None
        widgets.show_spec(run.spec.to_dict(), bool(trained_on and trained_on.has_given_val),
                          bool(trained_on and trained_on.has_given_test))


# Refresh only while something in this project is queued or running: an idle tab costs
# the server nothing.
live = st.fragment(live_panel, run_every=2 if active_ids else None)
live(shown.id if shown else None, shown.status if shown else None, active_ids)
if shown is not None and not shown.is_active:
    final_panel(shown)
