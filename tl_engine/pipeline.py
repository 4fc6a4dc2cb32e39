"""The tf.data input pipeline, and the one resize every path (training, prediction) shares.

Nothing here holds a dataset's decoded images in memory: a pass streams its images
through a few batches in flight, and shuffling reorders file names, not pixels. Runs that
read the pixels every epoch give `image_dataset` a folder from `pixel_cache`: each image
is then decoded and resized once, and later epochs read its uint8 pixels from disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .processes import process_alive
from .store import Workspace

PIXEL_CACHE_PREFIX = "pixels-"
# Room left on the disk after a pixel cache is full; with less, epochs decode again.
_PIXEL_CACHE_DISK_MARGIN = 1024**3
# What TensorFlow's file matching treats as a pattern: a cache folder whose path holds one
# could not be probed for its files, so such a folder is not used.
_GLOB_CHARACTERS = frozenset("*?[]\\{}")
_resizers: dict[int, Any] = {}


def resize_pixels(images: Any, size: int) -> Any:
    """RGB pixels (any size, 0-255) -> uint8 pixels of size x size. Used by training and
    prediction alike, so a model sees identical pixels in both."""
    import tensorflow as tf

    pixels = tf.cast(images, tf.float32)
    shape = tf.shape(pixels)
    # Antialiasing only matters when an image shrinks; enlarging, it gives the bilinear
    # result (to one level in 255) at about twice the cost.
    shrinks = tf.logical_or(shape[-3] > size, shape[-2] > size)
    resized = tf.cond(
        shrinks,
        lambda: tf.image.resize(pixels, (size, size), antialias=True),
        lambda: tf.image.resize(pixels, (size, size), antialias=False))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _resized_uint8(image: Any, size: int) -> Any:
    """resize_pixels of one uint8 (H, W, 3) image in a graph; an image already at the size
    is passed through, which is what the resize gives it (a scale of 1 weights each pixel
    by 1 and its neighbours by 0), without its cost."""
    import tensorflow as tf

    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
    resized = tf.cond(same, lambda: tf.identity(image), lambda: resize_pixels(image, size))
    return tf.ensure_shape(resized, (size, size, 3))


def to_model_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """One decoded RGB image -> the uint8 array the model takes."""
    if rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[:2] == (size, size):
        return rgb
    resize = _resizers.get(size)
    if resize is None:
        import tensorflow as tf

        # One graph per size with a fixed signature: an eager resize dispatches five ops
        # one by one, this one call, and no image shape makes it trace again.
        resize = _resizers.setdefault(size, tf.function(
            lambda image: resize_pixels(image, size),
            input_signature=[tf.TensorSpec((None, None, 3), tf.uint8)]))
    return np.asarray(resize(np.asarray(rgb, dtype=np.uint8)))


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
    cache_dir: str | os.PathLike[str] | None = None,
    pixel_type: str = "float32",
) -> Any:
    """Stored JPEGs -> batches of float32 pixels (0-255), with labels when given; with
    `pixel_type="uint8"`, uint8 pixels, for a graph that casts them where it runs (a GPU
    then receives a quarter of the bytes). Augmentation takes float32.

    Decoding runs in parallel, a few batches ahead, and holds no more than those: the
    order is shuffled (every epoch, by `shuffle_seed`) before any image is decoded. With
    `cache_dir` (a folder from `pixel_cache`), each image's uint8 pixels at `size` are kept
    there the first time it is decoded and read back on later passes; the files at `paths`
    must not change while the folder lives (the workspace's images are named by their
    content, so they never do). Augmentation runs on batches, in training only.
    """
    import tensorflow as tf

    if pixel_type not in ("float32", "uint8"):
        raise ValueError(f"pixel_type must be float32 or uint8, not {pixel_type!r}")
    if pixel_type == "uint8" and augment:
        raise ValueError("augmentation works on float32 pixels")
    autotune = tf.data.AUTOTUNE
    paths = [str(p) for p in paths]
    cache = _usable_cache(cache_dir, len(paths), size)
    load = _decode_fn(size) if cache is None else _cached_decode_fn(size)
    sources: Any = paths if cache is None else (
        paths, [str(cache / _cache_name(path, size)) for path in paths])
    ds = tf.data.Dataset.from_tensor_slices(sources)
    if labels is not None:
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(labels)))
    if shuffle_seed is not None:
        # Shuffling names, not pixels, gives the same order with a buffer of file names.
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)

    def decode(*element: Any) -> Any:
        if labels is None:
            return load(*element)
        source, label = element
        return (load(*source) if isinstance(source, tuple) else load(source)), label

    ds = ds.map(decode, num_parallel_calls=autotune, deterministic=True).batch(batch_size)
    if pixel_type == "uint8":
        return ds.prefetch(autotune)

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


def _decode_fn(size: int) -> Any:
    import tensorflow as tf

    def load(path: Any) -> Any:
        return _resized_uint8(tf.io.decode_jpeg(tf.io.read_file(path), channels=3), size)

    return load


def _cached_decode_fn(size: int) -> Any:
    """(JPEG path, cache file) -> uint8 pixels: from the cache file when it holds a whole
    image, else decoded (and written there for the next pass)."""
    import tensorflow as tf

    decode = _decode_fn(size)
    # A serialized uint8 tensor of one shape always has this length: a file cut short (a
    # worker killed mid-write, two writers of a duplicate image) reads as absent.
    whole = len(tf.io.serialize_tensor(tf.zeros((size, size, 3), tf.uint8)).numpy())

    def load(path: Any, cached: Any) -> Any:
        present = tf.size(tf.io.matching_files(cached)) > 0
        data = tf.cond(present, lambda: tf.io.read_file(cached), lambda: tf.constant(""))

        def read() -> Any:
            return tf.ensure_shape(tf.io.parse_tensor(data, tf.uint8), (size, size, 3))

        def decode_and_keep() -> Any:
            pixels = decode(path)
            with tf.control_dependencies([tf.io.write_file(cached,
                                                           tf.io.serialize_tensor(pixels))]):
                return tf.identity(pixels)

        return tf.cond(tf.equal(tf.strings.length(data), whole), read, decode_and_keep)

    return load


def _cache_name(path: str, size: int) -> str:
    return hashlib.sha256(f"{path}|{size}".encode()).hexdigest()[:40] + ".u8"


def _usable_cache(cache_dir: str | os.PathLike[str] | None, images: int,
                  size: int) -> Path | None:
    """The cache folder when pixels can be kept there: it exists, its path is no file
    pattern, and the disk has room for every image with a margin to spare."""
    if cache_dir is None:
        return None
    folder = Path(cache_dir)
    if not folder.is_dir() or _GLOB_CHARACTERS & set(str(folder)):
        return None
    needed = images * (size * size * 3 + 256) + _PIXEL_CACHE_DISK_MARGIN
    if shutil.disk_usage(folder).free < needed:
        return None
    return folder


@contextmanager
def pixel_cache(ws: Workspace) -> Iterator[Path]:
    """A folder under the workspace's tmp/ for `image_dataset(cache_dir=...)`, removed
    when the block ends. Folders left by processes that died (a killed worker) are removed
    on the way in."""
    root = ws.tmp_dir
    root.mkdir(parents=True, exist_ok=True)
    remove_orphan_pixel_caches(ws)
    folder = Path(tempfile.mkdtemp(prefix=f"{PIXEL_CACHE_PREFIX}{os.getpid()}-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_orphan_pixel_caches(ws: Workspace) -> list[Path]:
    """Remove pixel-cache folders whose process is gone; returns those removed."""
    removed = []
    for folder in ws.tmp_dir.glob(f"{PIXEL_CACHE_PREFIX}*-*"):
        owner = folder.name.removeprefix(PIXEL_CACHE_PREFIX).split("-", 1)[0]
        if folder.is_dir() and owner.isdigit() and not process_alive(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed

