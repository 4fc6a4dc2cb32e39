"""The hardware choices a job makes: its dtype policy and the batch its inference passes
run at (bench/gpu_compute.py measured why), and uint8 pixels into inference graphs."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from conftest import TINY_CLASSES, write_color_classes

from tl_engine.device import (
    GPU_INFERENCE_BATCH,
    INFERENCE_OUTPUT_BYTES,
    MIXED_PRECISION_MIN_BATCH,
    DeviceInfo,
    inference_batch_size,
    inference_pixels,
    precision_policy,
)
from tl_engine.features import feature_key

TENSOR_CORE_GPU = DeviceInfo(kind="GPU", names=("NVIDIA H200",), mixed_precision=True)
OLDER_GPU = DeviceInfo(kind="GPU", names=("Tesla P100",), mixed_precision=False)
TWO_GPUS = DeviceInfo(kind="GPU", names=("NVIDIA H200", "NVIDIA H200"), mixed_precision=True,
                      replicas=2)
CPU = DeviceInfo(kind="CPU")


def test_mixed_precision_only_for_large_batches_on_tensor_core_gpus():
    assert precision_policy(32, TENSOR_CORE_GPU) == "float32"
    assert precision_policy(MIXED_PRECISION_MIN_BATCH - 1, TENSOR_CORE_GPU) == "float32"
    assert precision_policy(MIXED_PRECISION_MIN_BATCH, TENSOR_CORE_GPU) == "mixed_float16"
    assert precision_policy(4096, OLDER_GPU) == "float32"
    assert precision_policy(4096, CPU) == "float32"
    # Each of several GPUs computes its share of the batch.
    assert precision_policy(MIXED_PRECISION_MIN_BATCH, TWO_GPUS) == "float32"
    assert precision_policy(2 * MIXED_PRECISION_MIN_BATCH, TWO_GPUS) == "mixed_float16"
    assert TENSOR_CORE_GPU.label.endswith(f"mixed precision from batch {MIXED_PRECISION_MIN_BATCH}")


def test_inference_passes_fill_a_gpu_and_keep_the_runs_batch_on_a_cpu():
    assert inference_batch_size(32, 224, info=CPU) == 32
    assert inference_batch_size(32, 224, info=TENSOR_CORE_GPU) == GPU_INFERENCE_BATCH
    assert inference_batch_size(2048, 224, info=TENSOR_CORE_GPU) == 2048
    # The same pixels per batch at other sizes: a quarter of the images at twice the side.
    assert inference_batch_size(32, 448, info=OLDER_GPU) == GPU_INFERENCE_BATCH // 4
    assert inference_batch_size(1, 4096, info=TENSOR_CORE_GPU) == 1
    assert inference_batch_size(32, 224, info=TWO_GPUS) == 2 * GPU_INFERENCE_BATCH
    # Large outputs (activations early in a backbone) cap the batch, never below the run's.
    early_cut = 56 * 56 * 144
    assert inference_batch_size(32, 224, early_cut, TENSOR_CORE_GPU) == (
        INFERENCE_OUTPUT_BYTES // (4 * early_cut))
    assert inference_batch_size(32, 224, 10**9, TENSOR_CORE_GPU) == 32


def test_gpus_receive_uint8_pixels_and_cpus_the_float_graph_they_trace_ahead():
    assert inference_pixels(TENSOR_CORE_GPU) == inference_pixels(OLDER_GPU) == "uint8"
    assert inference_pixels(CPU) == "float32"


def test_feature_keys_name_a_mixed_policy_and_keep_float32_keys_as_they_were():
    old = hashlib.sha256(b"MobileNetV2-0.35|imagenet:abc|224").hexdigest()[:32]
    assert feature_key("MobileNetV2-0.35", "imagenet:abc", 224) == old
    assert feature_key("MobileNetV2-0.35", "imagenet:abc", 224, "float32") == old
    assert feature_key("MobileNetV2-0.35", "imagenet:abc", 224, "mixed_float16") != old


def test_uint8_batches_and_graph_give_the_float_pipelines_features(tmp_path):
    import keras

    from tl_engine.features import inference_function
    from tl_engine.pipeline import image_dataset

    write_color_classes(tmp_path, TINY_CLASSES, per_class=3, size=40)
    paths = sorted(str(p) for p in tmp_path.rglob("*.jpg"))
    as_float = list(image_dataset(paths, None, 32, 4))
    as_uint8 = list(image_dataset(paths, None, 32, 4, pixel_type="uint8"))
    assert all(b.dtype == "uint8" for b in as_uint8)
    for f, u in zip(as_float, as_uint8, strict=True):
        np.testing.assert_array_equal(np.asarray(u).astype(np.float32), np.asarray(f))
    with pytest.raises(ValueError, match="augmentation"):
        image_dataset(paths, None, 32, 4, augment=("flip",), pixel_type="uint8")

    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3, kernel_initializer="glorot_uniform")(inputs / 255.0))
    model = keras.Model(inputs, pooled)
    from_float = np.concatenate([inference_function(model, 32)(b) for b in as_float])
    uint8_forward = inference_function(model, 32, "uint8")
    from_uint8 = np.concatenate([uint8_forward(b) for b in as_uint8])
    np.testing.assert_allclose(from_uint8, from_float, rtol=1e-6, atol=1e-6)
    assert uint8_forward.experimental_get_tracing_count() == 1  # a last, smaller batch too
    assert inference_function(model, 32, "uint8") is uint8_forward


def test_features_built_under_mixed_precision_are_keyed_apart_and_a_job_resets_it():
    import keras

    from tl_engine.device import clear_keras_session, reset_precision
    from tl_engine.features import feature_extractor

    try:
        plain = feature_extractor("MobileNetV2-0.35", "none", 32)
        keras.mixed_precision.set_global_policy("mixed_float16")  # as a large-batch GPU job
        mixed = feature_extractor("MobileNetV2-0.35", "none", 32)
        assert mixed.model.dtype_policy.name == "mixed_float16"
        assert mixed.key != plain.key
        reset_precision()
        assert keras.mixed_precision.global_policy().name == "float32"
        keras.mixed_precision.set_global_policy("mixed_float16")
        clear_keras_session(free_memory=False)
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_the_worker_resets_the_policy_after_a_job_that_fails_early(workspace, tiny_dataset):
    """A job that ends before it sets its own policy (here: its dataset's manifest is
    damaged) cannot hand on the policy it found: the next job starts in float32."""
    import keras

    from tl_engine import runs
    from tl_engine.jobs import run_job, submit_run
    from tl_engine.spec import RunSpec

    spec = RunSpec(backbone="MobileNetV2-0.35", weights="none", image_size=32, epochs=1)
    submission = submit_run(workspace, tiny_dataset.project, tiny_dataset.id, spec,
                            start_worker=False)
    manifest = workspace.root / "datasets" / tiny_dataset.id / "manifest.json"
    manifest.write_text("{ damaged")
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")  # left by an earlier job
        assert run_job(workspace, submission.run_id) == runs.RunStatus.FAILED
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
