"""The tf.data input pipeline, and the one resize every path (training, prediction) shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Decoded, resized images are cached in memory as uint8 when they fit this budget.
MEMORY_CACHE_BYTES = 3 * 1024**3


def resize_pixels(images: Any, size: int) -> Any:
    """RGB pixels (any size, 0-255) -> uint8 pixels of size x size. Used by training and
    prediction alike, so a model sees identical pixels in both."""
    import tensorflow as tf

    resized = tf.image.resize(tf.cast(images, tf.float32), (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def to_model_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """One decoded RGB image -> the uint8 array the model takes."""
    return np.asarray(resize_pixels(rgb, size))


def augmentation_layers(augment: Sequence[str], seed: int) -> Any:
    import keras

    factories = {
        "flip": lambda: keras.layers.RandomFlip("horizontal", seed=seed),
        "rotation": lambda: keras.layers.RandomRotation(0.1, seed=seed),
        "zoom": lambda: keras.layers.RandomZoom(0.15, seed=seed),
        "contrast": lambda: keras.layers.RandomContrast(0.2, seed=seed),
        "translation": lambda: keras.layers.RandomTranslation(0.1, 0.1, seed=seed),
    }
    return keras.Sequential([factories[name]() for name in augment], name="augmentation")


def image_dataset(
    paths: Sequence[str],
    labels: np.ndarray | None,
    size: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    augment: Sequence[str] = (),
    augment_seed: int = 0,
) -> Any:
    """Stored JPEGs -> batches of float32 pixels (0-255), with labels when given.

    Decoding runs in parallel and, when the images fit in memory, only once: later
    epochs read the uint8 cache. Augmentation runs on batches, in training only.
    """
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE

    def load(path: Any) -> Any:
        return resize_pixels(tf.io.decode_jpeg(tf.io.read_file(path), channels=3), size)

    images = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        load, num_parallel_calls=autotune, deterministic=True
    )
    ds = images if labels is None else tf.data.Dataset.zip(
        (images, tf.data.Dataset.from_tensor_slices(labels))
    )
    if len(paths) * size * size * 3 <= MEMORY_CACHE_BYTES:
        ds = ds.cache()
    if shuffle_seed is not None:
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def to_float(*batch: Any) -> Any:
        pixels = tf.cast(batch[0], tf.float32)
        return pixels if len(batch) == 1 else (pixels, batch[1])

    ds = ds.map(to_float, num_parallel_calls=autotune, deterministic=True)
    if augment:
        layers = augmentation_layers(augment, augment_seed)
        ds = ds.map(
            lambda x, y: (layers(x, training=True), y),
            num_parallel_calls=autotune,
            deterministic=True,
        )
    return ds.prefetch(autotune)
