"""The workspace: a folder of files indexed by one SQLite database.

Every page, the CLI and the worker process open the same workspace; the database is
the single source of truth. Files are written atomically (temp file + rename) and
rows in transactions, so a crash never leaves something half-written that looks done.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import sqlite3
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import TLError, WorkspaceDamaged, WorkspaceReadOnly

DEFAULT_WORKSPACE = "workspace"
INDEX_FILE = "index.sqlite"
PROJECTS_FILE = "projects.json"
SQLITE_HEADER = b"SQLite format 3\x00"
# Without these the index holds nothing worth opening; newer tables are simply added.
REQUIRED_TABLES = ("projects", "datasets", "runs", "metrics")
_CANNOT_WRITE = (errno.EACCES, errno.EPERM, errno.EROFS)
WORKSPACE_FOLDERS = ("images", "datasets", "runs", "features", "locks", "logs", "tmp")

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
    kind TEXT NOT NULL DEFAULT 'train',
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
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    earlier_seconds REAL NOT NULL DEFAULT 0
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
CREATE TABLE IF NOT EXISTS known_files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    device INTEGER NOT NULL,
    hash TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, kind)
);
"""
# Columns added to a table after indexes with that table were made: (table, column,
# declaration). An older index gets them when it is opened; the default is what the
# rows it already holds were.
ADDED_COLUMNS = (
    ("runs", "kind", "TEXT NOT NULL DEFAULT 'train'"),
    # Seconds the run's earlier attempts trained, before it was resumed.
    ("runs", "earlier_seconds", "REAL NOT NULL DEFAULT 0"),
)


def resolve_workspace(path: str | os.PathLike[str] | None = None) -> Path:
    """`path`, else $TL_WORKSPACE, else ./workspace."""
    chosen = path or os.environ.get("TL_WORKSPACE") or DEFAULT_WORKSPACE
    return Path(chosen).expanduser().resolve()


