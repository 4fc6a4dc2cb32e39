"""The classifier: RGB pixels -> backbone preprocessing -> backbone -> pooled features -> head.

Preprocessing lives inside the model, so a saved or exported model takes plain RGB
pixels (0-255, the training size) and predicts exactly what the engine predicts.
The head is its own small model so it can be trained alone on cached features and
then sit unchanged inside the complete model.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .registry import Backbone, check_preprocessing, get_backbone
from .spec import RunSpec
from .weights import load_backbone, reset_starting_weights, weights_identity

IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406]) * 255.0
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225]) * 255.0
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


@dataclass
class Classifier:
    model: Any  # pixels -> class probabilities
    backbone: Any  # the keras.applications model inside `model`
    head: Any  # pooled features -> class probabilities
    feature_model: Any  # pixels -> pooled features (shares layers with `model`)
    entry: Backbone


def preprocessing_layers(mode: str) -> list[Any]:
    """Built-in, serialisable Keras layers only, so saved models load without our code.
    Raises ValueError for a mode not in PREPROCESSING_MODES."""
    import keras

    check_preprocessing(mode)
    if mode == "tf":
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_pm1")]
    if mode == "torch":
        return [
            keras.layers.Normalization(
                mean=IMAGENET_MEAN_RGB.tolist(),
                variance=(IMAGENET_STD_RGB**2).tolist(),
                name="imagenet_normalize",
            )
        ]
    if mode == "caffe":
        # RGB->BGR and mean subtraction are one affine map on the channel axis.
        to_bgr = keras.layers.Dense(3, trainable=False, name="rgb_to_bgr_centered")
        to_bgr.build((None, 3))
        to_bgr.set_weights([np.eye(3)[::-1].astype("float32"), -CAFFE_MEAN_BGR.astype("float32")])
        return [to_bgr]
    return []  # "none": the backbone rescales its own input


def build_head(feature_dim: int, n_classes: int, hidden_units: int, dropout: float) -> Any:
    import keras

    features = keras.Input((feature_dim,), name="features")
    x = features
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu", name="hidden")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    # float32 softmax keeps probabilities exact under mixed precision.
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(features, outputs, name="head")


@dataclass
class _Trunk:
    """Pixels -> pooled features: everything in a classifier but its head."""

    pixels: Any
    pooled: Any
    backbone: Any
    feature_model: Any
    random_after: Any  # Python's random state right after the trunk was built


# The last trunk built with `keep=True` (a worker keeps the one its jobs use). Keyed by
# all that decides it, Python's random state before the build included: Keras seeds each
# unseeded initializer from `random`, so the head built after a kept trunk starts exactly
# as it does after a new one (runs seed `random` first: the same seed, the same state).
_KEPT_TRUNK: dict[tuple[Any, ...], _Trunk] = {}


def _trunk_key(spec: RunSpec, entry: Backbone) -> tuple[Any, ...] | None:
    """What a kept trunk must match to be reused; None when none may be: random starting
    weights are drawn anew; under a distribution strategy, variables belong to its scope."""
    import keras
    import tensorflow as tf

    if spec.weights == "none" or tf.distribute.has_strategy():
        return None
    return (entry.key, weights_identity(entry, spec.weights, seed=0), spec.image_size,
            keras.config.dtype_policy().name, random.getstate())


def _build_trunk(spec: RunSpec, entry: Backbone) -> _Trunk:
    import keras

    size = spec.image_size
    backbone = load_backbone(entry, spec.weights, size)
    pixels = keras.Input((size, size, 3), name="pixels")
    x = pixels
    for layer in preprocessing_layers(entry.preprocessing):
        x = layer(x)
    if spec.weights == "none":
        # From scratch there are no statistics worth keeping: BatchNormalization learns.
        x = backbone(x)
    else:
        # training=False keeps BatchNormalization in inference mode even when fine-tuning.
        x = backbone(x, training=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    feature_model = keras.Model(pixels, pooled, name="feature_extractor")
    return _Trunk(pixels, pooled, backbone, feature_model, random.getstate())


def _trunk(spec: RunSpec, entry: Backbone, keep: bool) -> _Trunk:
    key = _trunk_key(spec, entry) if keep else None
    kept = _KEPT_TRUNK.get(key) if key is not None else None
    if kept is not None:
        # A run before may have trained it: back to the starting weights (BatchNorm
        # statistics included) and to the random state a new build would leave.
        reset_starting_weights(entry, spec.weights, kept.backbone)
        random.setstate(kept.random_after)
        return kept
    trunk = _build_trunk(spec, entry)
    if key is not None:
        _KEPT_TRUNK.clear()  # one at a time: a large backbone weighs ~100 MB
        _KEPT_TRUNK[key] = trunk
    return trunk


def build_classifier(spec: RunSpec, n_classes: int, keep: bool = False) -> Classifier:
    """The complete model for a normalized spec, with its starting weights loaded.

    With `keep`, the backbone and its pooling are kept for the next call with the same
    backbone, weights, size and random state, and reused from the last such call: a
    worker running job after job builds them once (their traced inference graph too).
    Only one user of the classifier at a time: a reused backbone is reset for each."""
    import keras

    entry = get_backbone(spec.backbone)
    trunk = _trunk(spec, entry, keep)
    trunk.backbone.trainable = False
    # Keras's flag on a functional model does not reach a layer an earlier run unfroze.
    for layer in trunk.backbone.layers:
        layer.trainable = False
    head = build_head(int(trunk.pooled.shape[-1]), n_classes, spec.hidden_units, spec.dropout)
    outputs = head(trunk.pooled)
    model = keras.Model(trunk.pixels, outputs,
                        name=re.sub(r"\W", "_", f"{entry.key}_classifier"))
    return Classifier(model, trunk.backbone, head, trunk.feature_model, entry)


def head_param_count(feature_dim: int, n_classes: int, hidden_units: int) -> int:
    if hidden_units:
        return feature_dim * hidden_units + hidden_units + hidden_units * n_classes + n_classes
    return feature_dim * n_classes + n_classes
