"""Freeze strategy: which part of the backbone learns in each phase, shown block by block."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import tl_engine as tle
from dashboard import controls, pages, state, widgets
from dashboard.formats import format_params
from dashboard.text import md_escape

DEFAULT_DEPTH = {"layers": 20, "blocks": 2}


@st.cache_resource(max_entries=64, show_spinner="Building the backbone…")
def plan_for(backbone: str, trainable_top: int | None, unit: str, image_size: int,
             n_classes: int, hidden_units: int, weights: str) -> tle.FreezePlan:
    # Builds the backbone without weights (about a second for the big ones): cache per args.
    state.device()
    return tle.describe_freeze(backbone, trainable_top, unit, image_size, n_classes,
                               hidden_units, weights=weights)


def plan_or_stop(trainable_top: int | None, unit: str) -> tle.FreezePlan:
    # Only "none" changes the plan (BatchNorm then trains); one cache entry for the rest.
    weights = "none" if draft["weights"] == "none" else "imagenet"
    try:
        return plan_for(entry.key, trainable_top, unit, size, n_classes, hidden, weights)
    except tle.TLError as exc:
        st.error(md_escape(exc), icon=":material/warning:")
        st.stop()


def phase_table(plan: list[tle.Phase], learning_rate: float) -> pd.DataFrame:
    rows = []
    for phase in plan:
        freeze = plan_or_stop(phase.trainable_top, phase.unit)
        rate = f"{learning_rate * phase.lr_factor:g}"
        if phase.trains_backbone and phase.lr_decay != 1.0:
            rate += f" (× {phase.lr_decay:g} per block down)"
        rows.append({"phase": phase.title, "epochs": phase.epochs,
                     "trains": phase.trainable_text,
                     "parameters": format_params(freeze.trainable_params),
                     "learning rate": rate})
    return pd.DataFrame(rows)


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

structure = plan_or_stop(0, "layers")
counts = {"layers": len(structure.layers), "blocks": len(structure.blocks)}


def _on_unit_change() -> None:
    unit = st.session_state[controls.widget_key("unfreeze_unit")]
    st.session_state[controls.widget_key("unfreeze")] = min(DEFAULT_DEPTH[unit], counts[unit])


left, right = st.columns([0.42, 0.58], gap="large")
with left:
    state.update_spec(strategy=controls.control("strategy", draft))
    names = controls.page_settings("freeze", draft, skip=("strategy",))
    updates = {}
    unit = draft["unfreeze_unit"]
    if "unfreeze_unit" in names:
        unit = updates["unfreeze_unit"] = controls.control(
            "unfreeze_unit", draft, on_change=_on_unit_change)
    if "unfreeze" in names:
        depth = int(draft["unfreeze"]) if int(draft["unfreeze"]) >= 1 else DEFAULT_DEPTH[unit]
        updates["unfreeze"] = controls.control(
            "unfreeze", draft, label=f"Trainable top {unit}", high=counts[unit],
            value=min(depth, counts[unit]),
            more_help=f"{entry.key} has {counts['layers']} layers in {counts['blocks']} blocks.")
    updates.update(controls.grid([n for n in names if n not in updates], draft, columns=2))
    state.update_spec(**updates)

    # The learning rate is set on the Training page; the hints read the whole draft.
    widgets.show_hints(tle.spec_hints(tle.RunSpec.from_dict(state.spec_draft())))

with right:
    try:
        spec = tle.RunSpec.from_dict(state.spec_draft()).normalized()
    except tle.TLError as exc:
        st.error(md_escape(exc), icon=":material/warning:")
        st.stop()
    phases = tle.phases(spec)
    plan = plan_or_stop(phases[-1].trainable_top, phases[-1].unit)
    total = plan.trainable_params + plan.frozen_params
    cols = st.columns(3)
    cols[0].metric("Trainable", format_params(plan.trainable_params),
                   help=f"{plan.trainable_params:,} trainable parameters, incl. the head's "
                        f"{plan.head_params:,}")
    cols[1].metric("Frozen", format_params(plan.frozen_params),
                   help=f"{plan.frozen_params:,} frozen parameters")
    cols[2].metric("Share trained", f"{plan.trainable_params / max(total, 1):.1%}",
                   help="Trainable parameters as a share of all the network's parameters")
    by_params = st.toggle("Block width by parameter count", key="freeze_by_params")
    st.plotly_chart(widgets.freeze_strip(plan, by_params), width="stretch",
                    config={"displayModeBar": False})
    frozen_bn = sum(
        1 for i, layer in enumerate(plan.layers)
        if layer.batch_norm and not layer.trainable and i >= plan.first_trainable
    )
    if len(phases) > 1:
        cached = " The head phase runs on cached features." if phases[0].cached_features \
            else ""
        st.markdown(f"**{len(phases)} phases, {sum(p.epochs for p in phases)} epochs** "
                    f"— the picture shows the last one.{cached}")
        st.dataframe(phase_table(phases, spec.learning_rate), hide_index=True,
                     width="stretch")
    if frozen_bn:
        st.caption(f"{frozen_bn} BatchNorm layers inside the trainable part stay frozen in "
                   "inference mode: a few hundred photos would only spoil their ImageNet "
                   "statistics.")
    with st.expander(f"All {len(plan.layers)} layers"):
        st.dataframe(
            pd.DataFrame([
                {"layer": layer.name, "trainable": layer.trainable,
                 "BatchNorm": layer.batch_norm, "parameters": layer.params,
                 "block": layer.block}
                for layer in plan.layers
            ]),
            hide_index=True, width="stretch", height=320,
            # What trains first: the long layer names would push it out of sight.
            column_config={
                "layer": st.column_config.TextColumn(width="medium"),
                "trainable": st.column_config.CheckboxColumn(width="small"),
                "BatchNorm": st.column_config.CheckboxColumn(width="small"),
                "parameters": st.column_config.NumberColumn(width="small", format="localized"),
            },
        )

st.page_link(pages.TRAINING, label="Next: training", icon=":material/arrow_forward:")