class Workspace:
    """A workspace folder with its SQLite index. Cheap to open; open one per thread.

    An existing index is never replaced: one that is empty, not SQLite, corrupt or
    without its tables raises `WorkspaceDamaged` naming the repair command. A workspace
    that cannot be written (a read-only mount, a folder without write permission) opens
    read-only: reading works, and writing raises `WorkspaceReadOnly`.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = resolve_workspace(root)
        self.db_path = self.root / INDEX_FILE
        self.read_only = False
        self._uri: str | None = None
        if os.path.lexists(self.db_path):
            self.read_only = not (os.access(self.root, os.W_OK)
                                  and os.access(self.db_path, os.W_OK))
            if self.read_only:
                self._uri = read_only_uri(self.db_path)
            self._open_existing_index()
        else:
            self._create_index()

    def _open_existing_index(self) -> None:
        identity = _file_identity(self.db_path)
        with _verified_lock:
            thorough = identity not in _verified
        reason = index_damage(self.db_path, thorough=thorough, uri=self._uri)
        if reason is not None:
            raise damaged_error(self.root, reason)
        with _verified_lock:
            _verified.add(identity)
        if self.read_only:
            return
        try:
            for sub in WORKSPACE_FOLDERS:
                (self.root / sub).mkdir(exist_ok=True)
        except FileExistsError as exc:
            raise not_a_folder_error(self.root, exc) from exc
        with self._sqlite_errors():
            db = self.connect()
            try:
                present = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
                if not set(schema_objects()) <= present:
                    db.executescript(SCHEMA)  # tables added since this index was made
                if missing_columns(db):
                    add_missing_columns(db)
            finally:
                db.close()

    def _create_index(self) -> None:
        """A brand-new workspace. The index is built under a temporary name and linked into
        place, so no reader ever sees a half-made one and two creators never clobber."""
        records = folder_records(self.root)
        if records:
            raise damaged_error(self.root, f"the file is missing while {records}")
        fresh = self.root / f".{INDEX_FILE}.new-{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in WORKSPACE_FOLDERS:
                (self.root / sub).mkdir(exist_ok=True)
            create_index_file(fresh)
            install_index_file(fresh, self.db_path)
        except (OSError, sqlite3.OperationalError) as exc:
            if isinstance(exc, sqlite3.OperationalError) or exc.errno in _CANNOT_WRITE:
                raise read_only_error(self.root, self.db_path) from exc
            if exc.errno in (errno.EEXIST, errno.ENOTDIR):
                raise not_a_folder_error(self.root, exc) from exc
            raise
        finally:
            with contextlib.suppress(OSError):
                fresh.unlink(missing_ok=True)

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
        try:
            size = self.db_path.stat().st_size
        except FileNotFoundError:
            raise damaged_error(self.root, "the file is missing") from None
        if size == 0:
            raise damaged_error(self.root, "the file is empty (0 bytes)")
        with self._sqlite_errors():
            if self._uri is not None:
                db = sqlite3.connect(self._uri, uri=True, timeout=30, isolation_level=None)
            else:
                db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            try:
                if self._uri is None:
                    db.execute("PRAGMA journal_mode=WAL")
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA foreign_keys=ON")
                db.execute("PRAGMA busy_timeout=30000")
            except BaseException:
                db.close()
                raise
        return db

    @contextlib.contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """SQLite's corrupt, not-a-database and read-only errors as messages a user can act
        on; every other error stays what it is."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            primary = code & 0xFF if isinstance(code, int) else None
            if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise damaged_error(self.root, f"SQLite says: {exc}") from exc
            if primary == sqlite3.SQLITE_READONLY:
                raise read_only_error(self.root, self.db_path) from exc
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: concurrent writers queue instead of failing."""
        with self._sqlite_errors():
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
        with self._sqlite_errors():
            db = self.connect()
            try:
                return db.execute(sql, params).fetchall()
            finally:
                db.close()

    # --- projects ------------------------------------------------------------
    def ensure_project(self, name: str) -> str:
        name = validate_project_name(name)
        with self.transaction() as db:
            added = db.execute(
                "INSERT OR IGNORE INTO projects (name, created_at) VALUES (?, ?)",
                (name, time.time()),
            ).rowcount
            if added:  # inside the transaction: the file never lags behind the table
                self.write_projects_file(db)
        return name

    def write_projects_file(self, db: sqlite3.Connection) -> None:
        """projects.json: every project with its creation time, so that a project without
        datasets or runs yet survives an index rebuilt from the folders."""
        rows = db.execute("SELECT name, created_at FROM projects ORDER BY created_at").fetchall()
        projects = [{"name": row["name"], "created_at": row["created_at"]} for row in rows]
        self.write_json_atomic(self.root / PROJECTS_FILE, {"format": 1, "projects": projects})

    def list_projects(self) -> list[str]:
        return [row["name"] for row in self.query("SELECT name FROM projects ORDER BY created_at")]

    # --- files ---------------------------------------------------------------
    def write_bytes_atomic(self, path: Path, data: bytes) -> Path:
        self._check_inside(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        except OSError as exc:
            if exc.errno in _CANNOT_WRITE:
                raise read_only_error(self.root, path) from exc
            raise
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
    if not cleaned:
        raise SpecError("Give the project a name: it cannot be empty or only spaces.")
    if len(cleaned) > 64:
        raise SpecError(f"A project name can have at most 64 characters; this one has "
                        f"{len(cleaned)}.")
    return cleaned


# --- the index file ------------------------------------------------------------------
_verified: set[tuple[str, int, int, int, int]] = set()
_verified_lock = threading.Lock()


def repair_command(root: Path) -> str:
    return f"python -m tl_engine doctor --repair --workspace {shlex.quote(str(root))}"


def damaged_error(root: Path, reason: str) -> WorkspaceDamaged:
    path = root / INDEX_FILE
    return WorkspaceDamaged(
        f"The workspace index {path} is damaged: {reason}. Nothing was changed; rebuild it "
        f"from the run and dataset folders with: {repair_command(root)}",
        path=str(path), reason=reason,
    )


def not_a_folder_error(root: Path, exc: OSError) -> TLError:
    """A workspace path (or one of its folders) taken by a file."""
    taken = Path(exc.filename or root)
    # The error names the folder it could not make; the file in the way is that folder
    # itself or the nearest existing path above it.
    while not taken.exists() and taken.parent != taken:
        taken = taken.parent
    return TLError(f"Cannot use {root} as a workspace: {taken} is a file, not a folder. "
                   "Choose another --workspace (or $TL_WORKSPACE), or move the file away.")


def read_only_error(root: Path, path: Path) -> WorkspaceReadOnly:
    return WorkspaceReadOnly(
        f"Cannot write {path}: the workspace {root} is read-only. Listing runs and "
        "predicting work; for anything else make the folder writable."
    )


def schema_objects() -> list[str]:
    """The tables and indexes SCHEMA creates."""
    return re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", SCHEMA)


def missing_columns(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """The ADDED_COLUMNS that the index open on `db` lacks."""
    missing = []
    for table, column, declaration in ADDED_COLUMNS:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            missing.append((table, column, declaration))
    return missing


def add_missing_columns(db: sqlite3.Connection) -> None:
    """Add the ADDED_COLUMNS an older index lacks, in one transaction that looks again
    first: two processes opening the same old workspace add each column once."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, column, declaration in missing_columns(db):
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _file_identity(path: Path) -> tuple[str, int, int, int, int]:
    info = path.stat()
    return (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def read_only_uri(path: Path) -> str:
    """A read-only connection string. A WAL index needs its -shm file; where that can be
    neither opened nor created, the file is read as immutable (nobody can write it)."""
    base = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
    try:
        db = sqlite3.connect(base, uri=True)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            db.close()
    except sqlite3.OperationalError:
        return base + "&immutable=1"
    return base


def index_damage(db_path: Path, thorough: bool = True, uri: str | None = None) -> str | None:
    """Why the existing index file cannot be used as it is, or None when it can. The
    header and tables are always checked; `thorough` adds SQLite's quick_check."""
    try:
        with open(db_path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"the file cannot be read ({exc.strerror})"
    if not header:
        return "the file is empty (0 bytes)"
    if header != SQLITE_HEADER:
        return "the file is not a SQLite database"
    try:
        db = sqlite3.connect(uri or db_path, uri=uri is not None, timeout=30)
        try:
            names = {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = [table for table in REQUIRED_TABLES if table not in names]
            if missing:
                return "its tables are missing (" + ", ".join(missing) + ")"
            if thorough:
                found = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
                if found != ["ok"]:
                    return "SQLite's quick_check found: " + "; ".join(found)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF not in (sqlite3.SQLITE_CORRUPT,
                                                    sqlite3.SQLITE_NOTADB):
            raise  # busy, locked, out of memory...: a passing state, not damage to repair
        return f"SQLite cannot read it ({exc})"
    return None


def folder_records(root: Path) -> str | None:
    """What the folders hold that only an index can list ("3 runs and 1 dataset"), or None.
    A missing index over such folders is lost, not new."""
    n_runs = len(list(root.glob("runs/*/run.json")))
    n_datasets = len(list(root.glob("datasets/*/manifest.json")))
    if not n_runs and not n_datasets:
        return None
    parts = [f"{n} {noun}{'s' if n != 1 else ''}" for n, noun in
             ((n_runs, "run"), (n_datasets, "dataset")) if n]
    return " and ".join(parts) + " are in its folders"


def create_index_file(path: Path) -> None:
    """A new, empty index with the schema at `path` (not yet the workspace's index)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
    finally:
        db.close()  # the last connection checkpoints: everything is in the one file now


def install_index_file(fresh: Path, target: Path) -> bool:
    """Put a complete index file in place unless one is there already (False then)."""
    try:
        os.link(fresh, target)
    except FileExistsError:
        return False  # someone else made it first: theirs is as good, and may hold data
    except OSError:
        if os.path.lexists(target):  # no hard links on this file system
            return False
        os.replace(fresh, target)
    return True
