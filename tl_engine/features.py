"""The feature cache: a frozen backbone runs once per image, ever.

Pooled backbone features are stored in their own SQLite file, keyed by the image's
content hash and everything that determines the features: backbone, weights identity
and input size. Any later run with the same frozen backbone (another head, other
hyper-parameters, after a restart) reads them instead of running the backbone.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .progress import Progress
from .store import Workspace

SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    feature_key TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (feature_key, image_hash)
) WITHOUT ROWID;
"""


def feature_key(backbone_key: str, weights_identity: str, image_size: int,
                policy: str = "float32") -> str:
    """The feature caches' key for a backbone's outputs; `policy`, the Keras dtype policy
    they are computed under (mixed float16 gives other low bits)."""
    raw = f"{backbone_key}|{weights_identity}|{image_size}"
    if policy != "float32":
        raw += f"|{policy}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class FeatureLookup:
    vectors: dict[str, np.ndarray]
    missing: list[str]


class FeatureCache:
    """One table of per-image vectors in the feature-cache file: pooled features (float32)
    by default; `table`/`dtype` give others, such as activations at a freeze boundary."""

    def __init__(self, ws: Workspace, table: str = "features", dtype: Any = np.float32) -> None:
        if not table.isidentifier():
            raise ValueError(f"not a table name: {table!r}")
        self.path = ws.features_db_path
        self.table = table
        self.dtype = np.dtype(dtype)
        with self._connect() as db:
            db.executescript(SCHEMA.format(table=table))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def lookup(self, key: str, image_hashes: Sequence[str]) -> FeatureLookup:
        wanted = list(dict.fromkeys(image_hashes))
        found: dict[str, np.ndarray] = {}
        db = self._connect()
        try:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT image_hash, vector FROM {self.table} "
                    f"WHERE feature_key = ? AND image_hash IN ({marks})",
                    (key, *chunk),
                )
                for image_hash, blob in rows:
                    found[image_hash] = np.frombuffer(blob, dtype=self.dtype)
        finally:
            db.close()
        return FeatureLookup(found, [h for h in wanted if h not in found])

    def store(self, key: str, vectors: dict[str, np.ndarray]) -> None:
        with self._connect() as db:  # one transaction
            db.executemany(
                f"INSERT OR REPLACE INTO {self.table} (feature_key, image_hash, vector) "
                "VALUES (?, ?, ?)",
                [(key, h, np.asarray(v, dtype=self.dtype).tobytes()) for h, v in vectors.items()],
            )

    def missing(self, key: str, image_hashes: Sequence[str]) -> list[str]:
        """The hashes (each once, in order) with no vector under `key`, reading none."""
        wanted = list(dict.fromkeys(image_hashes))
        present: set[str] = set()
        db = self._connect()
        try:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                present.update(row[0] for row in db.execute(
                    f"SELECT image_hash FROM {self.table} "
                    f"WHERE feature_key = ? AND image_hash IN ({marks})", (key, *chunk)))
        finally:
            db.close()
        return [h for h in wanted if h not in present]

    def matrix(self, key: str, image_hashes: Sequence[str]) -> np.ndarray:
        """One row per hash, in order, read straight into one array (no copy per row
        kept); KeyError names a hash the cache lacks."""
        rows: np.ndarray | None = None
        where: dict[str, list[int]] = {}
        for i, h in enumerate(image_hashes):
            where.setdefault(h, []).append(i)
        filled = 0
        db = self._connect()
        try:
            wanted = list(where)
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for image_hash, blob in db.execute(
                    f"SELECT image_hash, vector FROM {self.table} "
                    f"WHERE feature_key = ? AND image_hash IN ({marks})", (key, *chunk)):
                    vector = np.frombuffer(blob, dtype=self.dtype)
                    if rows is None:
                        rows = np.empty((len(image_hashes), len(vector)), self.dtype)
                    rows[where[image_hash]] = vector
                    filled += 1
        finally:
            db.close()
        if filled < len(where):
            raise KeyError(f"no vector under {key} for {len(where) - filled} image(s)")
        return rows if rows is not None else np.zeros((0, 0), self.dtype)

    def count(self, key: str | None = None) -> int:
        db = self._connect()
        try:
            if key is None:
                return int(db.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0])
            sql = f"SELECT COUNT(*) FROM {self.table} WHERE feature_key = ?"
            return int(db.execute(sql, (key,)).fetchone()[0])
        finally:
            db.close()


class FeaturesCancelled(Exception):
    """The job computing features was asked to stop."""


@dataclass(frozen=True)
class FeatureSet:
    matrices: list[np.ndarray]  # one per named record list, rows in the records' order
    computed: int
    reused: int
    seconds_per_image: float | None  # the backbone's measured forward speed, if it ran


def never_cancelled(progress: Progress) -> bool:
    return False


