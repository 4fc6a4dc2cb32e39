"""Checking a workspace, repairing it, and backing it up.

The index is the single source of truth while it is sound, but every dataset folder
keeps a manifest, every run folder keeps run.json and metrics.jsonl, and projects.json
lists the projects: from those a damaged index is rebuilt (tl_engine/rebuild.py). A
damaged index is moved aside, never deleted.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TLError
from .rebuild import (
    ACTIVE_STATUSES,
    _read_json,
    _run_files,
    _subfolders,
    rebuild_index,
    restore_from_folders,
)
from .runs import METRICS_FILE, RUN_FILE, RunStatus, write_metrics_file, write_run_file
from .store import (
    INDEX_FILE,
    PROJECTS_FILE,
    SQLITE_HEADER,
    Workspace,
    folder_records,
    index_damage,
    install_index_file,
    read_only_uri,
    repair_command,
    resolve_workspace,
)
from .stored_images import (
    images_by_dataset,
    missing_images,
    remove_unused_images,
    unused_images,
)

__all__ = [
    "ACTIVE_STATUSES",
    "DoctorReport",
    "Problem",
    "backup_index",
    "check_workspace",
    "rebuild_index",
    "repair_workspace",
    "restore_from_folders",
]
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workspace. kind: index, project, dataset, run, model,
    features or images; path: the file or folder concerned."""

    kind: str
    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "message": self.message}


@dataclass
class DoctorReport:
    root: Path
    problems: list[Problem]
    repairs: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "workspace": str(self.root),
            "healthy": self.healthy,
            "problems": [p.to_dict() for p in self.problems],
            "repairs": list(self.repairs),
        }


# --- checking ------------------------------------------------------------------------
def check_workspace(root: str | os.PathLike[str] | None = None) -> list[Problem]:
    """Everything wrong with the workspace at `root`, one Problem each; [] when healthy.
    Reads only (a read-only workspace can be checked)."""
    root = _existing_root(root)
    db_path = root / INDEX_FILE
    problems: list[Problem] = []
    index_sound = False
    if os.path.lexists(db_path):
        uri = None if _writable(root, db_path) else read_only_uri(db_path)
        reason = index_damage(db_path, thorough=True, uri=uri)
        if reason is None:
            index_sound = True
        else:
            problems.append(Problem("index", str(db_path), f"{db_path} is damaged: {reason}"))
    elif (records := folder_records(root)) is not None:
        problems.append(Problem("index", str(db_path), f"{db_path} is missing while {records}"))

    if index_sound:
        ws = Workspace(root)
        problems += _row_problems(ws)
        named = images_by_dataset(ws)  # every manifest read once, for both checks
        for dataset_id, (lost, total) in missing_images(ws, named).items():
            problems.append(Problem(
                "dataset", str(ws.dataset_dir(dataset_id)),
                f"dataset {dataset_id} lacks {lost} of its {total} stored images: ingest the "
                "same photos again to store them again, or delete the dataset"))
        unused = unused_images(ws, named)
        if unused is not None and unused.files:
            problems.append(Problem(
                "images", str(ws.images_dir),
                f"{unused.describe()} belong to no dataset: an ingest or upload stopped "
                "before it finished, or their datasets were deleted (--repair removes them)"))
        completed = [row["id"] for row in ws.query(
            "SELECT id FROM runs WHERE status = ? ORDER BY created_at",
            (RunStatus.COMPLETED,))]
    else:
        completed = [record["id"] for record in _run_files(root)
                     if record.get("status") == RunStatus.COMPLETED]
    for run_id in completed:
        problem = _model_problem(root / "runs" / run_id / "model.keras", run_id)
        if problem:
            problems.append(problem)
    features = root / "features" / "features.sqlite"
    reason = _sqlite_damage(features)
    if reason:
        problems.append(Problem("features", str(features),
                                f"the feature cache {features} is damaged: {reason}"))
    return problems


