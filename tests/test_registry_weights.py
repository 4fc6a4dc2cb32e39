"""The backbone registry and where starting weights come from, offline."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import PROJECT_ROOT

from tl_engine.errors import WeightsUnavailable
from tl_engine.modeling import preprocessing_layers
from tl_engine.registry import BACKBONES, Backbone, get_backbone
from tl_engine.weights import load_backbone, weights_identity, weights_status

EXTRA_WEIGHTS = "mobilenet_v2_1.0_224_from_coral_quant_no_top.weights.h5"
REQUIRED = [
    "MobileNetV2-1.0", "MobileNetV2-0.35", "MobileNet-0.25", "MobileNetV3Small",
    "MobileNetV3Large", "EfficientNetB0", "EfficientNetV2B0", "ResNet50", "ResNet50V2",
    "VGG16", "DenseNet121", "InceptionV3", "Xception", "ConvNeXtTiny",
]


def test_registry_has_every_required_backbone_with_complete_entries():
    for key in REQUIRED:
        entry = get_backbone(key)
        assert entry.default_size >= entry.min_size >= 32
        assert entry.weights_file.endswith(".h5")
        assert entry.params > 100_000 and entry.feature_dim > 0
        assert entry.preprocessing in ("tf", "torch", "caffe", "none")
        assert 0.4 < entry.imagenet_top1 < 0.9


def test_an_unknown_preprocessing_mode_is_refused_when_the_entry_is_made():
    entry = get_backbone("MobileNetV2-0.35")
    with pytest.raises(ValueError, match=r"backbone 'Tiny': unknown preprocessing 'imagenet'; "
                       r"use one of tf, torch, caffe, none"):
        Backbone(key="Tiny", constructor="MobileNetV2", preprocessing="imagenet")
    with pytest.raises(ValueError, match="unknown preprocessing 'TF'"):
        dataclasses.replace(entry, preprocessing="TF")
    with pytest.raises(TypeError):  # entries name every value
        Backbone("Tiny", "MobileNetV2")  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown preprocessing 'imagenet'"):
        preprocessing_layers("imagenet")
    assert preprocessing_layers("none") == []

@pytest.mark.parametrize("key", ["MobileNetV2-0.35", "MobileNet-0.25", "InceptionV3"])
def test_blocks_cover_every_layer_and_param_count_matches(key):
    entry = get_backbone(key)
    model = entry.build(entry.default_size)
    blocks = entry.block_names([layer.name for layer in model.layers])
    assert len(blocks) == len(model.layers)
    assert len(set(blocks)) >= 10
    assert model.count_params() == entry.params


@pytest.mark.parametrize("key", list(BACKBONES))
def test_layer_and_block_counts_match_the_built_backbone(key):
    entry = get_backbone(key)
    model = entry.build(max(entry.min_size, 75))  # the counts do not depend on the size
    blocks = entry.block_names([layer.name for layer in model.layers])
    assert (entry.layer_count, entry.block_count) == (len(model.layers), len(set(blocks)))


def test_a_trainable_top_beyond_the_backbone_and_a_mistyped_name_are_refused():
    from tl_engine.errors import SpecError
    from tl_engine.spec import RunSpec

    most = RunSpec(backbone="MobileNetV2-0.35", strategy="partial", unfreeze=19,
                   unfreeze_unit="blocks").normalized()
    assert most.unfreeze == 19  # all of its blocks: allowed
    with pytest.raises(SpecError, match="MobileNetV2-0.35 has 19 blocks: the trainable top "
                       r"\(--unfreeze\) can be at most 19 blocks"):
        RunSpec(backbone="MobileNetV2-0.35", strategy="gradual", unfreeze=25,
                unfreeze_unit="blocks").normalized()
    with pytest.raises(SpecError, match="has 154 layers"):
        RunSpec(backbone="MobileNetV2-0.35", strategy="partial", unfreeze=5000).normalized()
    # The frozen strategy has no trainable top: nothing to check.
    assert RunSpec(strategy="frozen", unfreeze=5000).normalized().unfreeze == 0
    with pytest.raises(SpecError, match="Did you mean MobileNetV2-0.35"):
        get_backbone("MobilenetV2-0.35")


def test_weights_status_offline(keras_home):
    assert weights_status(get_backbone("MobileNetV2-0.35")) == "cached"
    assert weights_status(get_backbone("MobileNet-0.25")) == "cached"
    assert weights_status(get_backbone("ResNet50")) == "missing"


def test_imagenet_weights_load_offline_at_any_input_size(keras_home):
    entry = get_backbone("MobileNetV2-0.35")
    reference = entry.build_imagenet()
    resized = load_backbone(entry, "imagenet", 96)
    assert resized.input_shape == (None, 96, 96, 3)
    for mine, theirs in zip(resized.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    mobilenet = load_backbone(get_backbone("MobileNet-0.25"), "imagenet", 128)
    assert mobilenet.output_shape[-1] == 256


def test_missing_weights_fail_fast_naming_file_and_folder(keras_home):
    with pytest.raises(WeightsUnavailable) as info:
        load_backbone(get_backbone("ResNet50"), "imagenet", 64)
    message = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(keras_home / "models") in message


def test_local_weights_file_and_random_init(tmp_path, shared_dir):
    entry = get_backbone("MobileNetV2-1.0")
    extra = shared_dir / "weights" / "extra" / EXTRA_WEIGHTS
    loaded = load_backbone(entry, str(extra), 96)
    reference = entry.build(224)
    reference.load_weights(str(extra))
    for mine, theirs in zip(loaded.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    fresh = load_backbone(entry, "none", 96)
    assert any(not np.allclose(a, b)
               for a, b in zip(loaded.get_weights(), fresh.get_weights(), strict=True))
    assert weights_identity(entry, str(extra), 1).startswith("file:")
    assert weights_identity(entry, "none", 1) != weights_identity(entry, "none", 2)
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        weights_identity(entry, str(tmp_path / "nope.h5"), 1)
    # A file that is no weights file is refused where the run is asked for.
    junk = tmp_path / "junk.h5"
    junk.write_text("not weights\n")
    with pytest.raises(WeightsUnavailable, match="junk.h5 is not a readable HDF5 weights file"):
        weights_identity(entry, str(junk), 1)
    wrong = tmp_path / "wrong.weights.h5"
    get_backbone("MobileNet-0.25").build(224).save_weights(wrong)
    with pytest.raises(WeightsUnavailable, match="does not fit MobileNetV2-1.0") as caught:
        load_backbone(entry, str(wrong), 96)
    assert ".." not in str(caught.value)


def _cli(*args: str, workspace=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tl_engine", *args]
    if workspace is not None:
        command += ["--workspace", str(workspace)]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


def test_cli_backbones_json_lists_availability(keras_home):
    result = _cli("backbones", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["key"]: row for row in json.loads(result.stdout.strip().splitlines()[-1])}
    assert set(REQUIRED) <= set(rows)
    assert rows["MobileNetV2-0.35"]["weights"] == "cached"
    assert rows["VGG16"]["weights"] == "missing"
    assert len(rows) == len(BACKBONES)


def test_cli_reports_missing_weights_in_one_line(keras_home, tiny_data_dir, tmp_path):
    result = _cli("train", "--data", str(tiny_data_dir), "--backbone", "ResNet50",
                  "--image-size", "64", workspace=tmp_path / "ws")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in result.stderr
    bad = _cli("train", "--data", str(tmp_path / "absent"), workspace=tmp_path / "ws")
    assert bad.returncode == 2 and "absent" in bad.stderr and "Traceback" not in bad.stderr
