"""Helpers the step pages share: labels, the project picker, the freeze strip figure,
and the built-in sample data. Rendering only; everything stored goes through tl_engine."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import streamlit as st

import tl_engine as tle
from dashboard import access, charts, state
from dashboard.formats import format_params, format_percent, format_time
from dashboard.text import md_escape

PROJECT_ROOT = Path(__file__).resolve().parent.parent
IMAGE_TYPES = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"]

FROZEN_GREY = "#CED4DA"
TRAINABLE = "#4C6EF5"
PARTLY = "#A5B4FC"
HEAD = "#12B886"

WEIGHTS_NAMES = {"imagenet": "ImageNet", "none": "none (random init)"}
PHASE_NAMES = {
    "features": "Computing features with the frozen backbone",
    "head": "Training the head",
    "fine-tune": "Fine-tuning",
    "done": "Done",
}
STATUS_ICONS = {
    tle.RunStatus.QUEUED: ":material/schedule:",
    tle.RunStatus.RUNNING: ":material/directions_run:",
    tle.RunStatus.COMPLETED: ":material/check_circle:",
    tle.RunStatus.FAILED: ":material/error:",
    tle.RunStatus.CANCELLED: ":material/stop_circle:",
    tle.RunStatus.INTERRUPTED: ":material/pause_circle:",
}


# --- labels --------------------------------------------------------------------------


def run_label(run: tle.RunRecord) -> str:
    """One line that tells runs apart in a picker."""
    acc = f" · val {format_percent(run.val_accuracy)}" if run.val_accuracy is not None else ""
    who = f" · {run.started_by}" if run.started_by else ""
    return (
        f"{run.id} · {run.status} · {run.spec.backbone} · "
        f"{tle.STRATEGY_NAMES.get(run.spec.strategy, run.spec.strategy)}{acc}{who} · "
        f"{format_time(run.created_at)}"
    )


def weights_label(weights: str) -> str:
    return WEIGHTS_NAMES.get(weights, f"file {Path(weights).name}")


def spec_summary(spec: Mapping[str, Any], given_val: bool = False,
                 given_test: bool = False) -> dict[str, str]:
    """The draft (or a run's spec) in words, a line per page, from the spec's table."""
    values = dict(spec)
    if not values.get("image_size") and (entry := tle.BACKBONES.get(values["backbone"])):
        values["image_size"] = entry.default_size
    lines = tle.describe(values)
    data = []
    if given_val:
        lines["training"] = [t for t in lines["training"] if not t.startswith("val ")]
        data.append("the dataset's own validation split")
    if given_test:
        lines["training"] = [t for t in lines["training"] if not t.startswith("test ")]
        data.append("its own test split")
    return {"Model": " · ".join(lines["model"]), "Freeze": " · ".join(lines["freeze"]),
            "Training": " · ".join(lines["training"] + data)}


def show_spec(spec: Mapping[str, Any], given_val: bool = False,
              given_test: bool = False) -> None:
    lines = [
        f"**{name}** &nbsp; {md_escape(text)}"
        for name, text in spec_summary(spec, given_val, given_test).items()
    ]
    st.markdown("  \n".join(lines))


@st.cache_data(max_entries=64, show_spinner=False)
def curves(run_id: str, metrics: list[dict[str, Any]]) -> go.Figure:
    """The shared training curves, with a line where each phase after the first starts.
    Cached by content: a live page redraws every 2 s and the figure changes once an epoch."""
    fig = charts.training_curves({run_id: metrics})
    starts = [(now["epoch"], now["phase"])
              for before, now in zip(metrics, metrics[1:], strict=False)
              if now.get("phase") != before.get("phase")]
    for epoch, phase in starts:
        for col in (1, 2):
            fig.add_vline(x=epoch - 0.5, line={"color": "#ADB5BD", "dash": "dot"},
                          annotation_text=f"{phase} →", annotation_position="top right",
                          annotation_font_size=10, row=1, col=col)
    return fig


def show_hints(hints: list[tle.Hint]) -> None:
    """Hints where a setting or a result is likely to hurt (engine text, no user input)."""
    for hint in hints:
        show = st.warning if hint.level == "warning" else st.info
        show(hint.text, icon=":material/lightbulb:")


# --- widget state --------------------------------------------------------------------


def seed(key: str, value: Any) -> None:
    """Give a keyed widget its starting value from the draft.

    Streamlit forgets a widget's state when the user moves to another page, so the draft
    in session_state is the memory and the widget is re-seeded from it on the way back.
    """
    if key not in st.session_state:
        st.session_state[key] = value


# --- projects ------------------------------------------------------------------------


def create_project_form(key: str, label: str = "New project name") -> None:
    """A name field and a Create button; the new project becomes the current one. A name
    that is refused stays in the field beside the reason, to be corrected."""
    with st.form(f"{key}_form", border=False):
        st.text_input(label, key=f"{key}_name", placeholder="e.g. bolts-qa")
        st.form_submit_button("Create project", type="primary", on_click=_create_project,
                              args=(key,))
    if refused := st.session_state.get(f"{key}_refused"):
        st.error(md_escape(refused), icon=":material/warning:")
    if st.session_state.pop(f"{key}_created", False):
        st.rerun()  # the whole app: a dialog closes, the sidebar shows the new project


def _create_project(key: str) -> None:
    try:
        created = tle.access.create_project(state.workspace(), access.identity(),
                                            st.session_state.get(f"{key}_name", ""))
    except tle.TLError as exc:
        st.session_state[f"{key}_refused"] = str(exc)
        return
    st.session_state.pop(f"{key}_refused", None)
    st.session_state[f"{key}_name"] = ""
    st.session_state[f"{key}_created"] = True
    state.set_project(created)


@st.dialog("New project")
def new_project_dialog() -> None:
    # A dialog, not a popover: it closes by itself on the rerun that shows the new project.
    create_project_form("sidebar_new")


PROJECT_BOX_KEY = "project_box"


def _choose_project() -> None:
    if (choice := st.session_state.get(PROJECT_BOX_KEY)) is not None:
        state.set_project(choice)


def project_picker() -> str | None:
    """The sidebar's project selector; returns the current project."""
    projects = access.visible_projects()
    current = state.current_project()
    if current and st.session_state.get("project") != current:
        # Arrived through a link: remember the project for when page switches drop the URL.
        state.arrived_at_project(current)
    if projects:
        # The box follows the current project however it changed (Home, a link, the URL);
        # a choice in it becomes the project before the script runs. (Without a key, the
        # box's identity changed with its index, and two identities each kept the choice
        # last made in them: switching back and forth could flip between them forever.)
        # None shows the placeholder: without a value, the box would show the first
        # project as if it were chosen, and choosing it would change nothing.
        if PROJECT_BOX_KEY not in st.session_state or \
                st.session_state[PROJECT_BOX_KEY] != current:
            st.session_state[PROJECT_BOX_KEY] = current
        st.selectbox("Project", projects, placeholder="Choose a project", key=PROJECT_BOX_KEY,
                     on_change=_choose_project)
    if st.button("New project", icon=":material/add:", width="stretch", key="new_project"):
        new_project_dialog()
    return current


def _clean_typed_name() -> None:
    st.session_state[state.USER_KEY] = state.clean_user_name(st.session_state[state.USER_KEY])


def user_name_field() -> None:
    """Laptop mode's "Your name": kept in the URL (reloads, shared links) and in a cookie
    (a new tab, the next day)."""
    state.typed_user_name()  # seeds the field from the URL or the cookie
    st.text_input("Your name", key=state.USER_KEY, max_chars=64,
                  placeholder="shown on the runs you start", on_change=_clean_typed_name)
    name = st.session_state[state.USER_KEY]
    if name and st.query_params.get("user") != name:
        st.query_params["user"] = name
    elif not name and "user" in st.query_params:
        del st.query_params["user"]
    remembered = st.session_state.get("user_cookie", state.cookie(state.USER_COOKIE))
    if (remembered or "") != name:
        st.session_state["user_cookie"] = name
        # json.dumps makes the name a JS string literal; "</" cannot close the script.
        value = json.dumps(name).replace("</", "<\\/")
        st.iframe(
            "<script>parent.document.cookie = '" + state.USER_COOKIE + "=' + "
            f"encodeURIComponent({value}) + '; path=/; max-age=31536000; SameSite=Lax';"
            "</script>", height=1)


# --- the freeze strip ----------------------------------------------------------------


def freeze_strip(plan: tle.FreezePlan, width_by_params: bool = False) -> go.Figure:
    """The backbone as a strip of blocks, input on the left, coloured frozen / trainable.

    Equal widths show the structure; widths by parameters show where the weights are
    (the last blocks of most backbones hold most of them).
    """
    # Aggregate per block here rather than use plan.blocks: pretrained BatchNorm weights
    # stay frozen, so a block whose other layers all train is "trainable", not "partly".
    blocks: dict[str, dict[str, int]] = {}
    for layer in plan.layers:
        block = blocks.setdefault(layer.block, {"layers": 0, "params": 0, "trainable": 0,
                                                "bn": 0})
        block["layers"] += 1
        block["params"] += layer.params
        block["trainable"] += layer.params if layer.trainable else 0
        block["bn"] += layer.params if layer.batch_norm and not layer.trainable else 0
    widths = [max(b["params"], 1) if width_by_params else 1 for b in blocks.values()]
    head_width = max(plan.head_params, 1) if width_by_params else max(1, len(blocks) // 12)
    starts, total = [], 0
    for width in widths:
        starts.append(total)
        total += width
    colours, hover = [], []
    for name, block in blocks.items():
        if block["trainable"] == 0:
            colours.append(FROZEN_GREY)
            status = "frozen"
        elif block["trainable"] < block["params"] - block["bn"]:
            colours.append(PARTLY)
            status = f"partly trainable ({format_params(block['trainable'])})"
        else:
            colours.append(TRAINABLE)
            status = "trainable" + (" (BatchNorm stays frozen)" if block["bn"] else "")
        hover.append(
            f"<b>{name}</b><br>{block['layers']} layers · {format_params(block['params'])} "
            f"params<br>{status}"
        )
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=widths, base=starts, y=["backbone"] * len(widths), orientation="h",
            marker={"color": colours, "line": {"color": "white", "width": 1}},
            hovertext=hover, hoverinfo="text", showlegend=False,
        )
    )
    fig.add_trace(
        go.Bar(
            x=[head_width], base=[total + head_width * 0.15], y=["backbone"], orientation="h",
            marker={"color": HEAD, "line": {"color": "white", "width": 1}},
            hovertext=[f"<b>new head</b><br>{format_params(plan.head_params)} params"
                       "<br>always trainable"],
            hoverinfo="text", text=["head"], textposition="inside", showlegend=False,
        )
    )
    for name, colour in (("frozen", FROZEN_GREY), ("trainable", TRAINABLE),
                         ("partly trainable", PARTLY), ("new head", HEAD)):
        fig.add_trace(go.Bar(x=[None], y=[None], name=name, marker_color=colour,
                             orientation="h", showlegend=True))
    names = list(blocks)
    for x, text, anchor in ((0, names[0], "left"), (total, names[-1], "right")):
        fig.add_annotation(x=x, y=-0.55, text=text, showarrow=False, xanchor=anchor,
                           font={"size": 11, "color": "#495057"})
    fig.update_layout(
        barmode="overlay", height=170, bargap=0.05,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        xaxis={"visible": True, "showticklabels": False, "showgrid": False, "zeroline": False,
               "title": {"text": "input  →  output", "font": {"size": 12}}},
        yaxis={"visible": False},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        plot_bgcolor="white",
    )
    return fig


# --- sample data ---------------------------------------------------------------------


def sample_folder() -> Path | None:
    """A folder of class folders to offer as a one-click sample: $TL_SAMPLE_DATA, else the
    shared ants-vs-bees photos beside the checkout."""
    chosen = os.environ.get("TL_SAMPLE_DATA")
    path = Path(chosen).expanduser() if chosen else PROJECT_ROOT.parent / "shared" / "data" / (
        "hymenoptera"
    )
    return path if path.is_dir() else None


@st.cache_data(show_spinner=False, ttl=600)
def count_images(folder: str) -> int:
    suffixes = {f".{ext}" for ext in IMAGE_TYPES}
    return sum(
        1
        for _, _, files in os.walk(folder)
        for name in files
        if Path(name).suffix.lower() in suffixes
    )


