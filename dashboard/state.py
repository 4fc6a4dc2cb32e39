"""What the user is looking at right now: the workspace, project, dataset, spec being
built and run. Shared state lives in the store; the URL holds project and run so a link
can be shared; st.session_state holds only this browser's choices."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import streamlit as st

import tl_engine as tle
from dashboard import pages
from dashboard.text import md_escape

SPEC_KEY = "spec_draft"
DRAFT_OWNER_KEY = "spec_draft_owner"
SETTING_WIDGET_PREFIXES = ("model_", "freeze_", "train_")
USER_KEY = "user_name"
USER_COOKIE = "tl_user"
DATASET_KEY = "dataset_id"


@st.cache_resource(show_spinner=False)
def _workspace(root: str) -> tle.Workspace:
    return tle.Workspace(root)


def workspace() -> tle.Workspace:
    """The shared workspace. Every page starts here, so a run whose worker died is marked
    interrupted (with Resume offered) on any page anyone opens, and a damaged index stops
    every page with the command that repairs it."""
    try:
        ws = _workspace(str(tle.store.resolve_workspace(os.environ.get("TL_WORKSPACE"))))
        tle.recover_interrupted(ws)
    except tle.WorkspaceDamaged as exc:
        st.error(md_escape(exc), icon=":material/report:")
        st.stop()
    return ws


class _DeviceSetup:
    """TensorFlow's import and set-up in this server process, once, in a background thread.

    It takes seconds (about 6 on 2 cores) and, while it runs, slows the server's replies
    to every browser (the import holds the interpreter). Most pages never touch TensorFlow,
    so nothing starts it on a page view: it starts when a run is queued (the worker's own
    start-up then leaves a core free, and the run's model is loaded here next), when
    someone asks for the hardware, or when a page needs TensorFlow, which waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._future: Future[tle.DeviceInfo] | None = None

    def start(self) -> Future[tle.DeviceInfo]:
        with self._lock:
            if self._future is None:
                future: Future[tle.DeviceInfo] = Future()
                self._future = future

                def configure() -> None:
                    try:
                        future.set_result(tle.configure_device())
                    except BaseException as exc:  # handed to whoever waits for the device
                        future.set_exception(exc)

                threading.Thread(target=configure, name="tl-device-setup", daemon=True).start()
            return self._future

    def started(self) -> bool:
        return self._future is not None

    def ready(self) -> tle.DeviceInfo | None:
        future = self._future
        return future.result() if future is not None and future.done() else None


_device_setup = _DeviceSetup()


def start_device_setup() -> None:
    """Start TensorFlow's set-up in the background, if nothing has (it runs once)."""
    _device_setup.start()


def device_setup_started() -> bool:
    return _device_setup.started()


def device() -> tle.DeviceInfo:
    """The hardware, with TensorFlow set up in this process. Call it before anything in the
    server uses TensorFlow (loading, building or exporting a model): the app predicts in
    this process, so TensorFlow is set up as the worker does it (GPU memory growth, so both
    share a GPU). Waits for the background set-up, starting it if nothing has."""
    future = _device_setup.start()
    if future.done():
        return future.result()
    with st.spinner("Checking the hardware…"):
        return future.result()


def device_if_ready() -> tle.DeviceInfo | None:
    """The hardware if TensorFlow's set-up has finished, else None (starting nothing): for
    what only shows the hardware."""
    return _device_setup.ready()


def current_project() -> str | None:
    """The project in the URL or chosen in this session, if the signed-in person may open
    it (in laptop mode: if it exists)."""
    from dashboard import access  # access builds on this module

    name = st.query_params.get("project") or st.session_state.get("project")
    if name and name in access.visible_projects():
        return name
    return None


def set_project(name: str) -> None:
    st.session_state["project"] = name
    st.query_params["project"] = name
    st.session_state.pop(DATASET_KEY, None)
    st.query_params.pop("dataset", None)


def arrived_at_project(name: str) -> None:
    """A link named the project: remember it; the dataset the link names (if any) stays."""
    st.session_state["project"] = name
    st.session_state.pop(DATASET_KEY, None)  # chosen in another project


def require_project() -> str:
    """The current project, or a pointer to the home page and a stop."""
    project = current_project()
    if project is None:
        st.info("Choose or create a project on the Home page first.")
        st.page_link(pages.HOME, label="Go to Home", icon=":material/home:")
        st.stop()
    return project


def current_dataset(project: str) -> tle.Dataset | None:
    """The dataset chosen (kept in the URL, so a reload or a shared link trains on the same
    one, and in the session, for page switches that drop the URL), else the project's
    newest one."""
    ws = workspace()
    datasets = tle.list_datasets(ws, project)
    if not datasets:
        return None
    chosen = st.query_params.get("dataset") or st.session_state.get(DATASET_KEY)
    found = next((d for d in datasets if d.id == chosen), None)
    if found is None:
        return datasets[0]
    st.session_state[DATASET_KEY] = found.id
    return found


def set_dataset(dataset_id: str) -> None:
    st.session_state[DATASET_KEY] = dataset_id
    st.query_params["dataset"] = dataset_id


def chosen_dataset_id() -> str | None:
    """The dataset chosen in this session, for the URL after a page switch."""
    return st.session_state.get(DATASET_KEY)


def current_run_id() -> str | None:
    return st.query_params.get("run") or st.session_state.get("run_id")


def set_run(run_id: str | None) -> None:
    if run_id is None:
        st.session_state.pop("run_id", None)
        st.query_params.pop("run", None)
        return
    st.session_state["run_id"] = run_id
    st.query_params["run"] = run_id


def _forget_setting_widgets() -> None:
    """Widgets keep their own state while their page is open; drop it so they re-seed
    from a draft that was just replaced (another person, project or run's settings)."""
    for key in [k for k in st.session_state if str(k).startswith(SETTING_WIDGET_PREFIXES)]:
        del st.session_state[key]


def _store_draft(project: str, user: str, draft: dict[str, Any]) -> None:
    """Keep the draft for the next visit; a read-only workspace keeps it for this tab only."""
    with contextlib.suppress(tle.WorkspaceReadOnly):
        tle.save_draft(workspace(), project, user, draft)


def spec_draft() -> dict[str, Any]:
    """The run spec the Model, Freeze strategy and Training pages build together: stored
    per project and person, so a reload, a new tab or the next day restore it."""
    project = current_project()
    user = user_name() or ""
    owner = (project, user)
    fresh_with_draft = DRAFT_OWNER_KEY not in st.session_state and SPEC_KEY in st.session_state
    if st.session_state.get(DRAFT_OWNER_KEY) != owner or SPEC_KEY not in st.session_state:
        # A session handed a draft before its first page (a link, a test) keeps that one.
        stored = tle.load_draft(workspace(), project, user) if project and not (
            fresh_with_draft) else None
        if stored is None:
            # Nothing stored for them yet: carry on from what this tab was editing.
            stored = dict(st.session_state.get(SPEC_KEY) or tle.RunSpec().to_dict())
            if project:
                _store_draft(project, user, stored)
        elif DRAFT_OWNER_KEY in st.session_state:
            _forget_setting_widgets()
        st.session_state[SPEC_KEY] = stored
        st.session_state[DRAFT_OWNER_KEY] = owner
    return st.session_state[SPEC_KEY]


def update_spec(**changes: Any) -> dict[str, Any]:
    draft = spec_draft()
    before = dict(draft)
    draft.update(changes)
    project = current_project()
    if draft != before and project:
        _store_draft(project, user_name() or "", draft)
    return draft


def load_run_settings(spec: tle.RunSpec) -> None:
    """Make a run's settings the draft; the Model, Freeze and Training pages follow."""
    update_spec(**spec.to_dict())
    _forget_setting_widgets()


def load_model_choice(**changes: Any) -> None:
    """Put a backbone (and its weights, size) in the draft from outside the Model page's
    own widgets, which then re-seed from the draft."""
    update_spec(**changes)
    _forget_setting_widgets()


def user_name() -> str | None:
    """Who starts a run: the signed-in user when auth is configured, else what they typed."""
    from dashboard import auth  # auth builds on this module

    if auth.mode() != "none":
        signed_in = auth.current_identity()
        return signed_in.name if signed_in else None
    try:
        if st.user.is_logged_in:
            return st.user.get("email") or st.user.get("name")
    except Exception:  # auth is not configured on this instance
        pass
    return typed_user_name()


def typed_user_name() -> str | None:
    """The name typed in this browser (laptop mode), remembered in the URL and a cookie."""
    if USER_KEY not in st.session_state:
        remembered = st.query_params.get("user") or cookie(USER_COOKIE) or ""
        st.session_state[USER_KEY] = clean_user_name(remembered)
    return st.session_state.get(USER_KEY) or None


def cookie(name: str) -> str | None:
    """A cookie of this browser, as sent when the session began."""
    value = st.context.cookies.get(name)
    return value if isinstance(value, str) else None  # not a str outside a real browser


def clean_user_name(name: str) -> str:
    """One line, at most 64 characters: a name is shown in lists and captions."""
    return " ".join(str(name).split())[:64]


@contextmanager
def engine_errors() -> Iterator[None]:
    """Show an engine error the user can act on as st.error instead of a traceback."""
    try:
        yield
    except tle.TLError as exc:
        st.error(md_escape(exc), icon=":material/warning:")
