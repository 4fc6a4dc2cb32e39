"""The classifier: RGB pixels -> backbone preprocessing -> backbone -> pooled features -> head.

Preprocessing lives inside the model, so a saved or exported model takes plain RGB
pixels (0-255, the training size) and predicts exactly what the engine predicts.
The head is its own small model so it can be trained alone on cached features and
then sit unchanged inside the complete model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .registry import Backbone, check_preprocessing, get_backbone
from .spec import RunSpec
from .weights import load_backbone

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


def build_classifier(spec: RunSpec, n_classes: int) -> Classifier:
    """The complete model for a normalized spec, with its starting weights loaded."""
    import keras

    entry = get_backbone(spec.backbone)
    size = spec.image_size
    backbone = load_backbone(entry, spec.weights, size)
    backbone.trainable = False
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
    head = build_head(int(pooled.shape[-1]), n_classes, spec.hidden_units, spec.dropout)
    outputs = head(pooled)
    model = keras.Model(pixels, outputs, name=re.sub(r"\W", "_", f"{entry.key}_classifier"))
    feature_model = keras.Model(pixels, pooled, name="feature_extractor")
    return Classifier(model, backbone, head, feature_model, entry)


def head_param_count(feature_dim: int, n_classes: int, hidden_units: int) -> int:
    if hidden_units:
        return feature_dim * hidden_units + hidden_units + hidden_units * n_classes + n_classes
    return feature_dim * n_classes + n_classes
