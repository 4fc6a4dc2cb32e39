"""Revising a dataset: relabel or remove images, stored as a new version.

A dataset's id follows from its content, and runs point at that id, so a dataset is
never changed in place: the revision is a new dataset (a new id, from the new content)
whose manifest names its parent and what changed. The parent, and every run trained on
it, stay exactly as they were.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping

from ..errors import DatasetError
from ..store import Workspace
from .health import HealthReport, build_report
from .layout import _Source
from .records import ImageRecord
from .storage import Dataset, _save, load_dataset

_VERSION_SUFFIX = re.compile(r" · v\d+$")


def revise_dataset(
    ws: Workspace,
    dataset_id: str,
    relabel: Mapping[str, str] | None = None,
    remove: Collection[str] = (),
    name: str | None = None,
) -> Dataset:
    """A new version of the dataset with images relabelled (image hash -> one of its
    classes) and removed (image hashes); the dataset itself is left as it was. Revising
    to content that is already stored returns that dataset."""
    parent = load_dataset(ws, dataset_id)
    relabel = dict(relabel or {})
    remove = set(remove)
    known = {r.hash for r in parent.records}
    unknown = sorted((set(relabel) | remove) - known)
    if unknown:
        raise DatasetError(
            f"{len(unknown)} image(s) are not in dataset {dataset_id!r} "
            f"({', '.join(h[:12] for h in unknown[:3])}): reload the dataset and choose again"
        )
    strange = sorted({label for label in relabel.values() if label not in parent.classes})
    if strange:
        raise DatasetError(
            f"{', '.join(repr(label) for label in strange)} is not a class of "
            f"{parent.name!r}: relabel to one of {', '.join(parent.classes)}"
        )
    both = sorted(set(relabel) & remove)
    if both:
        raise DatasetError(f"{len(both)} image(s) are both relabelled and removed: choose one")
    changed = {h: label for h, label in relabel.items()
               if label != _label_of(parent.records, h)}
    if not changed and not remove:
        raise DatasetError("Nothing to change: relabel or remove at least one image.")
    records = [
        dataclasses.replace(r, label=changed.get(r.hash, r.label))
        for r in parent.records if r.hash not in remove
    ]
    report = _revised_report(parent, records)
    if report.errors:
        error = DatasetError(f"The revision of {parent.name!r} would not be a usable "
                             "dataset: " + "; ".join(report.errors))
        error.report = report.to_dict()  # type: ignore[attr-defined]
        raise error
    version = int((parent.parent or {}).get("version", 1)) + 1
    origin = {
        "id": parent.id,
        "version": version,
        "relabelled": {h: [_label_of(parent.records, h), label]
                       for h, label in sorted(changed.items())},
        "removed": sorted(remove),
    }
    base = _VERSION_SUFFIX.sub("", parent.name)
    return _save(ws, parent.project, name or f"{base} · v{version}", records, report,
                 parent=origin)


def _label_of(records: tuple[ImageRecord, ...], image_hash: str) -> str:
    return next(r.label for r in records if r.hash == image_hash)


def _revised_report(parent: Dataset, records: list[ImageRecord]) -> HealthReport:
    """The parent's report recounted for the revised images: what the source held and
    skipped stays true; counts, sizes and the warnings built on them are new."""
    old = parent.health
    splits: dict[str, set[str]] = {label: set() for label in parent.classes}
    for record in records:
        splits[record.label].add(record.split)
    source = _Source(name=old.source, classes=splits, given_split=old.given_split)
    kept = {r.hash for r in records}
    duplicates = [d for d in old.duplicates if d["hash"] in kept]
    report = build_report(source, records, old.unreadable, duplicates,
                          old.cross_class_duplicates, [])
    return dataclasses.replace(report, n_files=old.n_files)
