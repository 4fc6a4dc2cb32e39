"""Storing datasets: a manifest per dataset (`datasets/<id>/manifest.json`) and a row in
the index; the id follows from the project and the content, so identical images are
stored once per project."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import DatasetError, NotFound
from ..store import Workspace, validate_project_name
from .health import HealthReport
from .records import ImageRecord

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Dataset:
    id: str  # "d" + 12 hex digits of sha256(project, content_hash): see dataset_id_for
    project: str
    name: str
    content_hash: str  # sha256 over sorted lines f"{hash}\t{label}\t{split}"
    classes: tuple[str, ...]  # sorted
    records: tuple[ImageRecord, ...]
    # The health report as stored (HealthReport.to_dict()); `health` reads it typed.
    report: dict[str, Any] = field(hash=False)
    created_at: float = 0.0
    # A revised version's origin: {"id": the dataset it was made from, "version": n,
    # "relabelled": {hash: [old, new]}, "removed": [hash, ...]}; None for an ingest.
    parent: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def health(self) -> HealthReport:
        return HealthReport.from_dict(self.report)

    @property
    def has_given_split(self) -> bool:
        return any(record.split for record in self.records)

    @property
    def has_given_val(self) -> bool:
        return any(record.split == "val" for record in self.records)

    @property
    def has_given_test(self) -> bool:
        return any(record.split == "test" for record in self.records)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for record in self.records:
            counts[record.label] = counts.get(record.label, 0) + 1
        return counts


def load_dataset(ws: Workspace, dataset_id: str) -> Dataset:
    rows = ws.query("SELECT * FROM datasets WHERE id = ?", (dataset_id,))
    if not rows:
        raise NotFound(
            f"dataset {dataset_id!r} is not in the workspace {ws.root}: "
            "pick one from the dataset list or ingest the images again"
        )
    return _from_row(ws, rows[0])


def list_datasets(ws: Workspace, project: str) -> list[Dataset]:
    """The project's datasets, newest first."""
    rows = ws.query(
        "SELECT * FROM datasets WHERE project = ? ORDER BY created_at DESC, id",
        (validate_project_name(project),),
    )
    return [_from_row(ws, row) for row in rows]


def delete_dataset(ws: Workspace, dataset_id: str) -> None:
    """Forget a dataset (its manifest and row); stored images stay, other sets share them.

    Training runs keep a dataset (their models were learnt from it); finished analyses of
    it (probes, label issues) go with it; one still queued or running keeps it too.
    """
    analyses: list[str] = []
    with ws.transaction() as db:
        named = db.execute("SELECT name FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
        if named is None:
            raise NotFound(f"dataset {dataset_id!r} is not in the workspace {ws.root}")
        rows = db.execute("SELECT id, kind, status FROM runs WHERE dataset_id = ? "
                          "ORDER BY created_at", (dataset_id,)).fetchall()
        analyses = [row[0] for row in rows
                    if row[1] != "train" and row[2] not in ("queued", "running")]
        runs = [row[0] for row in rows if row[0] not in analyses]
        if runs:
            shown = ", ".join(runs[:5]) + (", ..." if len(runs) > 5 else "")
            raise DatasetError(
                f"The dataset “{named[0]}” ({dataset_id}) is used by {len(runs)} run(s) "
                f"({shown}): delete those runs first, on the Runs page, or keep the dataset."
            )
        for run_id in analyses:
            db.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
    # After the commit: a crash here leaves an orphan manifest, never a row without one.
    for run_id in analyses:
        shutil.rmtree(ws.run_dir(run_id), ignore_errors=True)
    folder = ws.dataset_dir(dataset_id)
    (folder / "manifest.json").unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (someone put more there) or already gone: leave it


def content_hash_of(records: Iterable[ImageRecord]) -> str:
    lines = sorted(f"{r.hash}\t{r.label}\t{r.split}" for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def dataset_id_for(project: str, content_hash: str) -> str:
    # The project is part of the id because the schema keys datasets by id alone while
    # allowing the same content in several projects (UNIQUE (project, content_hash)).
    digest = hashlib.sha256(f"{project}\n{content_hash}".encode()).hexdigest()
    return "d" + digest[:12]


def _save(
    ws: Workspace, project: str, name: str, records: list[ImageRecord], health: HealthReport,
    parent: dict[str, Any] | None = None,
) -> Dataset:
    report = health.to_dict()
    content_hash = content_hash_of(records)
    dataset_id = dataset_id_for(project, content_hash)
    classes = sorted({r.label for r in records})
    created_at = time.time()
    with ws.transaction() as db:
        existing = db.execute(
            "SELECT id FROM datasets WHERE project = ? AND content_hash = ?",
            (project, content_hash),
        ).fetchone()
        if existing is None:
            # Manifest first, inside the transaction: a row never points at nothing, and
            # a concurrent identical ingest waits instead of writing a second manifest.
            ws.write_json_atomic(
                ws.dataset_dir(dataset_id) / "manifest.json",
                {
                    "format": MANIFEST_FORMAT,
                    "id": dataset_id,
                    "project": project,
                    "name": name,
                    "content_hash": content_hash,
                    "created_at": created_at,
                    "classes": classes,
                    "records": [_record_to_json(r) for r in records],
                    "report": report,
                    **({"parent": parent} if parent is not None else {}),
                },
            )
            db.execute(
                "INSERT INTO datasets (id, project, name, content_hash, n_images, classes_json,"
                " report_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    dataset_id,
                    project,
                    name,
                    content_hash,
                    len(records),
                    json.dumps(classes),
                    json.dumps(report, sort_keys=True),
                    created_at,
                ),
            )
        else:
            _refresh_report(ws, db, existing["id"], report)
    return load_dataset(ws, existing["id"] if existing is not None else dataset_id)


def _refresh_report(ws: Workspace, db: Any, dataset_id: str, report: dict[str, Any]) -> None:
    """The same images ingested again: the dataset's report becomes this ingest's, so
    what it says was left out (unreadable files, warnings) is what is left out now."""
    manifest_file = ws.dataset_dir(dataset_id) / "manifest.json"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        return  # damaged: load_dataset names it, doctor too
    if manifest.get("report") == json.loads(json.dumps(report)):  # as JSON: lists, not tuples
        return
    ws.write_json_atomic(manifest_file, {**manifest, "report": report})
    db.execute("UPDATE datasets SET report_json = ? WHERE id = ?",
               (json.dumps(report, sort_keys=True), dataset_id))


def _from_row(ws: Workspace, row: Any) -> Dataset:
    path = ws.dataset_dir(row["id"]) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
        records = tuple(ImageRecord(**item) for item in manifest["records"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"dataset {row['id']!r} ({row['name']}) has a missing or damaged manifest at "
            f"{path}: delete the dataset and ingest the images again"
        ) from exc
    return Dataset(
        id=row["id"],
        project=row["project"],
        name=row["name"],
        content_hash=row["content_hash"],
        classes=tuple(json.loads(row["classes_json"])),
        records=records,
        report=manifest.get("report") or json.loads(row["report_json"]),
        created_at=float(row["created_at"]),
        parent=manifest.get("parent"),
    )


def _record_to_json(record: ImageRecord) -> dict[str, Any]:
    return {
        "hash": record.hash,
        "label": record.label,
        "filename": record.filename,
        "split": record.split,
        "width": record.width,
        "height": record.height,
    }
