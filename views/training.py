"""Training: hyper-parameters, start a run, and watch it live. The run trains in a worker
process; this page only writes the request and reads the store, so a refresh, a closed
tab or a second browser all show the same job."""

from __future__ import annotations

from typing import Any

import streamlit as st

import tl_engine as tle
from dashboard import state, widgets

LEARNING_RATES = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1]
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


# --- the settings form ---------------------------------------------------------------


def settings_form(dataset: tle.Dataset) -> None:
    given_split = dataset.has_given_split
    rates = sorted(set(LEARNING_RATES) | {float(draft["learning_rate"])})
    for key, value in {
        "train_epochs": int(draft["epochs"]), "train_batch": int(draft["batch_size"]),
        "train_lr": float(draft["learning_rate"]), "train_optimizer": draft["optimizer"],
        "train_augment": list(draft["augment"]), "train_patience": int(draft["early_stopping"]),
        "train_reduce_lr": bool(draft["reduce_lr"]),
        "train_class_weights": bool(draft["class_weights"]),
        "train_smoothing": float(draft["label_smoothing"]), "train_val": float(draft["val_split"]),
        "train_test": float(draft["test_split"]), "train_seed": int(draft["seed"]),
    }.items():
        widgets.seed(key, value)

    with st.form("train_form"):
        cols = st.columns(4)
        epochs_label = "Fine-tune epochs" if draft["strategy"] == "two-phase" else "Epochs"
        cols[0].number_input(epochs_label, 1, 1000, key="train_epochs")
        cols[1].number_input("Batch size", 1, 4096, key="train_batch")
        cols[2].selectbox("Optimizer", tle.spec.OPTIMIZERS, key="train_optimizer")
        cols[3].select_slider("Learning rate", rates, key="train_lr", format_func="{:g}".format)
        cols = st.columns([0.5, 0.25, 0.25])
        cols[0].multiselect("Augmentation", tle.AUGMENTATIONS, key="train_augment",
                            placeholder="none",
                            help="Random changes to training images each epoch. With a frozen "
                            "backbone and no augmentation, features are computed once and "
                            "cached: much faster epochs.")
        cols[1].number_input("Early stopping", 0, 100, key="train_patience",
                             help="Patience: stop after this many epochs without a better "
                             "val accuracy. 0 = off.")
        cols[2].slider("Label smoothing", 0.0, 0.3, step=0.05, key="train_smoothing")
        cols = st.columns([0.375, 0.375, 0.25])
        cols[0].slider("Validation split", 0.05, 0.5, step=0.05, key="train_val",
                       disabled=given_split)
        cols[1].slider("Test split", 0.0, 0.4, step=0.05, key="train_test", disabled=given_split)
        cols[2].number_input("Seed", 0, 2**31 - 1, key="train_seed",
                             help="Same seed, same split and same starting point.")
        if given_split:
            st.caption("This dataset brings its own train/val split, so the split sliders "
                       "do not apply.")
        cols = st.columns(3)
        cols[0].checkbox("Reduce LR on plateau", key="train_reduce_lr")
        cols[1].checkbox("Class weights", key="train_class_weights",
                         help="Weigh rare classes up: for imbalanced datasets.")
        force = cols[2].checkbox("Force retrain", key="train_force",
                                 help="Train again even if an identical run exists.")
        submitted = st.form_submit_button("Start training", type="primary",
                                          icon=":material/play_arrow:")
    if not submitted:
        return
    s = st.session_state
    state.update_spec(
        epochs=int(s.train_epochs), batch_size=int(s.train_batch),
        learning_rate=float(s.train_lr), optimizer=s.train_optimizer,
        augment=list(s.train_augment), early_stopping=int(s.train_patience),
        reduce_lr=bool(s.train_reduce_lr), class_weights=bool(s.train_class_weights),
        label_smoothing=float(s.train_smoothing), val_split=float(s.train_val),
        test_split=float(s.train_test), seed=int(s.train_seed),
    )
    with state.engine_errors():
        spec = tle.RunSpec.from_dict(state.spec_draft())
        submission = tle.submit_run(ws, project, dataset.id, spec, force=force,
                                    started_by=state.user_name())
        state.set_run(submission.run_id)
        if submission.cached:
            s["training_flash"] = ("info", "An identical run already exists — showing it. "
                                   "Tick “Force retrain” to train it again.")
        elif submission.status == "running":
            s["training_flash"] = ("info", "An identical run is already training — showing it.")
        else:
            s["training_flash"] = ("success", f"Run {submission.run_id} is queued.")
        s.pop("train_force", None)  # one run per tick, not every run from now on
        st.rerun()


