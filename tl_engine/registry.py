"""The table of backbones. Adding a backbone is adding one entry to BACKBONES."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError

# Preprocessing modes, applied inside the model so it always takes RGB pixels 0-255:
#   "tf"    -> scale to [-1, 1]
#   "torch" -> scale to [0, 1], then ImageNet mean/std per channel
#   "caffe" -> RGB to BGR, then subtract the ImageNet mean per channel
#   "none"  -> the Keras model already rescales its own input
PREPROCESSING_MODES = ("tf", "torch", "caffe", "none")


@dataclass(frozen=True)
class Backbone:
    key: str
    constructor: str  # attribute of keras.applications
    kwargs: dict[str, Any] = field(default_factory=dict)
    default_size: int = 224
    min_size: int = 32
    preprocessing: str = "tf"
    weights_file: str = ""  # the no-top file Keras caches under $KERAS_HOME/models
    params: int = 0  # parameters without the top, at the default size
    feature_dim: int = 0  # channels of the last feature map (= pooled feature length)
    imagenet_top1: float | None = None  # as published in the Keras documentation
    block_pattern: str = ""  # regex; its first matching group names a layer's block
    block_ends_at_match: bool = False  # True when a matching layer closes its block
    family: str = ""

    def build(self, image_size: int) -> Any:
        """A fresh backbone without its top and without pretrained weights."""
        import keras

        constructor: Callable[..., Any] = getattr(keras.applications, self.constructor)
        return constructor(
            include_top=False,
            weights=None,
            input_shape=(image_size, image_size, 3),
            **self.kwargs,
        )

    def build_imagenet(self) -> Any:
        """The backbone through Keras's own loader: cache in $KERAS_HOME, else download."""
        import keras

        constructor: Callable[..., Any] = getattr(keras.applications, self.constructor)
        return constructor(
            include_top=False,
            weights="imagenet",
            input_shape=(self.default_size, self.default_size, 3),
            **self.kwargs,
        )

    def block_names(self, layer_names: list[str]) -> list[str]:
        """The block each layer belongs to; layers before the first block are 'stem'."""
        if not self.block_pattern:
            return list(layer_names)
        pattern = re.compile(self.block_pattern)
        if self.block_ends_at_match:
            blocks: list[str] = []
            pending = 0
            for name in layer_names:
                pending += 1
                match = pattern.search(name)
                if match:
                    label = next(g for g in match.groups() if g)
                    blocks.extend([label] * pending)
                    pending = 0
            blocks.extend(["top"] * pending)
            return blocks
        current = "stem"
        blocks = []
        for name in layer_names:
            match = pattern.search(name)
            if match:
                current = next(g for g in match.groups() if g)
            blocks.append(current)
        return blocks


BACKBONES: dict[str, Backbone] = {
    entry.key: entry
    for entry in [
        Backbone(
            "MobileNetV2-1.0", "MobileNetV2", {"alpha": 1.0}, 224, 32, "tf",
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            2_257_984, 1280, 0.713, r"^(expanded_conv|block_\d+|Conv_1)(?:_|$)",
            family="MobileNet",
        ),
        Backbone(
            "MobileNetV2-0.35", "MobileNetV2", {"alpha": 0.35}, 224, 32, "tf",
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
            410_208, 1280, 0.603, r"^(expanded_conv|block_\d+|Conv_1)(?:_|$)",
            family="MobileNet",
        ),
        Backbone(
            "MobileNet-0.25", "MobileNet", {"alpha": 0.25}, 224, 32, "tf",
            "mobilenet_2_5_224_tf_no_top.h5",
            218_544, 256, 0.498, r"^conv_(?:dw|pw)_(\d+)", family="MobileNet",
        ),
        Backbone(
            "MobileNetV3Small", "MobileNetV3Small", {}, 224, 32, "none",
            "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
            939_120, 576, 0.681, r"^(expanded_conv(?:_\d+)?)_|^(conv_1)", family="MobileNet",
        ),
        Backbone(
            "MobileNetV3Large", "MobileNetV3Large", {}, 224, 32, "none",
            "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
            2_996_352, 960, 0.756, r"^(expanded_conv(?:_\d+)?)_|^(conv_1)", family="MobileNet",
        ),
        Backbone(
            "EfficientNetB0", "EfficientNetB0", {}, 224, 32, "none",
            "efficientnetb0_notop.h5",
            4_049_571, 1280, 0.771, r"^(block\d+[a-z])_|^(top)_", family="EfficientNet",
        ),
        Backbone(
            "EfficientNetV2B0", "EfficientNetV2B0", {}, 224, 32, "none",
            "efficientnetv2-b0_notop.h5",
            5_919_312, 1280, 0.787, r"^(block\d+[a-z])_|^(top)_", family="EfficientNet",
        ),
        Backbone(
            "ResNet50", "ResNet50", {}, 224, 32, "caffe",
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            23_587_712, 2048, 0.749, r"^(conv\d_block\d+)_", family="ResNet",
        ),
        Backbone(
            "ResNet50V2", "ResNet50V2", {}, 224, 32, "tf",
            "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            23_564_800, 2048, 0.760, r"^(conv\d_block\d+)_|^(post)_", family="ResNet",
        ),
        Backbone(
            "VGG16", "VGG16", {}, 224, 32, "caffe",
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            14_714_688, 512, 0.713, r"^(block\d)_", family="VGG",
        ),
        Backbone(
            "DenseNet121", "DenseNet121", {}, 224, 32, "torch",
            "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
            7_037_504, 1024, 0.750, r"^(conv\d_block\d+)_|^(pool\d)_", family="DenseNet",
        ),
        Backbone(
            "InceptionV3", "InceptionV3", {}, 299, 75, "tf",
            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            21_802_784, 2048, 0.779, r"^(mixed\d+)$", block_ends_at_match=True,
            family="Inception",
        ),
        Backbone(
            "Xception", "Xception", {}, 299, 71, "tf",
            "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            20_861_480, 2048, 0.790, r"^(block\d+)_", family="Inception",
        ),
        Backbone(
            "ConvNeXtTiny", "ConvNeXtTiny", {}, 224, 32, "none",
            "convnext_tiny_notop.h5",
            27_820_128, 768, 0.813, r"_(stage_\d_block_\d+)_", family="ConvNeXt",
        ),
    ]
}


def list_backbones() -> list[Backbone]:
    return list(BACKBONES.values())


def get_backbone(key: str) -> Backbone:
    try:
        return BACKBONES[key]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise SpecError(f"Unknown backbone {key!r}. Choose one of: {known}.") from None
