"""The health report: what a source holds, what was skipped and why, and what to fix.

`HealthReport` is its one shape. `check-data --json`, the stored manifests and the
index all hold `HealthReport.to_dict()`; readers of a stored report use `from_dict`.
"""

from __future__ import annotations

import dataclasses
import statistics
import unicodedata
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .layout import _some, _Source
from .records import ImageRecord

RECOMMENDED_PER_CLASS = 20
IMBALANCE_RATIO = 3.0
SMALL_SIDE = 32

# Per class: {"count": n, "train": n, "val": n, "test": n}; the splits count only images
# of a source that brings its own split.
ClassCounts = dict[str, int]


@dataclass(frozen=True)
class ImageSizes:
    """Original sizes (after EXIF rotation) over the usable images; 0 when there are none."""

    min_width: int = 0
    min_height: int = 0
    median_width: int = 0
    median_height: int = 0
    max_width: int = 0
    max_height: int = 0

    @classmethod
    def of(cls, records: list[ImageRecord]) -> ImageSizes:
        widths = [r.width for r in records]
        heights = [r.height for r in records]
        return cls(
            min_width=min(widths, default=0),
            min_height=min(heights, default=0),
            median_width=int(statistics.median(widths)) if widths else 0,
            median_height=int(statistics.median(heights)) if heights else 0,
            max_width=max(widths, default=0),
            max_height=max(heights, default=0),
        )


@dataclass(frozen=True)
class HealthReport:
    """The health report of one source. Field order is the JSON's key order."""

    source: str  # what messages call the source: a folder, an archive, "uploads"
    n_files: int = 0  # files found, usable or not
    n_images: int = 0  # usable images, each content once
    n_classes: int = 0
    classes: dict[str, ClassCounts] = field(default_factory=dict)
    sizes: ImageSizes = field(default_factory=ImageSizes)
    unreadable: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # {"hash", "label", "files"}
    # {"hash", "labels", "files"}: every copy left out, its label being ambiguous
    cross_class_duplicates: list[dict[str, Any]] = field(default_factory=list)
    given_split: bool = False
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # any error: no dataset is made

    @property
    def ok(self) -> bool:
        return not self.errors

    @classmethod
    def failed(cls, message: str, source: str) -> HealthReport:
        """The report of a source that could not be read at all."""
        return cls(source=source, errors=[message])

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable report (a deep copy), as stored and printed."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthReport:
        """A stored report; keys it lacks take their empty value."""
        sizes = data.get("sizes") or {}
        return cls(
            source=str(data.get("source", "")),
            n_files=int(data.get("n_files", 0)),
            n_images=int(data.get("n_images", 0)),
            n_classes=int(data.get("n_classes", 0)),
            classes={label: dict(counts) for label, counts in (data.get("classes") or {}).items()},
            sizes=ImageSizes(**{
                f.name: int(sizes.get(f.name, 0)) for f in dataclasses.fields(ImageSizes)
            }),
            unreadable=[dict(item) for item in data.get("unreadable") or []],
            duplicates=[dict(item) for item in data.get("duplicates") or []],
            cross_class_duplicates=[dict(item) for item in data.get("cross_class_duplicates")
                                    or []],
            given_split=bool(data.get("given_split", False)),
            warnings=list(data.get("warnings") or []),
            errors=list(data.get("errors") or []),
        )


def build_report(
    source: _Source,
    records: list[ImageRecord],
    unreadable: list[dict[str, str]],
    duplicates: list[dict[str, Any]],
    cross_class: list[dict[str, Any]],
    across_splits: list[str],
) -> HealthReport:
    classes: dict[str, ClassCounts] = {
        label: {"count": 0, "train": 0, "val": 0, "test": 0} for label in sorted(source.classes)
    }
    for record in records:
        entry = classes.setdefault(record.label, {"count": 0, "train": 0, "val": 0, "test": 0})
        entry["count"] += 1
        if record.split:
            entry[record.split] += 1
    errors = _errors(source, classes, records, unreadable)
    warnings = list(source.warnings)
    warnings += _warnings(
        source, classes, records, unreadable, duplicates, cross_class, across_splits
    )
    return HealthReport(
        source=source.name,
        n_files=len(source.candidates) + len(source.unreadable),
        n_images=len(records),
        n_classes=len(classes),
        classes=classes,
        sizes=ImageSizes.of(records),
        unreadable=unreadable,
        duplicates=duplicates,
        cross_class_duplicates=cross_class,
        given_split=source.given_split,
        warnings=warnings,
        errors=errors,
    )


