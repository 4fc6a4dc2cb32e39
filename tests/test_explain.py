"""Grad-CAM finds the last convolutional feature map of every backbone in the registry by
itself, reproduces the model's own scores through its split, works under mixed precision;
the confusion-matrix drill-down reads stored evaluations, old ones included."""

from __future__ import annotations

import numpy as np
import pytest

import tl_engine as tle
from tl_engine.explain import JET, GradCam, colorize, overlay, resize_heat
from tl_engine.modeling import build_classifier
from tl_engine.registry import BACKBONES
from tl_engine.scoring import evaluate_predictions


def _size(key: str) -> int:
    # The smallest input each accepts, at least 64 px so most keep a 2x2 map.
    return max(64, BACKBONES[key].min_size)


@pytest.mark.parametrize("key", list(BACKBONES))
def test_grad_cam_finds_the_last_feature_map_of_every_backbone(key):
    size = _size(key)
    clf = build_classifier(tle.RunSpec(backbone=key, weights="none", image_size=size), 3)
    cam = GradCam(clf.model)
    # The map is the nested backbone's output: rows x columns x its channels.
    assert cam.feature_layer == clf.backbone.name
    assert len(cam.feature_shape) == 3
    assert cam.feature_shape == tuple(clf.backbone.output.shape[1:])
    assert cam.feature_shape[-1] == BACKBONES[key].feature_dim
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    heat, logits = cam.heatmap(pixels)
    assert heat.shape == cam.feature_shape[:2] and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    # Front, tail and the last Dense's logits are the model itself, split in two.
    probabilities = np.asarray(clf.model.predict_on_batch(pixels[None].astype(np.float32)))[0]
    softmax = np.exp(logits - logits.max())
    np.testing.assert_allclose(softmax / softmax.sum(), probabilities, atol=1e-5)


def test_grad_cam_works_under_mixed_precision(keras_home):
    import keras

    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(3)  # the head's random start, whatever ran before
    try:
        # ImageNet weights: a random backbone's deep activations are ~1e-10, zero in float16.
        clf = build_classifier(tle.RunSpec(backbone="MobileNetV2-0.35", weights="imagenet",
                                           image_size=96), 2)
        cam = GradCam(clf.model)
        pixels = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
        heats = [cam.heatmap(pixels, class_index=k) for k in (0, 1)]
    finally:
        keras.mixed_precision.set_global_policy(before)
    assert clf.backbone.compute_dtype == "float16"
    for heat, _ in heats:
        assert heat.dtype == np.float32 and np.isfinite(heat).all() and heat.shape == (3, 3)
    # Grad-CAM keeps what speaks for a class (ReLU): with a random head one class may have
    # nothing in its favour (all zero); the other's map is normalised to a peak of 1.
    assert max(float(heat.max()) for heat, _ in heats) == pytest.approx(1.0)
    logits = heats[1][1]
    assert logits.dtype == np.float32 and np.isfinite(logits).all()


def test_colouring_and_resizing():
    assert JET.shape == (256, 3) and JET.dtype == np.uint8
    assert tuple(JET[0]) == (0, 0, 128) and tuple(JET[-1]) == (128, 0, 0)  # as matplotlib's
    heat = np.array([[0.0, 1.0], [0.5, 0.0]], dtype=np.float32)
    big = resize_heat(heat, width=30, height=20)
    assert big.shape == (20, 30) and 0.0 <= big.min() and big.max() <= 1.0
    assert big[0, -1] > big[0, 0]  # the hot corner stays where it was
    rgb = np.full((20, 30, 3), 200, dtype=np.uint8)
    blended = overlay(rgb, big)
    assert blended.shape == rgb.shape and blended.dtype == np.uint8
    assert colorize(np.ones((1, 1)))[0, 0, 0] > colorize(np.zeros((1, 1)))[0, 0, 0]


def _split() -> dict:
    y_true = np.array([0, 0, 0, 1, 1, 2])
    probabilities = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1],
                              [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.0, 0.1, 0.9]])
    images = [{"hash": f"h{i}", "filename": f"f{i}.jpg"} for i in range(6)]
    return evaluate_predictions(y_true, probabilities, ["ant", "bee", "wasp"], images)


def test_drill_down_lists_the_images_of_a_cell_and_the_most_confused_pairs():
    split = _split()
    assert tle.confused_pairs(split) == [("ant", "bee", 2), ("bee", "wasp", 1)]
    assert tle.confused_pairs(split, limit=1) == [("ant", "bee", 2)]
    cell = tle.cell_images(split, "ant", "bee")
    assert [c["filename"] for c in cell] == ["f1.jpg", "f2.jpg"]  # most confident first
    assert cell[0]["confidence"] == pytest.approx(0.7)
    assert list(cell[0]["probabilities"]) == ["bee", "ant", "wasp"]
    assert [c["filename"] for c in tle.cell_images(split, "bee", "bee")] == ["f3.jpg"]
    assert tle.cell_images(split, "wasp", "ant") == []


def test_drill_down_reads_evaluations_stored_before_per_image_outcomes():
    old = {k: v for k, v in _split().items() if k != "predictions"}
    assert [c["filename"] for c in tle.cell_images(old, "ant", "bee")] == ["f1.jpg", "f2.jpg"]
    assert tle.cell_images(old, "bee", "bee") is None  # correct images were never stored
