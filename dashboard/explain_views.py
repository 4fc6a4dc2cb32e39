"""Why a run's model decides what it does: Grad-CAM over photos (the Prediction page's
"Why?" and the Runs page's mistakes) and the confusion-matrix drill-down. Grad-CAM is
computed on demand and cached per run, model file, image and class."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import tl_engine as tle
from dashboard import charts, run_views, state
from dashboard.text import md_escape, plotly_text

SHOWN_SIDE = 384  # px: the overlay's long side on the page; the CLI writes full size
CAMS_PER_PAGE = 8
CELL_IMAGES_PER_PAGE = 8
CONFUSED_PAIRS_SHOWN = 10
MANY_CLASSES = 4  # from this many classes on, the most confused pairs are listed
WHY_HELP = ("Grad-CAM (Selvaraju et al. 2017): the warm areas are where the model's last "
            "convolutional feature map found the evidence for the class.")


@st.cache_data(show_spinner="Computing Grad-CAM…", max_entries=128)
def _explained(root: str, run_id: str, version: int, image_hash: str, class_name: str | None,
               _image: bytes | str) -> tuple[np.ndarray, str, str, float]:
    """(overlay, class explained, class predicted, its probability); the image itself is
    left out of the cache key, which its hash stands for."""
    state.device()
    e = tle.explain_image(tle.Workspace(root), run_id, _image, class_name, max_side=SHOWN_SIDE)
    return e.overlay, e.class_name, e.predicted, e.probability


def explained(ws: tle.Workspace, run_id: str, image: bytes | Path, image_hash: str | None = None,
              class_name: str | None = None) -> tuple[np.ndarray, str, str, float]:
    """The Grad-CAM overlay of a photo (bytes, or a stored image's path) for `class_name`
    (None: the predicted class), computed once per model file, image and class."""
    if image_hash is None:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        image_hash = hashlib.sha256(data).hexdigest()
    source = image if isinstance(image, bytes) else str(image)
    return _explained(str(ws.root), run_id, run_views.model_version(ws, run_id), image_hash,
                      class_name, source)


# --- Prediction page ---------------------------------------------------------------------------


def why_panel(ws: tle.Workspace, run_id: str, labels: Sequence[str],
              prediction: tle.Prediction, data: bytes, position: int) -> None:
    """A "Why?" toggle on a prediction card: the Grad-CAM of the predicted class, or of a
    class the user picks, over the photo."""
    if not st.toggle("Why?", key=f"why_{position}", help=WHY_HELP):
        return
    labels = list(labels)
    # Beside the photo's own thumbnail width, so the card stays compact.
    picture_col, text_col = st.columns([2, 3])
    chosen = text_col.selectbox(
        "Explain the class", labels, key=f"why_class_{position}",
        index=labels.index(prediction.label) if prediction.label in labels else 0,
        help="Where the model finds evidence for this class; the predicted class by default.")
    picture, shown, _, probability = explained(ws, run_id, data, class_name=chosen)
    picture_col.image(picture, width="stretch", alt=f"Grad-CAM for {shown}")
    text_col.caption(md_escape(f"Grad-CAM for {shown} ({probability:.1%}): warm areas drove "
                               "the score of this class, cold ones did not."))


# --- Runs page: mistakes ----------------------------------------------------------------------


def mistake_cams(ws: tle.Workspace, run_id: str, mistakes: Sequence[dict[str, Any]]) -> None:
    """Each misclassified image twice: where the model saw the class it chose, and where
    it saw the true one; paged, computed only for the page on screen."""
    shown = run_views.paged(list(mistakes), key=f"mistake_cams_page_{run_id}",
                            per_page=CAMS_PER_PAGE)
    for start in range(0, len(shown), 2):
        for column, mistake in zip(st.columns(2), shown[start:start + 2], strict=False):
            with column, st.container(border=True):
                _mistake_cam(ws, run_id, mistake)


def _mistake_cam(ws: tle.Workspace, run_id: str, mistake: dict[str, Any]) -> None:
    st.markdown(f"**{md_escape(mistake['true'])}** → :red[{md_escape(mistake['predicted'])}]"
                f" ({mistake['confidence']:.0%})")
    path = ws.image_path(mistake["hash"]) if mistake.get("hash") else None
    if path is None or not path.is_file():
        st.caption("(image no longer stored)")
        return
    for column, (label, what) in zip(st.columns(2), ((mistake["predicted"], "chose"),
                                                      (mistake["true"], "missed")),
                                     strict=True):
        picture, _, _, probability = explained(ws, run_id, path, mistake["hash"], label)
        column.image(picture, width="stretch", alt=f"Grad-CAM for {label}")
        column.caption(md_escape(f"{what}: {label} ({probability:.0%})"))
    st.caption(md_escape(mistake.get("filename", "")))


# --- Runs page: confusion-matrix drill-down --------------------------------------------------


def _cell_key(true: str, predicted: str, classes: Sequence[str]) -> str:
    return f"{classes.index(true)}:{classes.index(predicted)}"


def confusion_chart(split: dict[str, Any], key: str) -> tuple[int, int] | None:
    """The confusion matrix, each cell clickable; the (row, column) clicked, if any.

    Plotly heatmaps report no selection in Streamlit, so an invisible marker sits on each
    cell: clicking a cell selects its marker."""
    classes = split["classes"]
    n = len(classes)
    fig = charts.confusion_heatmap(split["confusion_matrix"], classes)
    fig.update_traces(hoverinfo="skip", hovertemplate=None, selector={"type": "heatmap"})
    labels = [plotly_text(c) for c in classes]
    counts = split["confusion_matrix"]
    fig.add_trace(go.Scatter(
        x=[labels[j] for i in range(n) for j in range(n)],
        y=[labels[i] for i in range(n) for j in range(n)],
        customdata=[counts[i][j] for i in range(n) for j in range(n)],
        mode="markers", showlegend=False, name="cells",
        # An outline around the clicked cell's count; invisible on the others.
        marker={"symbol": "square-open", "size": 26, "color": "rgba(0,0,0,0)",
                "line": {"width": 3}},
        selected={"marker": {"color": "#ff8c00", "opacity": 0.4}},
        unselected={"marker": {"opacity": 0}},
        hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata} images"
                      "<br>click to see them<extra></extra>"))
    # The nearest marker answers wherever a cell is clicked, and the axes stay the
    # heatmap's own (the markers would otherwise pad them).
    fig.update_layout(hovermode="closest", hoverdistance=-1,
                      xaxis={"range": [-0.5, n - 0.5]},
                      yaxis={"range": [n - 0.5, -0.5], "autorange": False})
    event = st.plotly_chart(fig, width="stretch", on_select="rerun", selection_mode="points",
                            key=key)
    points = event.selection.points if event and event.selection else []
    cell = next((p["point_index"] for p in points if p.get("curve_number") == 1), None)
    return None if cell is None else divmod(int(cell), n)


def drill_down(ws: tle.Workspace, run_id: str, split: dict[str, Any],
               clicked: tuple[int, int] | None) -> None:
    """The images of one cell of the confusion matrix (clicked, or picked from the list)
    with their probabilities, and the most confused pairs when there are many classes."""
    classes = split["classes"]
    matrix = split["confusion_matrix"]
    pairs = tle.confused_pairs(split)
    if len(classes) >= MANY_CLASSES and pairs:
        st.markdown("**Most confused pairs**")
        st.dataframe(
            [{"true": t, "predicted": p, "images": c} for t, p, c in
             pairs[:CONFUSED_PAIRS_SHOWN]],
            hide_index=True, width="content")
    diagonal = [(c, c, int(matrix[i][i])) for i, c in enumerate(classes) if matrix[i][i]]
    options = [_cell_key(t, p, classes) for t, p, _ in [*pairs, *diagonal]]
    counts = {_cell_key(t, p, classes): c for t, p, c in [*pairs, *diagonal]}
    select_key, seen_key = f"cell_{run_id}", f"cell_clicked_{run_id}"
    # A click picks its cell once; the list may then pick another without the (still
    # selected) click taking it back on the next rerun.
    if clicked != st.session_state.get(seen_key):
        st.session_state[seen_key] = clicked
        if clicked is not None:
            if f"{clicked[0]}:{clicked[1]}" in counts:
                st.session_state[select_key] = f"{clicked[0]}:{clicked[1]}"
            else:
                st.info(md_escape(f"No validation image is {classes[clicked[0]]} and "
                                  f"predicted {classes[clicked[1]]}."))

    def label(option: str) -> str:
        i, j = map(int, option.split(":"))
        return (f"{classes[i]} → predicted {classes[j]} · {counts[option]} "
                f"image{'s' if counts[option] != 1 else ''}")

    if st.session_state.get(select_key) not in [None, *options]:
        del st.session_state[select_key]  # a cell of another split or an older evaluation
    # index=None only while the state holds no choice: passing both warns on the page.
    unset = {} if select_key in st.session_state else {"index": None}
    chosen = st.selectbox("Cell of the confusion matrix", options, **unset,
                          key=select_key, format_func=label,
                          placeholder="Click a cell above, or choose one here",
                          help="Mistakes first, most frequent first; then the correct ones.")
    if chosen is None:
        return
    i, j = map(int, chosen.split(":"))
    images = tle.cell_images(split, classes[i], classes[j])
    if images is None:
        st.caption("This run was trained before each image's outcome was stored: only its "
                   "mistakes can be shown. Train it again to see every cell.")
        return
    if len(images) < counts[chosen]:
        st.caption(f"The {len(images)} most confident of {counts[chosen]} images are stored.")
    cams = st.toggle("Show Grad-CAM of the predicted class", key=f"cell_cams_{run_id}",
                     help=WHY_HELP)
    shown = run_views.paged(images, key=f"cell_page_{run_id}_{chosen}",
                            per_page=CELL_IMAGES_PER_PAGE)
    for start in range(0, len(shown), 4):
        for column, image in zip(st.columns(4), shown[start:start + 4], strict=False):
            with column:
                _cell_card(ws, run_id, image, cams)


def _cell_card(ws: tle.Workspace, run_id: str, image: dict[str, Any], cams: bool) -> None:
    with st.container(border=True):
        path = ws.image_path(image["hash"]) if image.get("hash") else None
        if path is None or not path.is_file():
            st.caption("(image no longer stored)")
        elif cams:
            picture, *_ = explained(ws, run_id, path, image["hash"], image["predicted"])
            st.image(picture, width="stretch")
        else:
            st.image(str(path), width="stretch")
        colour = "green" if image["true"] == image["predicted"] else "red"
        st.markdown(f":{colour}[{md_escape(image['predicted'])}] {image['confidence']:.1%}")
        top = list(image.get("probabilities", {}).items())[:3]
        st.caption(f"{md_escape(image.get('filename', ''))}  \n"
                   f"{md_escape(run_views.top_k_text(top))}")
