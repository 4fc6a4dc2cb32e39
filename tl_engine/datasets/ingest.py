"""Ingesting: a source collected, decoded and checked, then stored as a dataset, or
refused with its health report when the report holds errors."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..store import Workspace, validate_project_name
from .collect import (
    _archive_name,
    _collect_folder,
    _collect_tree,
    _collect_uploads,
    _collect_zip,
    _open_zip,
    _refuse_broken_link,
)
from .decode import _process
from .health import HealthReport
from .layout import _Source
from .records import Progress, Upload
from .storage import Dataset, _save


def ingest_folder(
    ws: Workspace,
    path: str | os.PathLike[str],
    project: str = "default",
    name: str | None = None,
    *,
    progress: Progress | None = None,
) -> Dataset:
    """A folder of class sub-folders (or train/ val/ [test/] of class sub-folders)."""
    root = Path(path).expanduser()
    source = _collect_folder(root)
    return _ingest(ws, source, project, name or root.resolve().name, progress)


def ingest_zip(
    ws: Workspace,
    source: str | os.PathLike[str] | bytes,
    project: str = "default",
    name: str | None = None,
    *,
    progress: Progress | None = None,
) -> Dataset:
    """A .zip laid out like a folder (any single top-level folder is fine)."""
    archive_name = _archive_name(source, name)
    with _open_zip(source, archive_name) as archive:
        collected = _collect_zip(archive, archive_name)
        default_name = archive_name[:-4] if archive_name.lower().endswith(".zip") else archive_name
        return _ingest(ws, collected, project, name or default_name, progress)


def ingest_uploads(
    ws: Workspace,
    uploads: Iterable[Upload],
    project: str = "default",
    name: str | None = None,
    *,
    progress: Progress | None = None,
) -> Dataset:
    """Files uploaded in the browser, each with the label the user gave it."""
    return _ingest(ws, _collect_uploads(uploads), project, name or "uploads", progress)


def ingest_tree(
    ws: Workspace,
    files: Iterable[tuple[str, bytes]],
    project: str = "default",
    name: str | None = None,
    *,
    progress: Progress | None = None,
) -> Dataset:
    """(relative path, bytes) pairs, as a browser's folder upload gives them, read with the
    same layout rules as a folder or a zip: class folders, a lone wrapper folder, a given
    train/val split. Paths that are absolute or climb out with '..' are skipped."""
    source = _collect_tree(files, name)
    return _ingest(ws, source, project, source.name, progress)


def check_health(source: str | os.PathLike[str]) -> HealthReport:
    """The health report of a folder or .zip, writing nothing; problems go in `errors`."""
    path = Path(source).expanduser()
    try:
        if not path.exists():
            _refuse_broken_link(path)
        if path.is_dir():
            _, report = _process(_collect_folder(path), None, None)
            return report
        with _open_zip(path, path.name) as archive:
            _, report = _process(_collect_zip(archive, path.name), None, None)
            return report
    except DatasetError as exc:
        return HealthReport.failed(str(exc), str(path))


def check_data(source: str | os.PathLike[str]) -> dict[str, Any]:
    """`check_health` as JSON-serialisable data, as `check-data --json` prints it."""
    return check_health(source).to_dict()


def _ingest(
    ws: Workspace, source: _Source, project: str, name: str, progress: Progress | None
) -> Dataset:
    project = validate_project_name(project)
    records, report = _process(source, ws, progress)
    if report.errors:
        error = DatasetError(f"{source.name}: " + "; ".join(report.errors))
        error.report = report.to_dict()  # type: ignore[attr-defined]  # for pages that show it
        raise error
    # Only now: data that cannot be used leaves no new, empty project behind.
    return _save(ws, ws.ensure_project(project), name, records, report)
