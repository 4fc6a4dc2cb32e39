"""Which layers of the backbone train: one mechanism under every phase of every strategy.

A phase trains the top N layers (or blocks) of the backbone, none of it, or all of it
(`phases.Phase.trainable_top`): layers from index k on are trainable. With pretrained
weights, BatchNormalization layers stay frozen and, because the backbone is called with
training=False, in inference mode: their running statistics come from ImageNet and a few
hundred images would only spoil them. From random init (weights "none") there is nothing
to keep, so they train like any layer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from .modeling import head_param_count
from .registry import Backbone, get_backbone


@dataclass(frozen=True)
class LayerState:
    name: str
    block: str
    params: int  # every weight of the layer
    learnable: int  # those an optimizer could change (not moving statistics)
    trainable: bool
    batch_norm: bool

    @property
    def trainable_params(self) -> int:
        return self.learnable if self.trainable else 0


@dataclass(frozen=True)
class BlockState:
    name: str
    layers: int
    params: int
    trainable_params: int

    @property
    def trainable(self) -> bool:
        return self.trainable_params > 0


@dataclass(frozen=True)
class FreezePlan:
    trainable_top: int | None  # layers or blocks from the top; 0: none; None: all
    unit: str
    first_trainable: int  # index into the backbone's layers
    layers: tuple[LayerState, ...]
    head_params: int

    @property
    def backbone_trainable_params(self) -> int:
        return sum(layer.trainable_params for layer in self.layers)

    @property
    def trainable_params(self) -> int:
        return self.backbone_trainable_params + self.head_params

    @property
    def frozen_params(self) -> int:
        return sum(layer.params for layer in self.layers) - self.backbone_trainable_params

    @property
    def blocks(self) -> tuple[BlockState, ...]:
        order: dict[str, list[LayerState]] = {}
        for layer in self.layers:
            order.setdefault(layer.block, []).append(layer)
        return tuple(
            BlockState(
                name,
                len(members),
                sum(m.params for m in members),
                sum(m.trainable_params for m in members),
            )
            for name, members in order.items()
        )


def _is_batch_norm(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def first_trainable_index(trainable_top: int | None, unit: str, blocks: list[str]) -> int:
    """Where the trainable top of the backbone starts (`blocks`: each layer's block)."""
    n_layers = len(blocks)
    if trainable_top is None:
        return 0
    if trainable_top <= 0:
        return n_layers
    if unit == "blocks":
        distinct = list(dict.fromkeys(blocks))
        chosen = set(distinct[-trainable_top:])
        return next((i for i, b in enumerate(blocks) if b in chosen), n_layers)
    return max(0, n_layers - trainable_top)


def layer_rate_factors(plan: FreezePlan, decay: float) -> dict[str, float]:
    """Discriminative learning rates: each trainable layer's factor on the head's rate.

    The top block learns at `decay` times the head's rate, the block under it at decay²,
    and so on down; 1 gives every layer the head's rate (and an empty mapping).
    """
    if decay == 1.0:
        return {}
    from_top = list(dict.fromkeys(layer.block for layer in reversed(plan.layers)))
    rank = {block: i for i, block in enumerate(from_top)}
    return {layer.name: decay ** (rank[layer.block] + 1)
            for layer in plan.layers if layer.trainable}


def plan_freeze(
    entry: Backbone,
    backbone: Any,
    trainable_top: int | None,
    unit: str = "layers",
    n_classes: int = 2,
    hidden_units: int = 0,
    freeze_batch_norm: bool = True,
) -> FreezePlan:
    names = [layer.name for layer in backbone.layers]
    blocks = entry.block_names(names)
    start = first_trainable_index(trainable_top, unit, blocks)
    layers = tuple(
        LayerState(
            name=layer.name,
            block=block,
            params=int(sum(int(np.prod(w.shape)) for w in layer.weights)),
            learnable=int(sum(int(np.prod(w.shape)) for w in layer.weights
                              if "moving_" not in w.path)),
            trainable=(
                i >= start
                and bool(layer.weights)
                and not (freeze_batch_norm and _is_batch_norm(layer))
            ),
            batch_norm=_is_batch_norm(layer),
        )
        for i, (layer, block) in enumerate(zip(backbone.layers, blocks, strict=True))
    )
    feature_dim = int(backbone.output_shape[-1])
    return FreezePlan(
        trainable_top, unit, start, layers,
        head_param_count(feature_dim, n_classes, hidden_units),
    )


def apply_freeze(backbone: Any, plan: FreezePlan) -> None:
    """Make the backbone's trainable flags match the plan (recompile the model afterwards)."""
    backbone.trainable = plan.backbone_trainable_params > 0
    for layer, state in zip(backbone.layers, plan.layers, strict=True):
        layer.trainable = state.trainable


@functools.lru_cache(maxsize=8)
def _skeleton(key: str, image_size: int) -> Any:
    return get_backbone(key).build(image_size)


def describe_freeze(
    backbone_key: str,
    trainable_top: int | None,
    unit: str = "layers",
    image_size: int = 0,
    n_classes: int = 2,
    hidden_units: int = 0,
    weights: str = "imagenet",
) -> FreezePlan:
    """The plan for a backbone without loading any weights (for previews and the CLI)."""
    entry = get_backbone(backbone_key)
    size = image_size or entry.default_size
    return plan_freeze(
        entry, _skeleton(entry.key, size), trainable_top, unit, n_classes, hidden_units,
        freeze_batch_norm=weights != "none",
    )