def _row_problems(ws: Workspace) -> list[Problem]:
    """Rows without their folders, folders without their rows, stuck runs."""
    from .jobs import slot_busy

    problems: list[Problem] = []
    run_rows = ws.query("SELECT id, status FROM runs ORDER BY created_at")
    slot_free = bool(run_rows) and not ws.read_only and not slot_busy(ws)
    unrecorded = set(_runs_without_files(ws))
    for row in run_rows:
        folder = ws.run_dir(row["id"])
        if not folder.is_dir():
            problems.append(Problem("run", str(folder),
                                    f"run {row['id']} has no folder {folder}"))
        elif row["id"] in unrecorded:
            problems.append(Problem(
                "run", str(folder),
                f"run {row['id']} lacks {RUN_FILE} or {METRICS_FILE}: a rebuilt index would "
                "lose what is missing (--repair writes them)"))
        if row["status"] == RunStatus.RUNNING and slot_free:
            problems.append(Problem(
                "run", str(folder),
                f"run {row['id']} is marked running but no worker is training it: it was "
                "interrupted (--repair marks it so; then resume it)"))
    dataset_ids = {row["id"] for row in ws.query("SELECT id FROM datasets")}
    for dataset_id in sorted(dataset_ids):
        manifest = ws.dataset_dir(dataset_id) / "manifest.json"
        if _read_json(manifest) is None:
            problems.append(Problem("dataset", str(manifest),
                                    f"dataset {dataset_id} has a missing or unreadable "
                                    f"manifest {manifest}"))
    known_runs = {row["id"] for row in run_rows}
    for folder in _subfolders(ws.root / "runs"):
        if folder.name not in known_runs:
            restorable = (folder / RUN_FILE).is_file()
            problems.append(Problem(
                "run", str(folder),
                f"run folder {folder} has no row in the index" + (
                    " (--repair restores it from run.json)" if restorable else
                    " and no run.json to restore it from: restore the index from a backup "
                    "or remove the folder")))
    for folder in _subfolders(ws.root / "datasets"):
        if folder.name not in dataset_ids:
            restorable = (folder / "manifest.json").is_file()
            problems.append(Problem(
                "dataset", str(folder),
                f"dataset folder {folder} has no row in the index" + (
                    " (--repair restores it from manifest.json)" if restorable else
                    " and no manifest.json: remove the folder")))
    projects = {row["name"] for row in ws.query("SELECT name FROM projects")}
    listed = {p.get("name") for p in (_read_json(ws.root / PROJECTS_FILE) or {}).get(
        "projects", []) if isinstance(p, dict)}
    missing = sorted(projects - listed)
    if missing:
        problems.append(Problem(
            "project", str(ws.root / PROJECTS_FILE),
            f"{PROJECTS_FILE} does not list {len(missing)} project(s): a rebuilt index would "
            "lose those without datasets or runs (--repair writes it)"))
    return problems


def _runs_without_files(ws: Workspace) -> list[str]:
    """Runs whose folder lacks run.json, or metrics.jsonl while the index holds metrics
    (runs made before the folders kept them)."""
    with_metrics = {row[0] for row in ws.query("SELECT DISTINCT run_id FROM metrics")}
    return [row["id"] for row in ws.query("SELECT id FROM runs ORDER BY created_at")
            if ws.run_dir(row["id"]).is_dir() and (
                not (ws.run_dir(row["id"]) / RUN_FILE).is_file()
                or (row["id"] in with_metrics
                    and not (ws.run_dir(row["id"]) / METRICS_FILE).is_file()))]


def _model_problem(path: Path, run_id: str) -> Problem | None:
    if not path.is_file():
        return Problem("model", str(path), f"completed run {run_id} has no model file {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        return Problem("model", str(path),
                       f"the model of run {run_id} at {path} is not a readable zip ({exc})")
    if broken is not None:
        return Problem("model", str(path),
                       f"the model of run {run_id} at {path} is damaged (member {broken})")
    return None


