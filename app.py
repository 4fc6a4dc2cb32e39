"""Transfer Learning Studio: `streamlit run app.py`. The sidebar and navigation; each step
is a page in views/, declared in dashboard/pages.py."""

import streamlit as st

from dashboard import access, auth, pages, runtime, state, widgets

st.set_page_config(page_title="Transfer Learning Studio", page_icon="🧪", layout="wide")
# Narrower side padding than Streamlit's 5rem: tables of runs and layers need the room on a
# 1280-pixel screen beside the sidebar.
st.html("<style>[data-testid='stMainBlockContainer'] {padding-left: 2.5rem; "
        "padding-right: 2.5rem;}</style>")

# Who is there decides what shows: with sign-in on, a visitor sees the sign-in page only,
# whatever page or project a link names (the link still works once they are signed in).
identity = auth.current_identity()

# Navigation first: Streamlit then never shows its automatic pages/ listing meanwhile.
page = st.navigation(
    [st.Page(entry.path, title=entry.title, icon=entry.icon, default=entry.default)
     for entry in pages.PAGES],
    position="sidebar" if identity else "hidden",
)

if identity is None:
    auth.sign_in_page()
    st.stop()

with st.sidebar:
    project = widgets.project_picker()
    if project and st.query_params.get("project") != project:
        # Page switches drop the query string; put the project back so links stay shareable.
        st.query_params["project"] = project
    if project and "dataset" not in st.query_params and (
            dataset := state.chosen_dataset_id()):
        st.query_params["dataset"] = dataset  # as the project: dropped by a page switch
    if auth.mode() == "none":
        widgets.user_name_field()
    else:
        auth.account_box(identity)
    # Never waits for TensorFlow's import: shown once something has loaded it.
    if (device := state.device_if_ready()) is not None:
        st.caption(f":material/developer_board: {device.label}  \n"
                   f"TensorFlow {device.tensorflow} · Keras {device.keras}")

if (denied := access.denied_project()) is not None:
    access.refuse_project(denied)
    st.stop()

try:
    page.run()
finally:  # also after st.stop() and st.rerun(), which end a page early
    runtime.skip_garbage_collection_on_keras_clear_session()
