"""What the user is looking at right now: the workspace, project, dataset, spec being
built and run. Shared state lives in the store; the URL holds project and run so a link
can be shared; st.session_state holds only this browser's choices."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import streamlit as st

import tl_engine as tle

SPEC_KEY = "spec_draft"


@st.cache_resource(show_spinner=False)
def _workspace(root: str) -> tle.Workspace:
    return tle.Workspace(root)


def workspace() -> tle.Workspace:
    return _workspace(str(tle.store.resolve_workspace(os.environ.get("TL_WORKSPACE"))))


@st.cache_resource(show_spinner="Checking the hardware…")
def device() -> tle.DeviceInfo:
    return tle.describe_device()


def current_project() -> str | None:
    name = st.query_params.get("project") or st.session_state.get("project")
    if name and name in workspace().list_projects():
        return name
    return None


def set_project(name: str) -> None:
    st.session_state["project"] = name
    st.query_params["project"] = name
    st.session_state.pop("dataset_id", None)


def require_project() -> str:
    """The current project, or a pointer to the home page and a stop."""
    project = current_project()
    if project is None:
        st.info("Choose or create a project on the Home page first.")
        st.page_link("views/home.py", label="Go to Home", icon=":material/home:")
        st.stop()
    return project


def current_dataset(project: str) -> tle.Dataset | None:
    """The dataset chosen in this session, else the project's newest one."""
    ws = workspace()
    datasets = tle.list_datasets(ws, project)
    if not datasets:
        return None
    chosen = st.session_state.get("dataset_id")
    return next((d for d in datasets if d.id == chosen), datasets[0])


def set_dataset(dataset_id: str) -> None:
    st.session_state["dataset_id"] = dataset_id


def current_run_id() -> str | None:
    return st.query_params.get("run") or st.session_state.get("run_id")


def set_run(run_id: str | None) -> None:
    if run_id is None:
        st.session_state.pop("run_id", None)
        st.query_params.pop("run", None)
        return
    st.session_state["run_id"] = run_id
    st.query_params["run"] = run_id


def spec_draft() -> dict[str, Any]:
    """The run spec the Model, Freeze strategy and Training pages build together."""
    if SPEC_KEY not in st.session_state:
        st.session_state[SPEC_KEY] = tle.RunSpec().to_dict()
    return st.session_state[SPEC_KEY]


def update_spec(**changes: Any) -> dict[str, Any]:
    draft = spec_draft()
    draft.update(changes)
    return draft


def user_name() -> str | None:
    """Who starts a run: the signed-in user when auth is configured, else what they typed."""
    try:
        if st.user.is_logged_in:
            return st.user.get("email") or st.user.get("name")
    except Exception:  # auth is not configured on this instance
        pass
    return st.session_state.get("user_name") or None


@contextmanager
def engine_errors() -> Iterator[None]:
    """Show an engine error the user can act on as st.error instead of a traceback."""
    try:
        yield
    except tle.TLError as exc:
        st.error(str(exc), icon=":material/warning:")