def extract_features(
    ws: Workspace,
    feature_model: Any,
    key: str,
    named: Sequence[tuple[str, Sequence[Any]]],
    batch_size: int,
    report: Callable[[Progress], bool] = never_cancelled,
    cache: FeatureCache | None = None,
) -> FeatureSet:
    """Pooled backbone features for each named list of image records, computing only what
    the cache lacks; any job (training, a probe, an embedding map) calls this.

    The cache is asked first, so one progress bar and one ETA cover every pass that has
    images to compute. `report(progress)` receives live progress and returns True to stop
    (then FeaturesCancelled is raised). `cache` (default: the pooled-feature table) may
    hold other vectors; a model with several outputs gives each image's outputs flattened
    and concatenated, in output order.
    """
    import time

    from .callbacks import PredictProgress
    from .device import inference_pixels
    from .pipeline import image_dataset
    from .progress import FeaturePass, FeaturePassProgress

    cache = cache or FeatureCache(ws)
    started = time.time()
    planned: list[FeaturePass] = []
    seen: set[str] = set()
    for name, records in named:
        missing = [h for h in cache.missing(key, [r.hash for r in records]) if h not in seen]
        seen.update(missing)
        planned.append(FeaturePass(name, len(missing)))
    passes = FeaturePassProgress(planned)
    size = int(feature_model.input_shape[1])
    pixel_type = inference_pixels()
    forward = inference_function(feature_model, size, pixel_type)
    batch_size = inference_batch(feature_model, batch_size)
    matrices, computed, reused = [], 0, 0
    for name, records in named:
        hashes = [r.hash for r in records]
        missing = cache.missing(key, hashes)
        if missing:
            if name not in {p.name for p in passes.passes}:  # planned as fully cached
                passes.passes.append(FeaturePass(name, len(missing)))
            progress = PredictProgress(report, passes, name, batch_size, started)
            progress.set_model(feature_model)
            pixels = image_dataset([str(ws.image_path(h)) for h in missing], None, size,
                                   batch_size, pixel_type=pixel_type)
            _compute_into(cache, key, missing, pixels, forward, progress)
        computed += len(missing)
        reused += len(set(hashes)) - len(missing)
        matrices.append(cache.matrix(key, hashes))
    return FeatureSet(matrices, computed, reused, passes.rate.value or None)


# Vectors computed before they are written to the cache: what a pass holds beyond its
# batches in flight, and what a cancelled pass keeps for the next one.
_STORE_EVERY = 512


_forwards: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_forwards_lock = threading.Lock()


def inference_batch(model: Any, batch_size: int) -> int:
    """The batch `model`'s inference passes over many images run at, for a run whose batch
    is `batch_size` (see device.inference_batch_size)."""
    from .device import inference_batch_size

    outputs = model.output_shape
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return inference_batch_size(batch_size, int(model.input_shape[1]),
                                sum(int(np.prod(shape[1:])) for shape in outputs))


def inference_function(model: Any, size: int, pixel_type: str = "float32") -> Any:
    """`model`'s inference pass as one graph for batches of any size, traced once per
    model and pixel type: a fixed signature, so a last, smaller batch, a single photo or
    the model's next pass never traces it again (Keras's own predict traces once per new
    batch shape). `pixel_type="uint8"` takes uint8 pixels and casts them inside the graph, on
    the device that runs it."""
    import tensorflow as tf

    with _forwards_lock:
        kept = _forwards.setdefault(model, {})
        forward = kept.get(pixel_type)
        if forward is None:
            # A weak reference: the function kept for the model must not keep it alive.
            network = weakref.ref(model)
            dtype = tf.as_dtype(pixel_type)

            @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), dtype)])
            def forward(batch: Any) -> Any:
                return network()(tf.cast(batch, tf.float32), training=False)

            kept[pixel_type] = forward
    return forward


def _compute_into(cache: FeatureCache, key: str, hashes: list[str], pixels: Any,
                  forward: Any, progress: Any) -> None:
    """Run `forward` over `pixels` (the images of `hashes`, in order) and store each
    image's outputs (flattened and concatenated, in output order) every _STORE_EVERY
    images. A cancel stores what is done, then raises FeaturesCancelled."""
    pending: dict[str, np.ndarray] = {}
    done = 0
    progress.on_predict_begin()
    for step, batch in enumerate(pixels):
        out = forward(batch)
        parts = out if isinstance(out, (list, tuple)) else [out]
        rows = np.concatenate([np.reshape(np.asarray(o), (len(batch), -1)) for o in parts],
                              axis=1).astype(cache.dtype, copy=False)
        pending.update(zip(hashes[done:done + len(rows)], rows, strict=True))
        done += len(rows)
        progress.on_predict_batch_end(step)
        if len(pending) >= _STORE_EVERY or progress.cancelled:
            cache.store(key, pending)
            pending = {}
        if progress.cancelled:
            raise FeaturesCancelled()
    cache.store(key, pending)


@dataclass(frozen=True)
class FeatureExtractor:
    model: Any  # pixels -> pooled features
    key: str  # the feature cache's key for this backbone, weights and input size


def feature_extractor(backbone: str, weights: str = "imagenet", image_size: int = 0,
                      seed: int = 42) -> FeatureExtractor:
    """A backbone's pooled-feature model outside any run (probes, embedding maps)."""
    from .modeling import build_classifier
    from .registry import get_backbone
    from .spec import RunSpec
    from .weights import weights_identity

    spec = RunSpec(backbone=backbone, weights=weights, image_size=image_size,
                   seed=seed).normalized()
    identity = weights_identity(get_backbone(spec.backbone), spec.weights, spec.seed)
    model = build_classifier(spec, 2).feature_model
    return FeatureExtractor(model, feature_key(spec.backbone, identity, spec.image_size,
                                               model.dtype_policy.name))
