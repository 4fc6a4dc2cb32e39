"""Stored images that no dataset uses: left by an ingest or upload stopped before its
dataset was saved, or by datasets since deleted (images are shared by content, so
deleting a dataset keeps them).

An ingest stores its images before it saves the dataset that names them, and one that
finds an image already stored refreshes its time. So only images stored longer ago than
`UNUSED_GRACE_S` are taken as left behind: a younger one may belong to an ingest still
running.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .rebuild import _read_json, _subfolders
from .store import Workspace

UNUSED_GRACE_S = 6 * 3600


@dataclass(frozen=True)
class UnusedImages:
    files: list[Path]  # stored over UNUSED_GRACE_S ago and named by no dataset
    bytes: int

    def describe(self) -> str:
        size = (f"{self.bytes / 1024**2:.1f} MB" if self.bytes >= 1024**2
                else f"{max(1, round(self.bytes / 1024))} KB")
        return f"{len(self.files)} stored image(s), {size}"


def images_by_dataset(ws: Workspace) -> dict[str, set[str] | None]:
    """The stored images (hashes) each dataset names: the index's datasets, and folders
    whose manifest a repair would restore; None for a manifest that cannot be read."""
    indexed = {row["id"] for row in ws.query("SELECT id FROM datasets")}
    folders = {folder.name for folder in _subfolders(ws.root / "datasets")}
    named: dict[str, set[str] | None] = {}
    for dataset_id in sorted(indexed | folders):
        manifest_file = ws.dataset_dir(dataset_id) / "manifest.json"
        if dataset_id not in indexed and not manifest_file.exists():
            continue  # a deleted dataset's folder, kept because something else was in it
        manifest = _read_json(manifest_file)
        try:
            named[dataset_id] = {str(record["hash"]) for record in manifest["records"]}
        except (TypeError, KeyError):
            named[dataset_id] = None
    return named


def unused_images(ws: Workspace, named: dict[str, set[str] | None] | None = None,
                  now: float | None = None) -> UnusedImages | None:
    """The stored images no dataset names, stored over UNUSED_GRACE_S ago. None when a
    dataset's manifest cannot be read: then which images are in use is not known.
    `named`: images_by_dataset(ws), when the caller has it already."""
    named = images_by_dataset(ws) if named is None else named
    if any(hashes is None for hashes in named.values()):
        return None
    used: set[str] = set().union(*named.values())
    cutoff = (time.time() if now is None else now) - UNUSED_GRACE_S
    files: list[Path] = []
    size = 0
    for path in sorted(ws.images_dir.glob("*/*.jpg")):
        if path.stem in used:
            continue
        try:
            info = path.stat()
        except OSError:  # removed meanwhile
            continue
        if info.st_mtime < cutoff:
            files.append(path)
            size += info.st_size
    return UnusedImages(files, size)


def remove_unused_images(ws: Workspace) -> UnusedImages | None:
    """Remove what `unused_images` finds; returns what it removed."""
    found = unused_images(ws)
    if found is None:
        return None
    cutoff = time.time() - UNUSED_GRACE_S
    removed: list[Path] = []
    size = 0
    for path in found.files:
        # Moved aside first, then judged: an ingest that refreshed the image before the
        # move gets it back; one that comes after finds it gone and stores it again.
        aside = path.with_name(f".removing-{path.name}")
        try:
            os.rename(path, aside)
            info = aside.stat()
            if info.st_mtime >= cutoff:
                os.rename(aside, path)
                continue
            aside.unlink()
        except OSError:
            continue
        removed.append(path)
        size += info.st_size
    return UnusedImages(removed, size)


def missing_images(ws: Workspace, named: dict[str, set[str] | None] | None = None,
                   ) -> dict[str, tuple[int, int]]:
    """The index's datasets whose stored images are not all there: id -> (missing, of how
    many). Datasets whose manifest cannot be read are left to the manifest check."""
    named = images_by_dataset(ws) if named is None else named
    missing: dict[str, tuple[int, int]] = {}
    for row in ws.query("SELECT id FROM datasets ORDER BY created_at"):
        hashes = named.get(row["id"])
        if hashes is None:
            continue
        lost = sum(1 for h in hashes if not ws.image_path(h).is_file())
        if lost:
            missing[row["id"]] = (lost, len(hashes))
    return missing
