"""Prediction: a completed run's model on new photos, uploaded or taken with the camera."""

import streamlit as st

import tl_engine as tle
from dashboard import run_views, state

st.title("Prediction")
project = state.require_project()
ws = state.workspace()

completed = [r for r in tle.list_runs(ws, project) if r.status == "completed"]
if not completed:
    st.info("No completed run in this project yet: train a model first, then try it here.")
    st.page_link("views/training.py", label="Go to Training", icon=":material/model_training:")
    st.stop()

run = run_views.pick_run(completed, "Model", key="prediction_run")
with state.engine_errors():
    model = run_views.predictor(str(ws.root), run.id)
    st.caption(f"Classes: {', '.join(model.labels)} · input {model.image_size} px · "
               f"trained on {run.summary.get('n_train', '?')} images")

    upload_col, camera_col = st.columns([3, 2])
    uploads = upload_col.file_uploader(
        "Images", type=run_views.IMAGE_TYPES, accept_multiple_files=True, key="predict_uploads",
        help="One or many photos; each is predicted on its own.")
    with camera_col:
        top_k = st.slider("Top-k classes", 1, len(model.labels), min(3, len(model.labels)))
        shot = st.camera_input("Camera shot") if st.toggle("Use the camera") else None

    images = [(f.name, f.getvalue()) for f in uploads or []]
    if shot is not None:
        images.append(("camera shot", shot.getvalue()))
    if not images:
        st.info("Upload images (or take a camera shot) to see what the model predicts.")
        st.stop()
    run_views.show_predictions(ws, run.id, images, top_k)
