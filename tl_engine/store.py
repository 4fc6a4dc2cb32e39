"""The workspace: a folder of files indexed by one SQLite database.

Every page, the CLI and the worker process open the same workspace; the database is
the single source of truth. Files are written atomically (temp file + rename) and
rows in transactions, so a crash never leaves something half-written that looks done.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_WORKSPACE = "workspace"

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    n_images INTEGER NOT NULL,
    classes_json TEXT NOT NULL,
    report_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (project, content_hash)
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    dataset_id TEXT NOT NULL REFERENCES datasets(id),
    spec_json TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    status TEXT NOT NULL,
    started_by TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat_at REAL,
    worker_pid INTEGER,
    progress_json TEXT NOT NULL DEFAULT '{}',
    summary_json TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_key ON runs (cache_key, status);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, created_at);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    phase TEXT NOT NULL,
    values_json TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS drafts (
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    user TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (project, user)
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, kind)
);
"""


def resolve_workspace(path: str | os.PathLike[str] | None = None) -> Path:
    """`path`, else $TL_WORKSPACE, else ./workspace."""
    chosen = path or os.environ.get("TL_WORKSPACE") or DEFAULT_WORKSPACE
    return Path(chosen).expanduser().resolve()


class Workspace:
    """A workspace folder with its SQLite index. Cheap to open; open one per thread."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = resolve_workspace(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("images", "datasets", "runs", "features", "locks", "logs", "tmp"):
            (self.root / sub).mkdir(exist_ok=True)
        self.db_path = self.root / "index.sqlite"
        db = self.connect()
        try:
            db.executescript(SCHEMA)  # executescript manages its own transaction
        finally:
            db.close()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # --- folders -------------------------------------------------------------
    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def image_path(self, content_hash: str) -> Path:
        return self.images_dir / content_hash[:2] / f"{content_hash}.jpg"

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.root / "datasets" / dataset_id

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    @property
    def features_db_path(self) -> Path:
        return self.root / "features" / "features.sqlite"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    # --- database ------------------------------------------------------------
    def connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: concurrent writers queue instead of failing."""
        db = self.connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        db = self.connect()
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    # --- projects ------------------------------------------------------------
    def ensure_project(self, name: str) -> str:
        name = validate_project_name(name)
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO projects (name, created_at) VALUES (?, ?)",
                (name, time.time()),
            )
        return name

    def list_projects(self) -> list[str]:
        return [row["name"] for row in self.query("SELECT name FROM projects ORDER BY created_at")]

    # --- files ---------------------------------------------------------------
    def write_bytes_atomic(self, path: Path, data: bytes) -> Path:
        self._check_inside(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return path

    def write_json_atomic(self, path: Path, value: Any) -> Path:
        return self.write_bytes_atomic(path, json.dumps(value, indent=2, sort_keys=True).encode())

    def _check_inside(self, path: Path) -> None:
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ValueError(f"refusing to write outside the workspace: {path}")


def validate_project_name(name: str) -> str:
    from .errors import SpecError

    cleaned = " ".join(str(name).split())
    if not cleaned or len(cleaned) > 64:
        raise SpecError("Project name must be 1 to 64 characters.")
    return cleaned
