"""Rebuilding a lost index from the workspace folders.

Every dataset folder keeps a manifest, every run folder keeps run.json and
metrics.jsonl, and projects.json lists the projects: from those the rows an index lacks
are restored. Runs that were queued or running when the index was lost are marked
interrupted, in the index and in their run.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from .runs import ACTIVE, DEFAULT_KIND, INTERRUPTED_ERROR, METRICS_FILE, RUN_FILE, RunStatus
from .spec import canonical_json
from .store import PROJECTS_FILE, create_index_file

ACTIVE_STATUSES = ACTIVE


def rebuild_index(root: str | os.PathLike[str], target: Path) -> list[str]:
    """Write a fresh index at `target` from the workspace folders; what it restored and
    skipped, one line each. `target` must not exist yet."""
    create_index_file(target)
    db = sqlite3.connect(target, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("BEGIN IMMEDIATE")
        lines = restore_from_folders(Path(root), db)
        db.execute("COMMIT")
    finally:
        db.close()
    return lines


def restore_from_folders(root: Path, db: sqlite3.Connection) -> list[str]:
    """Add to the open index (inside the caller's transaction) every project, dataset and
    run that the folders record and the index lacks; rows already there are kept as they
    are. Returns what was restored and skipped, one line each."""
    lines: list[str] = []
    projects: dict[str, float] = {}

    def note_project(name: Any, created_at: Any) -> None:
        if isinstance(name, str) and name:
            when = float(created_at) if isinstance(created_at, (int, float)) else time.time()
            projects[name] = min(projects.get(name, when), when)

    for entry in (_read_json(root / PROJECTS_FILE) or {}).get("projects", []):
        if isinstance(entry, dict):
            note_project(entry.get("name"), entry.get("created_at"))

    datasets = []
    for folder in _subfolders(root / "datasets"):
        manifest = _read_json(folder / "manifest.json")
        if not _is_manifest(manifest, folder.name):
            if (folder / "manifest.json").exists():
                lines.append(f"skipped dataset folder {folder}: unreadable manifest.json")
            continue
        datasets.append(manifest)
        note_project(manifest["project"], manifest["created_at"])

    run_records = []
    for record in _run_files(root):
        run_records.append(record)
        note_project(record["project"], record["created_at"])

    added_projects = sum(
        db.execute("INSERT OR IGNORE INTO projects (name, created_at) VALUES (?, ?)",
                   (name, created_at)).rowcount
        for name, created_at in sorted(projects.items(), key=lambda item: item[1]))

    added_datasets = 0
    for manifest in datasets:
        added_datasets += db.execute(
            "INSERT OR IGNORE INTO datasets (id, project, name, content_hash, n_images, "
            "classes_json, report_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (manifest["id"], manifest["project"], manifest.get("name") or manifest["id"],
             manifest["content_hash"], len(manifest["records"]),
             json.dumps(manifest.get("classes") or sorted(
                 {r.get("label") for r in manifest["records"]})),
             json.dumps(manifest.get("report") or {}, sort_keys=True),
             float(manifest["created_at"])),
        ).rowcount

    known_datasets = {row[0] for row in db.execute("SELECT id FROM datasets")}
    added_runs = interrupted = epochs = 0
    for record in run_records:
        run_id = record["id"]
        if record["dataset_id"] not in known_datasets:
            lines.append(f"skipped run {run_id}: its dataset {record['dataset_id']} has no "
                         "folder with a manifest")
            continue
        if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
            continue
        status, finished_at, error = record["status"], record.get("finished_at"), \
            record.get("error")
        if status in ACTIVE_STATUSES:
            status, finished_at, error = RunStatus.INTERRUPTED, time.time(), INTERRUPTED_ERROR
        db.execute(
            "INSERT INTO runs (id, project, dataset_id, kind, spec_json, cache_key, status, "
            "started_by, created_at, started_at, finished_at, progress_json, summary_json, "
            "error, earlier_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, record["project"], record["dataset_id"],
             record.get("kind") or DEFAULT_KIND, canonical_json(record["spec"]),
             record["cache_key"], status, record.get("started_by"),
             float(record["created_at"]), record.get("started_at"), finished_at,
             json.dumps(record.get("progress") or {}), json.dumps(record.get("summary") or {}),
             error, float(record.get("earlier_seconds") or 0.0)),
        )
        added_runs += 1
        for metric in _metrics_lines(root / "runs" / run_id / METRICS_FILE):
            epochs += db.execute(
                "INSERT OR IGNORE INTO metrics (run_id, epoch, phase, values_json, "
                "recorded_at) VALUES (?, ?, ?, ?, ?)",
                (run_id, int(metric["epoch"]), str(metric["phase"]),
                 json.dumps(metric["values"]), float(metric.get("recorded_at") or 0.0)),
            ).rowcount
        if status != record["status"]:
            interrupted += 1
            _write_json_atomic(root / "runs" / run_id / RUN_FILE,
                               {**record, "status": status, "finished_at": finished_at,
                                "error": error})
    if added_projects or added_datasets or added_runs:
        lines.insert(0, f"restored {added_projects} project(s), {added_datasets} dataset(s), "
                        f"{added_runs} run(s) ({interrupted} interrupted) and {epochs} "
                        "epoch(s) of metrics from the folders")
    return lines



# --- reading the folders -------------------------------------------------------------
def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_manifest(value: Any, folder_name: str) -> bool:
    return (isinstance(value, dict) and value.get("id") == folder_name
            and all(key in value for key in ("project", "content_hash", "created_at"))
            and isinstance(value.get("records"), list))


_RUN_FILE_KEYS = ("id", "project", "dataset_id", "spec", "cache_key", "status", "created_at")


def _run_files(root: Path) -> list[dict[str, Any]]:
    """The readable run.json files, each naming its own folder."""
    records = []
    for folder in _subfolders(root / "runs"):
        record = _read_json(folder / RUN_FILE)
        if (isinstance(record, dict) and record.get("id") == folder.name
                and all(key in record for key in _RUN_FILE_KEYS)):
            records.append(record)
    return records


def _metrics_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict) and {"epoch", "phase", "values"} <= value.keys():
                found.append(value)
    return found


def _write_json_atomic(path: Path, value: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(value, handle, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

