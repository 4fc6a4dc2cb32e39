"""Decoding and de-duplicating: every candidate is read, hashed, decoded and checked on a
pool of threads; what survives is stored once per content (`images/<hash>.jpg`, already
shrunk) and each content is kept once, under one label."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..image_limits import ImageRejected, MemoryBudget, decode_budget_bytes, max_image_pixels
from ..store import Workspace
from . import known_files
from .health import HealthReport, build_report
from .layout import _Candidate, _Source, _Unreadable
from .records import ImageRecord, Progress, _record_order

# File bytes read and not yet decoded, across the ingest threads: a folder or archive of
# large files is read a few at a time, whatever the thread count. A file larger than
# this is read alone.
READ_BUDGET_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class _Decoded:
    hash: str
    width: int
    height: int


def _process(
    source: _Source, ws: Workspace | None, progress: Progress | None
) -> tuple[list[ImageRecord], HealthReport]:
    """Decode every candidate (storing it when `ws` is given) and build the report."""
    max_image_pixels()  # a mistyped limit fails once, here, not once per image
    decode_budget_bytes()
    candidates = source.candidates
    unreadable = list(source.unreadable)
    decoded: dict[int, _Decoded] = {}
    total = len(candidates)
    if progress:
        progress(0, total)
    if ws is not None:
        decoded.update(_known_unchanged(ws, candidates))
        if progress and decoded:
            progress(len(decoded), total)
    to_read = [i for i in range(total) if i not in decoded]
    if to_read:
        workers = min(16, (os.cpu_count() or 2) + 2, len(to_read))
        # Pillow and hashlib release the GIL while decoding, resizing, encoding and
        # hashing, so threads scale across cores without pickling images to processes.
        reading = MemoryBudget()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
            futures = {pool.submit(_decode_one, candidates[i], ws, reading): i for i in to_read}
            for done, future in enumerate(as_completed(futures), start=total - len(to_read) + 1):
                # Dropped as soon as it is read: a finished future keeps its result alive.
                index = futures.pop(future)
                outcome = future.result()
                if isinstance(outcome, _Decoded):
                    decoded[index] = outcome
                else:
                    unreadable.append({"file": candidates[index].filename, "reason": outcome})
                if progress:
                    progress(done, total)

        if ws is not None:
            known_files.remember(ws, [
                (origin[0], origin[1], known_files.KnownFile(info.hash, info.width, info.height))
                for i in to_read
                if (info := decoded.get(i)) is not None
                and (origin := candidates[i].origin) is not None])

    by_hash: dict[str, list[int]] = defaultdict(list)
    for index in sorted(decoded):
        by_hash[decoded[index].hash].append(index)
    records: list[ImageRecord] = []
    duplicates: list[dict[str, Any]] = []
    cross_class: list[dict[str, Any]] = []
    split_rank = {"train": 0, "": 0, "val": 1, "test": 2}
    across_splits: list[str] = []  # copies left out of val/test because train has them
    for content_hash, indexes in by_hash.items():
        copies = [candidates[i] for i in indexes]
        files = sorted(c.filename for c in copies)
        labels = sorted({c.label for c in copies})
        if len(labels) > 1:
            cross_class.append({"hash": content_hash, "labels": labels, "files": files})
            continue
        # Same bytes in one class: keep one copy, preferring train, so a repeated image
        # never sits on both sides of the train/val line.
        keep = min(indexes, key=lambda i: (split_rank[candidates[i].split], candidates[i].filename))
        if len(copies) > 1:
            duplicates.append({"hash": content_hash, "label": labels[0], "files": files})
            if len({c.split for c in copies}) > 1:
                across_splits += [c.filename for c in copies if c.split != candidates[keep].split]
        chosen, info = candidates[keep], decoded[keep]
        records.append(
            ImageRecord(
                content_hash, chosen.label, chosen.filename, chosen.split, info.width, info.height
            )
        )
    records.sort(key=_record_order)
    unreadable.sort(key=lambda item: item["file"])
    across_splits.sort()
    duplicates.sort(key=lambda item: item["files"][0])
    cross_class.sort(key=lambda item: item["files"][0])
    report = build_report(source, records, unreadable, duplicates, cross_class, across_splits)
    return records, report


def _known_unchanged(ws: Workspace, candidates: list[_Candidate]) -> dict[int, _Decoded]:
    """Folder files unchanged since an ingest read them, whose stored pixels are still
    here and within the pixel limit in force: known without reading them again."""
    origins = {c.origin[0]: c.origin[1] for c in candidates if c.origin is not None}
    if not origins:
        return {}
    known = known_files.recall(ws, origins)
    limit = max_image_pixels()
    found: dict[int, _Decoded] = {}
    for index, candidate in enumerate(candidates):
        entry = known.get(candidate.origin[0]) if candidate.origin else None
        if entry is None or entry.width * entry.height > limit:
            continue  # read as new: the limit's refusal names the file
        if _mark_in_use(ws.image_path(entry.hash)):
            found[index] = _Decoded(entry.hash, entry.width, entry.height)
    return found


def _decode_one(
    candidate: _Candidate, ws: Workspace | None, reading: MemoryBudget
) -> _Decoded | str:
    """The decoded image's facts, or the reason it cannot be used.

    A reason, not an exception: a raised exception would keep the file's bytes alive
    through its traceback for as long as its future is kept.
    """
    # Here, not at the top: a folder ingested again and unchanged decodes nothing, and the
    # command that ingests it then starts without NumPy and Pillow.
    from ..images import header_size, prepare, to_jpeg_bytes

    try:
        with reading.hold(candidate.size, READ_BUDGET_BYTES):
            data = candidate.read()
            content_hash = hashlib.sha256(data).hexdigest()
            target = ws.image_path(content_hash) if ws is not None else None
            # Content-addressed: stored pixels mean these very bytes were decoded and
            # accepted before, so a JPEG's header says all that is left to know (the size
            # limit in force is checked again). Re-ingesting a folder costs no decoding.
            stored = target is not None and _mark_in_use(target)
            known = header_size(data, candidate.filename) if stored else None
            if known is not None:
                return _Decoded(content_hash, *known)
            prepared = prepare(data, candidate.filename)
            del data
    except ImageRejected as exc:
        return exc.reason
    except _Unreadable as exc:
        return str(exc)
    if target is not None and not target.exists():
        # The same bytes always give the same stored pixels.
        ws.write_bytes_atomic(target, to_jpeg_bytes(prepared.image))
    return _Decoded(content_hash, prepared.original_width, prepared.original_height)


def _mark_in_use(stored: Path) -> bool:
    """Refresh a stored image's time; whether it is there. Until this ingest saves its
    dataset no dataset names the image, and `doctor --repair` spares recent ones
    (stored_images): one it is removing is not there, and is stored again."""
    try:
        os.utime(stored)
    except OSError:
        return False
    return True
