"""Model: the backbone, where its starting weights come from, the new head and input size."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import tl_engine as tle
from dashboard import controls, pages, probe_panel, state, widgets
from dashboard.formats import format_params
from dashboard.text import md_escape

WEIGHT_SOURCES = {"imagenet": "ImageNet (pretrained)", "none": "None — random init (baseline)",
                  "file": "Local weights file"}
STATUS_TEXT = {"cached": "cached", "downloadable": "downloadable", "missing": "missing"}
AVAILABILITY = {"cached": "weights here", "downloadable": "downloads on first use",
                "missing": "no weights on this server"}
AVAILABILITY_ORDER = list(AVAILABILITY)


@st.cache_data(ttl=60, show_spinner=False)
def weights_statuses() -> dict[str, str]:
    return {entry.key: tle.weights_status(entry) for entry in tle.list_backbones()}


def backbone_table(chosen: str, statuses: dict[str, str]) -> pd.io.formats.style.Styler:
    rows = [
        {
            # Whether a backbone can be used here now comes first; its family is in its
            # name, and the box beside the table says it too.
            "Backbone": entry.key,
            "Weights here": STATUS_TEXT[statuses[entry.key]],
            "Parameters": format_params(entry.params),
            "Input": f"{entry.default_size} px",
            "ImageNet top-1": entry.imagenet_top1,
            "Features": entry.feature_dim,
        }
        for entry in tle.list_backbones()
    ]
    frame = pd.DataFrame(rows)
    highlight = "background-color: #E7ECFF; font-weight: 600"
    colours = {"cached": "color: #2B8A3E", "downloadable": "color: #1C7ED6",
               "missing": "color: #868E96"}
    return (
        frame.style.apply(
            lambda row: [highlight if row["Backbone"] == chosen else ""] * len(row), axis=1
        )
        .map(lambda v: colours.get(v, ""), subset=["Weights here"])
        .format({"ImageNet top-1": lambda v: "–" if pd.isna(v) else f"{v:.1%}"})
    )


def _on_backbone_change() -> None:
    # A new backbone starts at its own default input size (sizes differ: 224 vs 299).
    entry = tle.get_backbone(st.session_state["model_backbone"])
    st.session_state["model_image_size"] = entry.default_size


project = state.require_project()
draft = state.spec_draft()
statuses = weights_statuses()

st.title("Model")
st.caption("A backbone pretrained on ImageNet turns each photo into features; a small new "
           "head learns your classes from them.")

# Backbones whose weights are here come first, so an offline server offers what works.
keys = sorted((entry.key for entry in tle.list_backbones()),
              key=lambda k: AVAILABILITY_ORDER.index(statuses[k]))
widgets.seed("model_backbone", draft["backbone"] if draft["backbone"] in keys else keys[0])
choice_col, table_col = st.columns([0.32, 0.68])
with choice_col:
    key = st.selectbox(tle.setting("backbone").label, keys, key="model_backbone",
                       on_change=_on_backbone_change, help=tle.setting("backbone").help,
                       format_func=lambda k: f"{k} · {AVAILABILITY[statuses[k]]}")
    entry = tle.get_backbone(key)
    st.caption(f"{entry.family} · {format_params(entry.params)} parameters · "
               f"{entry.feature_dim} features · ImageNet top-1 "
               f"{'–' if entry.imagenet_top1 is None else f'{entry.imagenet_top1:.1%}'}")

    folder_offered = tle.weights_dir() is not None
    weight_files = {item.name: item for item in tle.list_weight_files()}
    sources = list(WEIGHT_SOURCES) if folder_offered else ["imagenet", "none"]
    draft_file = tle.find_weight_file(draft["weights"])
    if draft["weights"] in ("imagenet", "none"):
        widgets.seed("model_weights_source", draft["weights"])
    elif draft_file is not None:
        widgets.seed("model_weights_source", "file")
    else:
        # A file outside the administrator's folder (an older run, or one since removed).
        st.session_state["model_weights_source"] = "imagenet"
        st.info("The weights file of these settings is not offered on this server: "
                "starting from ImageNet weights instead.", icon=":material/info:")
    if st.session_state.get("model_weights_source") not in sources:
        st.session_state["model_weights_source"] = "imagenet"
    source = st.radio(
        tle.setting("weights").label, sources, format_func=WEIGHT_SOURCES.get,
        key="model_weights_source",
        help=None if folder_offered else "Local weights files appear here when an "
        "administrator sets TL_WEIGHTS_DIR to a folder of .h5 files on the server.")
    weights = source
    status = statuses[key]
    if source == "imagenet" and status == "missing":
        path = tle.weights.cached_weights_path(entry)
        st.warning(
            f"ImageNet weights for {key} are not on this server and cannot be downloaded. "
            f"Put **{path.name}** in `{path.parent}`, or choose another backbone. "
            "Weights “none” still works — it is the from-scratch baseline.",
            icon=":material/download:")
    elif source == "imagenet" and status == "downloadable":
        st.caption("Keras downloads the weights on the first run, then caches them.")
    elif source == "none":
        st.caption("Random initial weights: shows how much pretraining is worth. Use "
                   "“Full fine-tune” on the Freeze page, or the head only learns from noise.")
    elif source == "file" and not weight_files:
        weights = "imagenet"
        st.warning("The server's weights folder holds no .h5 files yet: an administrator "
                   "adds them there. Until then, ImageNet weights are used.",
                   icon=":material/description:")
    elif source == "file":
        if st.session_state.get("model_weights_file") not in weight_files:
            st.session_state["model_weights_file"] = (
                draft_file.name if draft_file is not None else next(iter(weight_files)))
        name = st.selectbox(
            "Weights file", list(weight_files), key="model_weights_file",
            format_func=lambda n: f"{n} · {weight_files[n].size / 1024**2:,.1f} MB",
            help=f"Files an administrator put in the server's weights folder. The file must "
            f"be saved from keras.applications.{entry.constructor}(include_top=False, "
            f"input_shape=({entry.default_size}, {entry.default_size}, 3)).",
        )
        weights = str(weight_files[name].path)

with table_col:
    st.dataframe(backbone_table(key, statuses), hide_index=True, width="stretch",
                 height=35 * (len(keys) + 1) + 3)
    st.caption("Top-1 accuracy on ImageNet as published by Keras. Bigger is not always "
               "better for a few hundred photos: start small, compare on the Runs page.")

st.subheader("Head and input")
image_size = draft["image_size"] or entry.default_size
head = controls.grid(
    controls.page_settings("model", draft, skip=("backbone", "weights")), draft, columns=3,
    overrides={"image_size": {
        "low": entry.min_size,
        "value": image_size if entry.min_size <= image_size <= tle.spec.MAX_IMAGE_SIZE
        else entry.default_size,
        "more_help": f"{entry.key} was trained at {entry.default_size} px; minimum "
        f"{entry.min_size}."}})
# A trainable top counted for a deeper backbone becomes all of this one.
most = entry.top_limit(draft["unfreeze_unit"])
fitted = {"unfreeze": most} if most and int(draft["unfreeze"]) > most else {}
state.update_spec(backbone=key, weights=weights, **head, **fitted)

with st.container(border=True):
    st.markdown("**Current choice**")
    summary = widgets.spec_summary(state.spec_draft())
    st.markdown(f"**Model** &nbsp; {md_escape(summary['Model'])}")
    cols = st.columns([0.25, 0.25, 0.5])
    cols[0].page_link(pages.FREEZE, label="Next: freeze strategy",
                      icon=":material/arrow_forward:")
    cols[1].page_link(pages.TRAINING, label="Training", icon=":material/model_training:")

probe_panel.render(state.workspace(), project, state.current_dataset(project), state.spec_draft())
