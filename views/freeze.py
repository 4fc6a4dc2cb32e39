"""Freeze strategy: which part of the backbone learns, shown block by block."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import tl_engine as tle
from dashboard import state, widgets
from dashboard.text import md_escape

DEFAULT_DEPTH = {"layers": 20, "blocks": 2}
LR_FACTORS = [0.01, 0.03, 0.1, 0.3, 1.0]


@st.cache_resource(max_entries=64, show_spinner="Building the backbone…")
def plan_for(backbone: str, strategy: str, unfreeze: int, unit: str, image_size: int,
             n_classes: int, hidden_units: int, weights: str) -> tle.FreezePlan:
    # Builds the backbone without weights (about a second for the big ones): cache per args.
    return tle.describe_freeze(backbone, strategy, unfreeze, unit, image_size, n_classes,
                               hidden_units, weights=weights)


def plan_or_stop(strategy: str, unfreeze: int, unit: str) -> tle.FreezePlan:
    # Only "none" changes the plan (BatchNorm then trains); one cache entry for the rest.
    weights = "none" if draft["weights"] == "none" else "imagenet"
    try:
        return plan_for(entry.key, strategy, unfreeze, unit, size, n_classes, hidden, weights)
    except tle.TLError as exc:
        st.error(md_escape(exc), icon=":material/warning:")
        st.stop()


project = state.require_project()
draft = state.spec_draft()
entry = tle.get_backbone(draft["backbone"])
dataset = state.current_dataset(project)
n_classes = len(dataset.classes) if dataset else 2
size = int(draft["image_size"] or entry.default_size)
hidden = int(draft["hidden_units"])

st.title("Freeze strategy")
st.caption(f"{entry.key} at {size} px, head for {n_classes} classes"
           f"{'' if dataset else ' (no dataset yet: assuming 2)'}. Frozen layers keep their "
           "ImageNet features; trainable ones adapt to your photos.")

structure = plan_or_stop("frozen", 0, "layers")
counts = {"layers": len(structure.layers), "blocks": len(structure.blocks)}


def _on_unit_change() -> None:
    unit = st.session_state["freeze_unit"]
    st.session_state["freeze_depth"] = min(DEFAULT_DEPTH[unit], counts[unit])


left, right = st.columns([0.42, 0.58], gap="large")
with left:
    widgets.seed("freeze_strategy", draft["strategy"])
    strategy = st.radio(
        "Strategy", tle.STRATEGIES, key="freeze_strategy",
        format_func=widgets.STRATEGY_NAMES.get,
        captions=[tle.STRATEGY_HELP[s] for s in tle.STRATEGIES],
    )
    unfreeze, unit = int(draft["unfreeze"]), draft["unfreeze_unit"]
    if strategy in ("partial", "two-phase"):
        widgets.seed("freeze_unit", unit)
        unit = st.radio("Count the trainable top in", ["layers", "blocks"], key="freeze_unit",
                        horizontal=True, on_change=_on_unit_change,
                        help="A block is a backbone stage (e.g. MobileNet's block_16): "
                        "unfreezing whole blocks never splits one in the middle.")
        depth = unfreeze if unfreeze >= 1 else DEFAULT_DEPTH[unit]
        widgets.seed("freeze_depth", min(depth, counts[unit]))
        if st.session_state["freeze_depth"] > counts[unit]:  # another backbone, fewer layers
            st.session_state["freeze_depth"] = counts[unit]
        unfreeze = st.slider(f"Trainable top {unit}", 1, counts[unit], key="freeze_depth",
                             help=f"{entry.key} has {counts['layers']} layers in "
                             f"{counts['blocks']} blocks.")
    updates = {"strategy": strategy, "unfreeze": unfreeze, "unfreeze_unit": unit}
    if strategy == "two-phase":
        cols = st.columns(2)
        widgets.seed("freeze_head_epochs", int(draft["head_epochs"]) or 3)
        updates["head_epochs"] = cols[0].number_input(
            "Head epochs (phase 1)", 1, 200, key="freeze_head_epochs",
            help="Epochs with the backbone frozen before fine-tuning starts.")
        factor = draft["fine_tune_lr_factor"]
        widgets.seed("freeze_lr_factor", factor if factor in LR_FACTORS else 0.1)
        updates["fine_tune_lr_factor"] = cols[1].select_slider(
            "Fine-tune LR × ", LR_FACTORS, key="freeze_lr_factor",
            help="Phase 2 learning rate = the Training page's rate times this factor.")
        st.caption("On the Training page, *epochs* are the fine-tuning epochs of phase 2.")
    state.update_spec(**updates)

    # The learning rate is set on the Training page; the hints read the whole draft.
    widgets.show_hints(tle.spec_hints(tle.RunSpec.from_dict(state.spec_draft())))

with right:
    plan = plan_or_stop(strategy, unfreeze, unit)
    total = plan.trainable_params + plan.frozen_params
    cols = st.columns(3)
    cols[0].metric("Trainable parameters", widgets.format_params(plan.trainable_params),
                   help=f"{plan.trainable_params:,} incl. the head's {plan.head_params:,}")
    cols[1].metric("Frozen parameters", widgets.format_params(plan.frozen_params),
                   help=f"{plan.frozen_params:,}")
    cols[2].metric("Trainable share", f"{plan.trainable_params / max(total, 1):.1%}")
    by_params = st.toggle("Block width by parameter count", key="freeze_by_params")
    st.plotly_chart(widgets.freeze_strip(plan, by_params), width="stretch",
                    config={"displayModeBar": False})
    frozen_bn = sum(
        1 for i, layer in enumerate(plan.layers)
        if layer.batch_norm and not layer.trainable and i >= plan.first_trainable
    )
    notes = []
    if strategy == "two-phase":
        notes.append(f"Phase 1 trains only the head ({widgets.format_params(plan.head_params)} "
                     "parameters); the picture shows phase 2.")
    if frozen_bn:
        notes.append(f"{frozen_bn} BatchNorm layers inside the trainable part stay frozen "
                     "in inference mode: a few hundred photos would only spoil their "
                     "ImageNet statistics.")
    if notes:
        st.caption(" ".join(notes))
    with st.expander(f"All {len(plan.layers)} layers"):
        st.dataframe(
            pd.DataFrame([
                {"layer": layer.name, "block": layer.block, "parameters": layer.params,
                 "trainable": layer.trainable, "BatchNorm": layer.batch_norm}
                for layer in plan.layers
            ]),
            hide_index=True, width="stretch", height=320,
        )

st.page_link("views/training.py", label="Next: training", icon=":material/arrow_forward:")