if dataset is None:
    st.info("Add a dataset first: training needs labelled photos.")
    st.page_link("views/dataset.py", label="Go to Dataset", icon=":material/photo_library:")
    st.stop()

left, right = st.columns([0.64, 0.36], gap="medium")
with left:
    settings_form(dataset)
with right, st.container(border=True):
    st.markdown(f"**Dataset** &nbsp; {dataset.name} · {len(dataset.records)} images · "
                f"{len(dataset.classes)} classes")
    widgets.show_spec(state.spec_draft(), dataset.has_given_split)
    if tle.RunSpec.from_dict(state.spec_draft()).uses_feature_cache:
        st.caption(":material/bolt: Frozen backbone without augmentation: each image's "
                   "features are computed once and cached, so epochs take seconds.")
    cols = st.columns(3)
    cols[0].page_link("views/dataset.py", label="Dataset", icon=":material/photo_library:")
    cols[1].page_link("views/model.py", label="Model", icon=":material/memory:")
    cols[2].page_link("views/freeze.py", label="Freezing", icon=":material/ac_unit:")


# --- which run to show ---------------------------------------------------------------

runs = tle.list_runs(ws, project)
by_id = {run.id: run for run in runs}
shown = by_id.get(state.current_run_id() or "")
if shown is None and runs:
    # Nothing chosen in this browser: follow the project's job (running before queued).
    active = sorted((r for r in runs if r.is_active), key=lambda r: r.status != "running")
    shown = active[0] if active else runs[0]

st.divider()
if shown is None:
    st.subheader("Runs")
    st.caption("No run in this project yet: set the options above and press Start training.")
else:
    choices = [run.id for run in runs[:RECENT_RUNS]]
    if shown.id not in choices:
        choices.append(shown.id)
    labels = {run_id: widgets.run_label(by_id[run_id]) for run_id in choices}
    # A keyed selectbox keeps its old option labels; a key that changes with them does not.
    pick_key = f"training_run_pick_{hash(tuple(labels.values())) & 0xFFFFFFFF:x}"
    st.session_state[pick_key] = shown.id
    st.selectbox("Run", choices, key=pick_key, format_func=labels.get,
                 on_change=lambda: state.set_run(st.session_state[pick_key]))


# --- live and final views ------------------------------------------------------------


def eta_text(progress: dict[str, Any]) -> str:
    parts = [widgets.PHASE_NAMES.get(progress.get("phase", ""), "Working")]
    if progress.get("epochs"):
        parts.append(f"epoch {progress.get('epoch', 0)} / {progress['epochs']}")
    if progress.get("steps"):
        parts.append(f"step {progress.get('step', 0)} / {progress['steps']}")
    if progress.get("eta_s") is not None:
        parts.append(f"about {widgets.format_duration(progress['eta_s'])} left")
    return " · ".join(parts)


def show_queued(run: tle.RunRecord) -> None:
    waiting_ahead = (tle.queue_position(ws, run.id) or 1) - 1
    training = tle.running_run(ws)
    if training is None:
        # Nobody trains: make sure a worker is on its way (cheap when one already is).
        tle.ensure_worker(ws)
        st.info(f"{widgets.ordinal(waiting_ahead + 1)} in queue — starting the worker "
                "(loading TensorFlow takes a few seconds)…", icon=":material/schedule:")
    else:
        # The run in training counts as first in the queue, as people read a queue.
        who = training.started_by or "someone"
        st.info(f"{widgets.ordinal(waiting_ahead + 2)} in queue — another run is training: "
                f"{training.spec.backbone} by {who}.", icon=":material/schedule:")


def show_running(run: tle.RunRecord) -> None:
    progress = run.progress
    if not progress:
        st.progress(0.0, text="Preparing: loading the backbone and the images…")
    else:
        st.progress(min(1.0, float(progress.get("fraction") or 0.0)), text=eta_text(progress))
        logs = progress.get("logs") or {}
        cols = st.columns(4)
        cols[0].metric("Elapsed", widgets.format_duration(progress.get("elapsed_s")))
        eta = progress.get("eta_s")
        cols[1].metric("Time left", "estimating…" if eta is None else widgets.format_duration(eta))
        cols[2].metric("Loss (batch)", f"{logs['loss']:.3f}" if "loss" in logs else "–")
        cols[3].metric("Accuracy (batch)",
                       f"{logs['accuracy']:.1%}" if "accuracy" in logs else "–")
    if run.cancel_requested:
        st.caption("Cancelling: the run stops after the current batch.")