def _sqlite_damage(path: Path) -> str | None:
    """Why a SQLite file other than the index (the feature cache) is unusable, or None."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if header and header != SQLITE_HEADER:
        return "it is not a SQLite database"
    uri = None if _writable(path.parent, path) else read_only_uri(path)
    try:
        db = sqlite3.connect(uri or path, uri=uri is not None, timeout=30)
        try:
            found = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return f"SQLite cannot read it ({exc})"
    return None if found == ["ok"] else "quick_check found: " + "; ".join(found)


# --- repairing -----------------------------------------------------------------------
def repair_workspace(root: str | os.PathLike[str] | None = None) -> DoctorReport:
    """Repair what can be repaired, then check again.

    A damaged (or lost) index is moved aside to index.sqlite.damaged-<time> and a fresh
    one rebuilt from the folders; runs that were queued or running come back interrupted.
    A sound index gets the rows of folders it lacks, the run.json files its runs lack,
    projects.json, and runs stuck in 'running' without a worker marked interrupted. A
    damaged feature cache is moved aside (features are recomputed when needed)."""
    from .jobs import interrupt_orphans

    root = _existing_root(root)
    db_path = root / INDEX_FILE
    stamp = time.strftime("%Y%m%d-%H%M%S")
    repairs: list[str] = []
    if os.path.lexists(db_path):
        damaged = index_damage(db_path, thorough=True) is not None
    else:
        damaged = folder_records(root) is not None
    if damaged:
        repairs += _rebuild_in_place(root, stamp)
    ws = Workspace(root)
    with ws.transaction() as db:
        if not damaged:
            repairs += restore_from_folders(root, db)
        unrecorded = _runs_without_files(ws)
        for run_id in unrecorded:
            write_run_file(ws, db, run_id)
            write_metrics_file(ws, db, run_id)
        if unrecorded:
            repairs.append(f"wrote {RUN_FILE} and {METRICS_FILE} for {len(unrecorded)} run(s)")
        ws.write_projects_file(db)
    interrupted = interrupt_orphans(ws)
    if interrupted:
        repairs.append("marked interrupted (no worker was training them): "
                       + ", ".join(interrupted))
    removed = remove_unused_images(ws)
    if removed is not None and removed.files:
        repairs.append(f"removed {removed.describe()} that no dataset uses")
    features = root / "features" / "features.sqlite"
    if _sqlite_damage(features):
        aside = _move_aside(features, stamp)
        repairs.append(f"moved the damaged feature cache to {aside}; features are "
                       "recomputed when a run needs them")
    return DoctorReport(root, check_workspace(root), repairs)


def _worker_training(root: Path) -> bool:
    """Whether a worker holds the training slot (a rebuild would call its run interrupted)."""
    from .jobs import SLOT_LOCK

    lock = root / "locks" / SLOT_LOCK
    if not lock.is_file():
        return False
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _rebuild_in_place(root: Path, stamp: str) -> list[str]:
    db_path = root / INDEX_FILE
    if _worker_training(root):
        raise TLError(f"a worker is training in {root}: wait for it to finish (or stop it), "
                      f"then run {repair_command(root)} again")
    fresh = root / f".{INDEX_FILE}.rebuild-{uuid.uuid4().hex}"
    try:
        lines = rebuild_index(root, fresh)
        repairs = []
        if os.path.lexists(db_path):
            aside = _move_aside(db_path, stamp)
            repairs.append(f"moved the damaged index to {aside}")
        if not install_index_file(fresh, db_path):
            raise TLError(f"{db_path} was created by another process during the repair: "
                          f"stop the app and workers, then run {repair_command(root)} again")
        repairs.append(f"rebuilt {db_path} from the folders")
        return repairs + lines
    finally:
        fresh.unlink(missing_ok=True)


def _move_aside(path: Path, stamp: str) -> Path:
    """Rename a SQLite file and its side files to <name>.damaged-<stamp>; never delete."""
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while os.path.lexists(aside):
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.replace(path, aside)
    for suffix in SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if os.path.lexists(side):
            os.replace(side, aside.with_name(aside.name + suffix))
    return aside


# --- backing up ----------------------------------------------------------------------
def backup_index(ws: Workspace, out: str | os.PathLike[str], force: bool = False) -> Path:
    """A consistent copy of the index at `out`, through SQLite's online backup: safe while
    a worker writes. Refuses an existing `out` unless `force`, and any path inside the
    workspace (a backup must survive losing the workspace)."""
    target = Path(out).expanduser().resolve()
    if target == ws.root or ws.root in target.parents:
        raise TLError(f"--out {target} is inside the workspace {ws.root}: a backup must "
                      "live elsewhere to survive losing the workspace")
    if target.is_dir():
        raise TLError(f"--out {target} is a folder: give a file name")
    if os.path.lexists(target) and not force:
        raise TLError(f"--out {target} already exists: choose another name or add --force "
                      "to replace it")
    if not target.parent.is_dir():
        raise TLError(f"--out {target}: the folder {target.parent} does not exist")
    partial = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex}")
    source = ws.connect()
    try:
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)
            # One self-contained file, whatever mode the live index runs in.
            copy.execute("PRAGMA journal_mode=DELETE")
        finally:
            copy.close()
        os.replace(partial, target)
    finally:
        source.close()
        partial.unlink(missing_ok=True)
    return target


# --- reading the folders -------------------------------------------------------------
def _existing_root(root: str | os.PathLike[str] | None) -> Path:
    path = resolve_workspace(root)
    if not path.is_dir():
        raise TLError(f"No workspace folder at {path}: give --workspace DIR.")
    return path


def _writable(folder: Path, path: Path) -> bool:
    return os.access(folder, os.W_OK) and os.access(path, os.W_OK)
