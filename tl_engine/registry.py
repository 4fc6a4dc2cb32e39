"""The table of backbones. Adding a backbone is adding one entry to BACKBONES."""

from __future__ import annotations

import difflib
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


@dataclass(frozen=True, kw_only=True)
class Backbone:
    """One row of the table; keyword-only, so every entry names what each value is."""

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
    # Its layers (the input layer included) and blocks: what a trainable top can count,
    # known without building it (checked against the built model in the tests).
    layer_count: int = 0
    block_count: int = 0
    family: str = ""

    def __post_init__(self) -> None:
        # An unknown mode would otherwise build a model that feeds raw 0-255 pixels to a
        # backbone trained on normalised ones: it trains, badly, and nothing says why.
        check_preprocessing(self.preprocessing, self.key)

    def top_limit(self, unit: str) -> int:
        """The most layers (or blocks) a trainable top can count; 0 when not known."""
        return self.block_count if unit == "blocks" else self.layer_count

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


def check_preprocessing(mode: str, backbone: str | None = None) -> None:
    """Raise ValueError unless `mode` is one of PREPROCESSING_MODES."""
    if mode not in PREPROCESSING_MODES:
        where = f"backbone {backbone!r}: " if backbone else ""
        raise ValueError(
            f"{where}unknown preprocessing {mode!r}; use one of "
            f"{', '.join(PREPROCESSING_MODES)}"
        )


BACKBONES: dict[str, Backbone] = {
    entry.key: entry
    for entry in [
        Backbone(
            key="MobileNetV2-1.0", constructor="MobileNetV2", kwargs={"alpha": 1.0},
            family="MobileNet", default_size=224, min_size=32, preprocessing="tf",
            weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            params=2_257_984, feature_dim=1280, imagenet_top1=0.713,
            block_pattern=r"^(expanded_conv|block_\d+|Conv_1)(?:_|$)",
            layer_count=154, block_count=19,
        ),
        Backbone(
            key="MobileNetV2-0.35", constructor="MobileNetV2", kwargs={"alpha": 0.35},
            family="MobileNet", default_size=224, min_size=32, preprocessing="tf",
            weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
            params=410_208, feature_dim=1280, imagenet_top1=0.603,
            block_pattern=r"^(expanded_conv|block_\d+|Conv_1)(?:_|$)",
            layer_count=154, block_count=19,
        ),
        Backbone(
            key="MobileNet-0.25", constructor="MobileNet", kwargs={"alpha": 0.25},
            family="MobileNet", default_size=224, min_size=32, preprocessing="tf",
            weights_file="mobilenet_2_5_224_tf_no_top.h5",
            params=218_544, feature_dim=256, imagenet_top1=0.498,
            block_pattern=r"^conv_(?:dw|pw)_(\d+)",
            layer_count=86, block_count=14,
        ),
        Backbone(
            key="MobileNetV3Small", constructor="MobileNetV3Small",
            family="MobileNet", default_size=224, min_size=32, preprocessing="none",
            weights_file="weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
            params=939_120, feature_dim=576, imagenet_top1=0.681,
            block_pattern=r"^(expanded_conv(?:_\d+)?)_|^(conv_1)",
            layer_count=157, block_count=13,
        ),
        Backbone(
            key="MobileNetV3Large", constructor="MobileNetV3Large",
            family="MobileNet", default_size=224, min_size=32, preprocessing="none",
            weights_file="weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
            params=2_996_352, feature_dim=960, imagenet_top1=0.756,
            block_pattern=r"^(expanded_conv(?:_\d+)?)_|^(conv_1)",
            layer_count=187, block_count=17,
        ),
        Backbone(
            key="EfficientNetB0", constructor="EfficientNetB0",
            family="EfficientNet", default_size=224, min_size=32, preprocessing="none",
            weights_file="efficientnetb0_notop.h5",
            params=4_049_571, feature_dim=1280, imagenet_top1=0.771,
            block_pattern=r"^(block\d+[a-z])_|^(top)_",
            layer_count=237, block_count=18,
        ),
        Backbone(
            key="EfficientNetV2B0", constructor="EfficientNetV2B0",
            family="EfficientNet", default_size=224, min_size=32, preprocessing="none",
            weights_file="efficientnetv2-b0_notop.h5",
            params=5_919_312, feature_dim=1280, imagenet_top1=0.787,
            block_pattern=r"^(block\d+[a-z])_|^(top)_",
            layer_count=270, block_count=23,
        ),
        Backbone(
            key="ResNet50", constructor="ResNet50",
            family="ResNet", default_size=224, min_size=32, preprocessing="caffe",
            weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            params=23_587_712, feature_dim=2048, imagenet_top1=0.749,
            block_pattern=r"^(conv\d_block\d+)_",
            layer_count=175, block_count=17,
        ),
        Backbone(
            key="ResNet50V2", constructor="ResNet50V2",
            family="ResNet", default_size=224, min_size=32, preprocessing="tf",
            weights_file="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            params=23_564_800, feature_dim=2048, imagenet_top1=0.76,
            block_pattern=r"^(conv\d_block\d+)_|^(post)_",
            layer_count=190, block_count=18,
        ),
        Backbone(
            key="VGG16", constructor="VGG16",
            family="VGG", default_size=224, min_size=32, preprocessing="caffe",
            weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            params=14_714_688, feature_dim=512, imagenet_top1=0.713,
            block_pattern=r"^(block\d)_",
            layer_count=19, block_count=6,
        ),
        Backbone(
            key="DenseNet121", constructor="DenseNet121",
            family="DenseNet", default_size=224, min_size=32, preprocessing="torch",
            weights_file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
            params=7_037_504, feature_dim=1024, imagenet_top1=0.75,
            block_pattern=r"^(conv\d_block\d+)_|^(pool\d)_",
            layer_count=427, block_count=62,
        ),
        Backbone(
            key="InceptionV3", constructor="InceptionV3",
            family="Inception", default_size=299, min_size=75, preprocessing="tf",
            weights_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            params=21_802_784, feature_dim=2048, imagenet_top1=0.779,
            block_pattern=r"^(mixed\d+)$", block_ends_at_match=True,
            layer_count=311, block_count=11,
        ),
        Backbone(
            key="Xception", constructor="Xception",
            family="Inception", default_size=299, min_size=71, preprocessing="tf",
            weights_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            params=20_861_480, feature_dim=2048, imagenet_top1=0.79,
            block_pattern=r"^(block\d+)_",
            layer_count=132, block_count=15,
        ),
        Backbone(
            key="ConvNeXtTiny", constructor="ConvNeXtTiny",
            family="ConvNeXt", default_size=224, min_size=32, preprocessing="none",
            weights_file="convnext_tiny_notop.h5",
            params=27_820_128, feature_dim=768, imagenet_top1=0.813,
            block_pattern=r"_(stage_\d_block_\d+)_",
            layer_count=133, block_count=19,
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
        close = difflib.get_close_matches(str(key), list(BACKBONES), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise SpecError(f"Unknown backbone {key!r}.{hint} Choose one of: {known}.") from None
