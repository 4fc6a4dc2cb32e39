"""What earlier ingests learnt about the files of a folder: a file whose path and status
(size, modification and change times, inode, device) are the same as when it was read
has the same bytes, so ingesting the folder again need not read and hash it.

The change time cannot be set back by tools that restore a modification time, so a file
rewritten in place, even to the same size and time, reads as changed and is read again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..store import Workspace

# (size, mtime_ns, ctime_ns, inode, device)
FileStatus = tuple[int, int, int, int, int]

# SQLite's limit on the values of one statement is 32,766 on current builds.
_LOOKUP_CHUNK = 900


@dataclass(frozen=True)
class KnownFile:
    hash: str
    width: int
    height: int


def file_status(path: Path) -> FileStatus | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)


def recall(ws: Workspace, files: Mapping[str, FileStatus]) -> dict[str, KnownFile]:
    """For each path whose status is still the one recorded: what its bytes were."""
    known: dict[str, KnownFile] = {}
    paths = list(files)
    for start in range(0, len(paths), _LOOKUP_CHUNK):
        chunk = paths[start:start + _LOOKUP_CHUNK]
        rows = ws.query(
            "SELECT path, size, mtime_ns, ctime_ns, inode, device, hash, width, height "
            f"FROM known_files WHERE path IN ({','.join('?' * len(chunk))})", chunk)
        for row in rows:
            recorded = (row["size"], row["mtime_ns"], row["ctime_ns"], row["inode"],
                        row["device"])
            if recorded == files[row["path"]]:
                known[row["path"]] = KnownFile(row["hash"], row["width"], row["height"])
    return known


def remember(ws: Workspace, files: Iterable[tuple[str, FileStatus, KnownFile]]) -> None:
    """Record files read this time, each with its status from before it was read: a file
    changed while it was read then no longer matches, and is read again next time."""
    rows = [(path, *status, known.hash, known.width, known.height)
            for path, status, known in files]
    if not rows:
        return
    with ws.transaction() as db:
        db.executemany(
            "INSERT OR REPLACE INTO known_files (path, size, mtime_ns, ctime_ns, inode, "
            "device, hash, width, height) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
