"""Prediction: a completed run's model on new photos (files, a .zip or a folder uploaded, or
a camera shot): a card per image, and a table of every class's probability to download."""

import functools

import streamlit as st

import tl_engine as tle
from dashboard import access, explain_views, pages, run_views, state
from dashboard.text import md_escape

st.title("Prediction")
project = state.require_project()
ws = state.workspace()

completed = [r for r in tle.list_runs(ws, project) if r.status == tle.RunStatus.COMPLETED]
if not completed:
    st.info("No completed run in this project yet: train a model first, then try it here.")
    st.page_link(pages.TRAINING, label="Go to Training", icon=":material/model_training:")
    st.stop()

run = run_views.pick_run(completed, "Model", key="prediction_run")
if not access.permit("predict", project, run):
    st.stop()
with state.engine_errors():
    # The model loads in the background while photos are chosen; a damaged file is
    # named now. The page itself needs only what the run stored beside the model.
    tle.warm_predictor(ws, run.id)
    labels = tle.runs.labels(ws, run.id)
    classes = ", ".join(md_escape(label) for label in labels)
    n_train = run.result.n_train
    st.caption(f"Classes: {classes} · input {run.spec.image_size} px · "
               f"trained on {'?' if n_train is None else n_train} images")

    upload_col, camera_col = st.columns([3, 2])
    with upload_col:
        files_tab, folder_tab = st.tabs(["Images or .zip", "Folder"])
        uploads = files_tab.file_uploader(
            "Images", type=[*run_views.IMAGE_TYPES, "zip"], accept_multiple_files=True,
            key="predict_uploads",
            help="One or many photos, or .zip archives of them (sub-folders kept); each "
                 "image is predicted on its own.")
        folder = folder_tab.file_uploader(
            "Folder of images", type=run_views.IMAGE_TYPES, accept_multiple_files="directory",
            key="predict_folder", help="Every image in the folder and its sub-folders.")
    with camera_col:
        top_k = st.slider("Top-k classes", 1, len(labels), min(3, len(labels)),
                          help="How many classes each card shows; the table and CSV always "
                               f"list the top {tle.top_k_for(len(labels))}.")
        not_sure_below = st.slider(
            "Not sure below", 0, 100, round(tle.DEFAULT_NOT_SURE_BELOW * 100), step=5,
            format="%d%%", key="not_sure_below",
            help=run_views.not_sure_help(
                tle.calibration.run_temperature(ws.run_dir(run.id)))) / 100
        shot = st.camera_input("Camera shot") if st.toggle("Use the camera") else None

    files = [(f.name, f.getvalue()) for f in [*(uploads or []), *(folder or [])]]
    if not files and shot is None:
        st.info("Upload images, a .zip or a folder (or take a camera shot) to see what the "
                "model predicts.")
        st.stop()
    images = tle.prediction_batch(files)
    if shot is not None:
        images.append(("camera shot", shot.getvalue()))
    if not images:
        st.info("No image among the uploaded files.")
        st.stop()
    run_views.show_predictions(
        ws, run.id, images, top_k, not_sure_below,
        why=functools.partial(explain_views.why_panel, ws, run.id, labels))