def _errors(
    source: _Source,
    classes: dict[str, dict[str, int]],
    records: list[ImageRecord],
    unreadable: list[dict[str, str]],
) -> list[str]:
    errors: list[str] = []
    if not classes:
        errors.append(
            f"found no class folders in {source.name}: put the images in one sub-folder per "
            "class (e.g. cats/ and dogs/)"
        )
    elif len(classes) == 1:
        (only,) = classes
        folders = source.class_folders.get(only)
        where = f"next to {folders[0]}" if folders else "of images"
        errors.append(
            f"found 1 class {only!r}: a classifier needs at least 2 — add a folder for each "
            f"other class {where}"
        )
    if classes and not records:
        errors.append(f"no readable images found in {source.name}: see the unreadable list")
    unusable = {item["file"] for item in unreadable}
    for label, entry in classes.items():
        count = entry["count"]
        if count >= 2:
            continue
        folders = source.class_folders.get(label, [])
        where = f" (in {_some(folders)})" if folders else ""
        files = sorted(c.filename for c in source.candidates if c.label == label)
        if count == 1:
            errors.append(
                f"class {label!r} has only 1 usable image{where}: each class needs at least "
                "2 — add images or remove the folder"
            )
        elif not files and (locked := [f for f in folders if f in unusable]):
            errors.append(
                f"class {label!r} has no usable images: its folder {_some(locked)} cannot be "
                "read — give this program read access to it, or remove the folder"
            )
        elif not files:
            what = f"its folder {_some(folders)} is empty" if folders else "it has no files"
            errors.append(
                f"class {label!r} has no usable images: {what} — add at least 2 images or "
                "remove the folder"
            )
        else:
            skipped = [f for f in files if f in unusable]
            why = (f"none of its files could be used ({_some(skipped)}, see the unreadable "
                   "list)") if skipped else "its images all appear under other classes too"
            errors.append(
                f"class {label!r} has no usable images: {why} — add at least 2 images or "
                "remove the folder"
            )
    return errors


def _warnings(
    source: _Source,
    classes: dict[str, dict[str, int]],
    records: list[ImageRecord],
    unreadable: list[dict[str, str]],
    duplicates: list[dict[str, Any]],
    cross_class: list[dict[str, Any]],
    across_splits: list[str],
) -> list[str]:
    warnings: list[str] = []
    counts = {label: entry["count"] for label, entry in classes.items()}
    for label, count in counts.items():
        if 2 <= count < RECOMMENDED_PER_CLASS:
            warnings.append(
                f"class {label!r} has {count} images: collect at least {RECOMMENDED_PER_CLASS}"
            )
    usable = {label: count for label, count in counts.items() if count > 0}
    if len(usable) >= 2:
        most = max(usable, key=lambda label: (usable[label], label))
        least = min(usable, key=lambda label: (usable[label], label))
        ratio = usable[most] / usable[least]
        if ratio > IMBALANCE_RATIO:
            warnings.append(
                f"classes are imbalanced: {most!r} has {usable[most]} images, {least!r} only "
                f"{usable[least]} ({ratio:.1f}x); collect more {least!r} images or turn on "
                "class weights"
            )
    warnings += _look_alike_classes(counts)
    if source.given_split:
        # Only splits the source has a folder for: a missing val/ is carved out of train.
        for split in ("train", "val"):
            split_folder = source.split_folders.get(split)
            missing = [
                label for label, entry in classes.items() if entry["count"] and not entry[split]
            ]
            if split_folder and missing:
                names = ", ".join(repr(label) for label in missing)
                folders = [f"{split_folder}{label}/" for label in missing]
                warnings.append(
                    f"class(es) {names} have no images in the {split} folder: add some to "
                    f"{_some(folders)}"
                )
    small = sorted(r.filename for r in records if min(r.width, r.height) < SMALL_SIDE)
    if small:
        warnings.append(
            f"{len(small)} image(s) are smaller than {SMALL_SIDE} px on a side "
            f"({_some(small)}): they carry little detail once scaled up to the model's "
            "input size; use larger originals if you have them"
        )
    if unreadable:
        warnings.append(_unreadable_warning(unreadable))
    if duplicates:
        kept = {record.hash: record.filename for record in records}
        dropped = sorted(
            name for item in duplicates for name in item["files"] if name != kept[item["hash"]]
        )
        warnings.append(
            f"{len(dropped)} exact duplicate file(s) within a class were kept only once "
            f"({_some(dropped)} left out): nothing to do, or delete the copies"
        )
    if across_splits:
        warnings.append(
            f"{len(across_splits)} image(s) appear in more than one split folder of the same "
            f"class ({_some(across_splits)}): kept once, in the first of train, val and test "
            "that holds it, so no image is both learned from and scored on; delete the "
            "copies from the other split folders"
        )
    if cross_class:
        files = sorted(name for item in cross_class for name in item["files"])
        warnings.append(
            f"{len(cross_class)} image(s) appear under more than one class ({len(files)} "
            f"files: {_some(files)}): all copies were left out, because their label is "
            "ambiguous — keep each image in its one class folder"
        )
    return warnings


def _look_alike_classes(counts: dict[str, int]) -> list[str]:
    """Classes whose names differ only in letter case, Unicode form or surrounding spaces
    ('Cat', 'cat', 'cat '): almost always one class, and their folders would merge on
    Windows and macOS."""
    groups: dict[str, list[str]] = defaultdict(list)
    for label in counts:
        groups[unicodedata.normalize("NFKC", label).strip().casefold()].append(label)
    return [
        f"classes {' and '.join(repr(label) for label in sorted(labels))} differ only in "
        "letter case or spacing: they train as different classes; if they are one, move "
        "their images into one folder"
        for labels in groups.values() if len(labels) > 1
    ]


def _unreadable_warning(unreadable: list[dict[str, str]], shown_reasons: int = 3) -> str:
    """One warning naming the skipped files, grouped by why (the commonest reason first)."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for item in unreadable:
        by_reason[item["reason"]].append(item["file"])
    groups = sorted(by_reason.items(), key=lambda group: (-len(group[1]), sorted(group[1])[0]))
    parts = [f"{_some(sorted(files))}: {reason}" for reason, files in groups[:shown_reasons]]
    rest = sum(len(files) for _, files in groups[shown_reasons:])
    if rest:
        parts.append(f"{rest} more for other reasons (see the unreadable list)")
    return (
        f"{len(unreadable)} file(s) could not be used and were skipped — " + "; ".join(parts)
    )