@st.fragment(run_every=2)
def live_panel(run_id: str | None, shown_status: str | None) -> None:
    """Polls the store every 2 s. With nothing active it only checks, cheaply, whether a
    run has started in this project."""
    if run_id is None or shown_status not in ("queued", "running"):
        others = [r for r in tle.list_runs(ws, project) if r.is_active and r.id != run_id]
        if others and run_id is None:
            st.rerun()
        if others:
            other = others[0]
            cols = st.columns([0.8, 0.2], vertical_alignment="center")
            cols[0].info(f"Run {other.id} ({other.spec.backbone}, by "
                         f"{other.started_by or 'someone'}) is {other.status}.",
                         icon=":material/directions_run:")
            if cols[1].button("Show it", key="show_other"):
                state.set_run(other.id)
                st.rerun()
        return
    run = tle.get_run(ws, run_id)
    if run.status != shown_status:
        st.rerun()  # started or finished: redraw the whole page once, in the new state
    with st.container(border=True):
        cols = st.columns([0.8, 0.2], vertical_alignment="center")
        cols[0].markdown(f"**{widgets.STATUS_ICONS[run.status]} {run.status.capitalize()}** · "
                         f"{run.spec.backbone} · started by {run.started_by or 'anonymous'}")
        if cols[1].button("Cancel run", key=f"cancel_{run.id}", icon=":material/stop:",
                          disabled=run.cancel_requested):
            with state.engine_errors():
                tle.cancel_run(ws, run.id)
                st.rerun()
        if run.status == "queued":
            show_queued(run)
        else:
            show_running(run)
    metrics = tle.run_metrics(ws, run.id)
    if metrics:
        st.plotly_chart(widgets.curves(run.id, metrics), width="stretch",
                        key=f"live_curves_{run.id}")


def load_settings(run: tle.RunRecord) -> None:
    state.update_spec(**run.spec.to_dict())
    for key in [k for k in st.session_state if str(k).startswith("train_")]:
        del st.session_state[key]  # the form re-seeds from the draft


def final_panel(run: tle.RunRecord) -> None:
    if run.status == "completed":
        summary = run.summary
        st.success(f"Completed — validation accuracy **{run.val_accuracy:.1%}**.",
                   icon=":material/check_circle:")
        cols = st.columns(5)
        cols[0].metric("Val accuracy", f"{run.val_accuracy:.1%}")
        test = summary.get("test_accuracy")
        cols[1].metric("Test accuracy", "–" if test is None else f"{test:.1%}")
        cols[2].metric("Epochs", run.epochs_run)
        cols[3].metric("Time", widgets.format_duration(run.seconds))
        cols[4].metric("Trainable params", widgets.format_params(summary.get("trainable_params")))
    elif run.status == "failed":
        st.error(f"The run failed: {run.error}", icon=":material/error:")
    else:
        st.warning(f"The run was {run.status}." + (f" {run.error}" if run.error else ""),
                   icon="⏸️")
    metrics = tle.run_metrics(ws, run.id)
    if metrics:
        st.plotly_chart(widgets.curves(run.id, metrics), width="stretch",
                        key=f"curves_{run.id}")
    cols = st.columns(4, vertical_alignment="center")
    if run.status == "completed":
        cols[0].page_link("views/prediction.py", label="Try it on new photos",
                          icon=":material/image_search:")
        cols[1].page_link("views/runs.py", label="Compare runs", icon=":material/leaderboard:")
    elif cols[0].button("Resume", key=f"resume_{run.id}", icon=":material/play_arrow:",
                        type="primary"):
        with state.engine_errors():
            tle.resume_run(ws, run.id)
            st.rerun()
    cols[2].button("Load these settings", key=f"load_{run.id}", on_click=load_settings,
                   args=(run,), help="Copy this run's settings into the Model, Freeze and "
                   "Training pages.")
    with st.expander("Settings of this run"):
        widgets.show_spec(run.spec.to_dict())


live_panel(shown.id if shown else None, shown.status if shown else None)
if shown is not None and not shown.is_active:
    final_panel(shown)
