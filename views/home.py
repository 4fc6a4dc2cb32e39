"""Home: what this is, the hardware, and the next step for the current project."""

import streamlit as st

import tl_engine as tle
from dashboard import access, pages, state, widgets
from dashboard.text import md_escape

HARDWARE_POLL_S = 1.0


def hardware_panel(device: tle.DeviceInfo | None) -> None:
    with st.container(border=True):
        st.markdown("**Hardware**")
        if device is None:
            if state.device_setup_started():
                st.caption("Checking the hardware: TensorFlow is loading (a few seconds, once "
                           "per server)…")
            else:
                st.caption("Shown once TensorFlow is loaded: at the first training, or now.")
                st.button("Check the hardware", icon=":material/developer_board:",
                          key="check_hardware", on_click=state.start_device_setup)
            return
        cols = st.columns(3)
        cols[0].metric("Trains on", "GPU" if device.kind == "GPU" else "CPU",
                       help=", ".join(device.names) or "No GPU is visible to TensorFlow.")
        cols[1].metric("TensorFlow / Keras", f"{device.tensorflow} / {device.keras}")
        cols[2].metric("Mixed precision",
                       f"batch ≥ {tle.MIXED_PRECISION_MIN_BATCH}" if device.mixed_precision
                       else "off",
                       help="float16 compute on tensor-core GPUs for training batches of "
                       f"{tle.MIXED_PRECISION_MIN_BATCH} or more, where it is faster; smaller "
                       "batches train in float32. The softmax stays float32.")
        if device.names:
            st.caption(" · ".join(device.names))
        else:
            st.caption("No GPU visible: small backbones (MobileNet) at small image sizes train "
                       "in minutes on CPU; frozen backbones reuse cached features.")


def follow_hardware() -> None:
    """Polls, in a fragment, only while TensorFlow is loading; once it is ready, one rerun
    shows the hardware here and in the sidebar, and the page polls no more."""
    if state.device_if_ready() is not None:
        st.rerun()
    hardware_panel(None)


def show_hardware() -> None:
    device = state.device_if_ready()
    if device is None and state.device_setup_started():
        st.fragment(follow_hardware, run_every=HARDWARE_POLL_S)()
    else:
        hardware_panel(device)


st.title("Transfer Learning Studio")
st.markdown(
    "Turn a few hundred labelled photos into an image classifier — pick a pretrained "
    "backbone, choose what to freeze, train, and see *why* it works."
)

ws = state.workspace()
project = state.current_project()

if project is None:
    if visible := access.visible_projects():
        with st.container(border=True):
            st.subheader("Open a project")
            opened = st.selectbox("Your projects", visible, index=None, key="home_open",
                                  placeholder=f"Choose one of {len(visible)}")
            if opened:
                state.set_project(opened)
                st.rerun()
    with st.container(border=True):
        st.subheader("Create a project" if visible else "Create your first project")
        st.caption("A project holds your datasets and training runs; "
                   + ("you choose who else sees it." if access.checks_apply()
                      else "your team sees it too."))
        widgets.create_project_form("home_new", label="Project name")
    show_hardware()
    st.stop()

datasets = tle.list_datasets(ws, project)
runs = tle.list_runs(ws, project)
completed = [r for r in runs if r.status == tle.RunStatus.COMPLETED]
active = sorted((r for r in runs if r.is_active), key=lambda r: r.status != tle.RunStatus.RUNNING)
# Accuracies rank settings only on the same images: the best on the current dataset.
shown_dataset = state.current_dataset(project)
best = max((r.val_accuracy for r in completed if r.val_accuracy is not None
            and shown_dataset is not None and r.dataset_id == shown_dataset.id), default=None)

st.subheader(f"Project · {md_escape(project)}")
cols = st.columns(4)
cols[0].metric("Datasets", len(datasets))
cols[1].metric("Runs", len(runs))
cols[2].metric("Active", len(active))
cols[3].metric("Best val accuracy", "–" if best is None else f"{best:.1%}",
               help=None if shown_dataset is None else
               f"Among the runs on the dataset {md_escape(shown_dataset.name)}")

st.markdown("**What to do next**")
with st.container(border=True):
    steps = [
        (bool(datasets), "Add a dataset: upload photos per class, a folder, a .zip or a sample",
         pages.DATASET, "Dataset"),
        (bool(runs), "Choose a backbone and what to freeze",
         pages.MODEL, "Model"),
        (bool(runs), "Start a training run", pages.TRAINING, "Training"),
        (bool(completed), "Try the model on new photos and compare runs",
         pages.PREDICTION, "Prediction"),
    ]
    next_found = False
    for done, text, page, label in steps:
        cols = st.columns([0.06, 0.64, 0.3], vertical_alignment="center")
        is_next = not done and not next_found
        next_found = next_found or is_next
        if done:
            cols[0].markdown(":green[:material/check_circle:]")
        else:
            cols[0].markdown(":blue[:material/arrow_forward:]" if is_next
                             else ":gray[:material/radio_button_unchecked:]")
        cols[1].markdown(f"**{text}**" if is_next else text)
        cols[2].page_link(page, label=f"Open {label}", icon=":material/arrow_forward:")
    if active:
        run = active[0]
        where = "is training" if run.status == tle.RunStatus.RUNNING else "is waiting in the queue"
        who = f" by {md_escape(run.started_by)}" if run.started_by else ""
        st.info(f"Run {run.id} ({md_escape(run.spec.backbone)}{who}) {where}.",
                icon=":material/directions_run:")
        st.page_link(pages.TRAINING, label="Watch it on the Training page",
                     icon=":material/monitoring:")
    elif completed:
        st.page_link(pages.RUNS, label="Compare runs and export a model",
                     icon=":material/leaderboard:")

access.members_panel(project)
show_hardware()
