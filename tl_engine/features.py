"""The feature cache: a frozen backbone runs once per image, ever.

Pooled backbone features are stored in their own SQLite file, keyed by the image's
content hash and everything that determines the features: backbone, weights identity
and input size. Any later run with the same frozen backbone (another head, other
hyper-parameters, after a restart) reads them instead of running the backbone.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .store import Workspace

SCHEMA = """
CREATE TABLE IF NOT EXISTS features (
    feature_key TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (feature_key, image_hash)
) WITHOUT ROWID;
"""


def feature_key(backbone_key: str, weights_identity: str, image_size: int) -> str:
    raw = f"{backbone_key}|{weights_identity}|{image_size}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class FeatureLookup:
    vectors: dict[str, np.ndarray]
    missing: list[str]


class FeatureCache:
    def __init__(self, ws: Workspace) -> None:
        self.path = ws.features_db_path
        with self._connect() as db:
            db.executescript(SCHEMA)

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
                    f"SELECT image_hash, vector FROM features "
                    f"WHERE feature_key = ? AND image_hash IN ({marks})",
                    (key, *chunk),
                )
                for image_hash, blob in rows:
                    found[image_hash] = np.frombuffer(blob, dtype=np.float32)
        finally:
            db.close()
        return FeatureLookup(found, [h for h in wanted if h not in found])

    def store(self, key: str, vectors: dict[str, np.ndarray]) -> None:
        with self._connect() as db:  # one transaction
            db.executemany(
                "INSERT OR REPLACE INTO features (feature_key, image_hash, vector) "
                "VALUES (?, ?, ?)",
                [(key, h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in vectors.items()],
            )

    def count(self, key: str | None = None) -> int:
        db = self._connect()
        try:
            if key is None:
                return int(db.execute("SELECT COUNT(*) FROM features").fetchone()[0])
            sql = "SELECT COUNT(*) FROM features WHERE feature_key = ?"
            return int(db.execute(sql, (key,)).fetchone()[0])
        finally:
            db.close()


@dataclass(frozen=True)
class FeatureMatrix:
    matrix: np.ndarray  # one row per requested hash, in order
    computed: int
    reused: int


def features_for(
    cache: FeatureCache,
    key: str,
    image_hashes: Sequence[str],
    compute: Callable[[list[str]], np.ndarray],
) -> FeatureMatrix:
    """Rows for `image_hashes`, computing (and storing) only those the cache lacks."""
    found = cache.lookup(key, image_hashes)
    computed = 0
    if found.missing:
        fresh = compute(found.missing)
        new = {h: fresh[i] for i, h in enumerate(found.missing)}
        cache.store(key, new)
        found.vectors.update(new)
        computed = len(new)
    matrix = np.stack([found.vectors[h] for h in image_hashes]).astype(np.float32)
    return FeatureMatrix(matrix, computed, len(set(image_hashes)) - computed)
