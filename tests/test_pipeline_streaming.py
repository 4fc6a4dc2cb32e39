"""The input pipeline streams: shuffled file names (same order as shuffled pixels), an
on-disk pixel cache for multi-epoch runs, and feature passes stored as they go."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_CLASSES, write_color_classes


@pytest.fixture
def photo_paths(tmp_path):
    """Real JPEGs of two sizes: some at the input size (no resize), some larger."""
    write_color_classes(tmp_path / "a", TINY_CLASSES, per_class=6, size=32)
    write_color_classes(tmp_path / "b", TINY_CLASSES, per_class=4, size=57, seed=1)
    return sorted(str(p) for p in tmp_path.rglob("*.jpg"))


def _decoded(paths, size):
    import tensorflow as tf

    from tl_engine.pipeline import resize_pixels

    return np.stack([resize_pixels(tf.io.decode_jpeg(tf.io.read_file(p), channels=3),
                                   size).numpy() for p in paths])


def _epochs(ds, n):
    return [[tuple(np.asarray(t) for t in batch) for batch in ds] for _ in range(n)]


def test_shuffled_stream_gives_the_batches_of_shuffled_decoded_images(photo_paths):
    import tensorflow as tf

    from tl_engine.pipeline import image_dataset

    paths = photo_paths
    labels = np.eye(3, dtype=np.float32)[np.arange(len(paths)) % 3]
    pixels = _decoded(paths, 32)
    reference = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(pixels),
                                     tf.data.Dataset.from_tensor_slices(labels)))
    reference = reference.shuffle(len(paths), seed=5, reshuffle_each_iteration=True).batch(8)
    expected = _epochs(reference, 2)
    got = _epochs(image_dataset(paths, labels, 32, 8, shuffle_seed=5), 2)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(*expected, strict=True))
    for want_epoch, got_epoch in zip(expected, got, strict=True):
        for (want_x, want_y), (got_x, got_y) in zip(want_epoch, got_epoch, strict=True):
            np.testing.assert_array_equal(got_x, want_x.astype(np.float32))
            np.testing.assert_array_equal(got_y, want_y)


def test_pixel_cache_serves_later_passes_and_is_removed(photo_paths, workspace):
    from tl_engine.pipeline import image_dataset, pixel_cache

    paths = photo_paths
    expected = _decoded(paths, 32).astype(np.float32)
    with pixel_cache(workspace) as folder:
        assert folder.parent == workspace.tmp_dir
        ds = image_dataset(paths, None, 32, 7, cache_dir=folder)
        first = np.concatenate([np.asarray(b) for b in ds])
        np.testing.assert_array_equal(first, expected)
        assert len(list(folder.iterdir())) == len(paths)
        # With the photos gone, only the cache can give the pixels.
        moved = {p: p + ".away" for p in paths}
        for path, away in moved.items():
            os.replace(path, away)
        try:
            again = np.concatenate([np.asarray(b) for b in ds])
        finally:
            for path, away in moved.items():
                os.replace(away, path)
        np.testing.assert_array_equal(again, expected)
        # A file cut short (a worker killed while writing it) reads as absent.
        damaged = sorted(folder.iterdir())[0]
        damaged.write_bytes(damaged.read_bytes()[:100])
        np.testing.assert_array_equal(np.concatenate([np.asarray(b) for b in ds]), expected)
    assert not folder.exists()


def test_pixel_caches_of_dead_processes_are_removed(workspace):
    from tl_engine.pipeline import PIXEL_CACHE_PREFIX, pixel_cache

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    orphan = workspace.tmp_dir / f"{PIXEL_CACHE_PREFIX}{gone.stdout.strip()}-abc"
    orphan.mkdir(parents=True)
    (orphan / "x.u8").write_bytes(b"pixels")
    ours = workspace.tmp_dir / f"{PIXEL_CACHE_PREFIX}{os.getpid()}-kept"
    ours.mkdir()
    with pixel_cache(workspace):
        assert not orphan.exists()
        assert ours.exists()  # its process (this one) is alive


def test_model_input_of_an_image_at_the_input_size_is_the_resize(photo_paths):
    from PIL import Image

    from tl_engine.pipeline import resize_pixels, to_model_input

    paths = photo_paths
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(to_model_input(rgb, 32),
                                      resize_pixels(rgb, 32).numpy())
        np.testing.assert_array_equal(to_model_input(rgb, 48),
                                      resize_pixels(rgb, 48).numpy())


def test_a_cancelled_feature_pass_keeps_what_it_computed(workspace, tiny_dataset):
    from tl_engine.features import (
        FeatureCache,
        FeaturesCancelled,
        extract_features,
        feature_extractor,
    )
    from tl_engine.pipeline import image_dataset

    records = list(tiny_dataset.records)
    extractor = feature_extractor("MobileNetV2-0.35", weights="none", image_size=32)
    with pytest.raises(FeaturesCancelled):
        extract_features(workspace, extractor.model, extractor.key, [("images", records)], 8,
                         lambda progress: True)
    assert FeatureCache(workspace).count(extractor.key) == 8  # the first batch
    found = extract_features(workspace, extractor.model, extractor.key,
                             [("images", records), ("again", records[:5])], 8)
    assert (found.computed, found.reused) == (len(records) - 8, 8 + 5)
    pixels = np.concatenate([np.asarray(b) for b in image_dataset(
        [str(workspace.image_path(r.hash)) for r in records], None, 32, 8)])
    np.testing.assert_allclose(found.matrices[0], extractor.model.predict(pixels, verbose=0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(found.matrices[1], found.matrices[0][:5])


def test_a_pixel_path_run_trains_and_leaves_no_pixel_cache(workspace, tiny_dataset):
    """A fully trainable backbone runs on pixels every epoch, through the run's pixel cache,
    which goes with the run."""
    from conftest import train_tiny_run

    from tl_engine.pipeline import PIXEL_CACHE_PREFIX

    run = train_tiny_run(workspace, tiny_dataset, strategy="full", epochs=2)
    assert run.status == "completed", run.error
    assert run.result.epochs_run == 2
    assert not list(workspace.tmp_dir.glob(f"{PIXEL_CACHE_PREFIX}*"))


def test_a_range_test_on_pixels_streams_photos_over_several_passes(workspace, tiny_dataset):
    """Fine-tuning with augmentation runs the range test on pixels: photos decoded as
    batches are needed, for as many steps as asked: about three passes over the photos."""
    from tl_engine import runs
    from tl_engine.lr_find import run_range_test, submit_lr_find
    from tl_engine.spec import RunSpec

    spec = RunSpec(backbone="MobileNetV2-0.35", weights="none", image_size=32, batch_size=5,
                   strategy="partial", unfreeze=2, augment=("flip",), seed=4)
    job = submit_lr_find(workspace, "test", tiny_dataset.id, spec, start_worker=False)
    run = runs.get_run(workspace, job.run_id)
    n_train = len(_train_split(workspace, run))
    steps = 3 * -(-n_train // 5)  # about three passes
    summary = run_range_test(workspace, run, steps=steps)
    assert summary is not None and summary["phase"] == "fine-tune"
    assert summary["steps"] == steps and summary["batch_size"] == 5
    assert len(summary["raw_losses"]) == steps
    assert all(loss is not None for loss in summary["raw_losses"][:steps // 2])


def _train_split(workspace, run):
    from tl_engine.datasets import load_dataset, split_records

    spec = run.spec
    return split_records(load_dataset(workspace, run.dataset_id), spec.val_split,
                         spec.test_split, spec.seed)["train"]
