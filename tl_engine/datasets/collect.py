"""Collecting files from a source: a folder, a .zip, uploads, or (path, bytes) pairs.

Sources are only ever read: archives are never extracted to disk. Each file becomes a
candidate holding a way to read it, so it is read only when it is decoded; files that
cannot be read at all (links out of the folder, bombs, unsafe paths) are listed with
the reason instead.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from ..errors import DatasetError
from ..image_limits import env_int
from .known_files import file_status
from .layout import (
    _Candidate,
    _Entry,
    _is_junk,
    _layout,
    _name_problem,
    _Source,
    _Unreadable,
    shown_name,
)
from .records import Upload

MAX_ARCHIVE_BYTES = 2 * 1024**3  # $TL_MAX_ARCHIVE_BYTES overrides it, read at each call
MAX_ARCHIVE_MEMBERS = 100_000
# A single file bigger than this is not a photo anyone meant to classify; refusing it
# bounds the memory one ingest thread can take.
MAX_FILE_BYTES = 256 * 1024**2
BOMB_RATIO = 200
BOMB_MIN_BYTES = 10 * 1024**2


def max_archive_bytes() -> int:
    """The archive size limit in force: $TL_MAX_ARCHIVE_BYTES, else MAX_ARCHIVE_BYTES."""
    return env_int("TL_MAX_ARCHIVE_BYTES", MAX_ARCHIVE_BYTES)


def _collect_folder(root: Path) -> _Source:
    if not root.exists():
        _refuse_broken_link(root)
        raise DatasetError(f"folder {root} does not exist: check the path")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder (for a .zip archive, use ingest_zip)")
    real_root = root.resolve()
    unreadable: list[dict[str, str]] = []
    entries: list[_Entry] = []
    dirs: set[tuple[str, ...]] = set()
    def unreadable_folder(exc: OSError) -> None:
        # os.walk skips a folder it cannot list: said, not taken for an empty one.
        where = Path(exc.filename or root)
        rel = PurePosixPath(*where.relative_to(root).parts).as_posix() if where != root else "."
        unreadable.append({"file": rel + "/", "reason": "cannot read the folder "
                           f"({exc.strerror or exc}): its images are left out"})

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable_folder):
        rel_dir = Path(dirpath).relative_to(root).parts
        kept = []
        for dirname in sorted(dirnames):
            if _is_junk([dirname]):
                continue
            if os.path.islink(os.path.join(dirpath, dirname)):
                unreadable.append(
                    {
                        "file": PurePosixPath(*rel_dir, dirname).as_posix(),
                        "reason": "a link to a folder: links are not followed, copy the images in",
                    }
                )
                continue
            kept.append(dirname)
            dirs.add((*rel_dir, dirname))
        dirnames[:] = kept
        for filename in sorted(filenames):
            if _is_junk([filename]):
                continue
            parts = (*rel_dir, filename)
            rel = PurePosixPath(*parts).as_posix()
            full = Path(dirpath) / filename
            problem = _folder_file_problem(full, real_root)
            if problem:
                unreadable.append({"file": rel, "reason": problem})
                continue
            status = file_status(full)
            origin = (os.path.abspath(full), status) if status else None
            entries.append(_Entry(parts, rel, _file_reader(full),
                                  status[0] if status else 0, origin))
    return _layout(entries, dirs, str(root), unreadable)


def _refuse_broken_link(path: Path) -> None:
    if path.is_symlink():
        raise DatasetError(
            f"{path} is a link that leads nowhere or loops back on itself: give the real "
            "folder's or archive's path"
        )


def _folder_file_problem(full: Path, real_root: Path) -> str | None:
    try:
        if full.is_symlink():
            target = full.resolve()
            if target != real_root and real_root not in target.parents:
                return "a link pointing outside the folder: not followed"
        info = full.stat()
    except RuntimeError:  # Python 3.11's resolve() on a cycle of links
        return _LINK_LOOP
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _LINK_LOOP
        return f"cannot read the file ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size > MAX_FILE_BYTES:
        return f"file is {info.st_size / 1024**2:,.0f} MB, over the {_mb(MAX_FILE_BYTES)} limit"
    return None


_LINK_LOOP = "a link that loops back on itself: remove the link"


def _file_size(full: Path) -> int:
    try:
        return full.stat().st_size
    except OSError:
        return 0  # reading it will say why


def _file_reader(full: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with open(full, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise _Unreadable(f"cannot read the file ({exc.strerror or exc})") from exc
        if len(data) > MAX_FILE_BYTES:
            raise _Unreadable(f"file is over the {_mb(MAX_FILE_BYTES)} limit")
        return data

    return read


def _archive_name(source: str | os.PathLike[str] | bytes, name: str | None) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if name:
            return name if name.lower().endswith(".zip") else f"{name}.zip"
        return "uploaded archive"
    return Path(source).name


def _open_zip(source: str | os.PathLike[str] | bytes, archive_name: str) -> zipfile.ZipFile:
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return zipfile.ZipFile(io.BytesIO(bytes(source)))
        path = Path(source).expanduser()
        if not path.is_file():
            raise DatasetError(f"{archive_name}: no such file ({path})")
        return zipfile.ZipFile(path)
    except DatasetError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        if isinstance(exc, zipfile.BadZipFile) and not isinstance(
                source, (bytes, bytearray, memoryview)) and (
                Path(source).suffix.lower() != ".zip"):  # a photo, say, given as the data
            raise DatasetError(
                f"{archive_name} is neither a folder nor a .zip archive: give a folder with "
                "one sub-folder of images per class, or a .zip laid out the same way"
            ) from exc
        raise DatasetError(
            f"{archive_name} is not a readable .zip archive ({exc}): "
            "re-create it with your system's 'compress' or 'zip' command"
        ) from exc


def _member_parts(name: str) -> tuple[str, ...] | None:
    """The member's path parts, or None when it is absolute or climbs out with '..'."""
    if not name or "\x00" in name:
        return None
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        return None
    parts = tuple(part for part in unified.split("/") if part not in ("", "."))
    if any(part == ".." for part in parts):
        return None
    return parts


def _archive_members(archive: zipfile.ZipFile, archive_name: str) -> list[zipfile.ZipInfo]:
    """The archive's entries, once their count and declared total size are within limits."""
    try:
        infos = archive.infolist()
    except Exception as exc:  # pragma: no cover - ZipFile parses the directory on open
        raise DatasetError(f"{archive_name} is damaged ({exc})") from exc
    if len(infos) > MAX_ARCHIVE_MEMBERS:
        raise DatasetError(
            f"{archive_name} holds {len(infos):,} entries, over the limit of "
            f"{MAX_ARCHIVE_MEMBERS:,}: split it into smaller archives"
        )
    declared = sum(info.file_size for info in infos)
    limit = max_archive_bytes()
    if declared > limit:
        raise DatasetError(
            f"{archive_name} would unpack to {declared:,} bytes, over the limit of "
            f"{limit:,} bytes (TL_MAX_ARCHIVE_BYTES): use a smaller archive or smaller images"
        )
    return infos


def _collect_zip(archive: zipfile.ZipFile, archive_name: str) -> _Source:
    infos = _archive_members(archive, archive_name)
    lock = threading.Lock()  # ZipFile reads share one file position
    unreadable: list[dict[str, str]] = []
    entries: list[_Entry] = []
    dirs: set[tuple[str, ...]] = set()
    for info in infos:
        parts = _member_parts(info.filename)
        if parts is None:
            if not info.is_dir():
                unreadable.append(
                    {
                        "file": info.filename,
                        "reason": "unsafe path in archive (absolute or containing '..'): skipped",
                    }
                )
            continue
        if not parts or _is_junk(parts):
            continue
        if info.is_dir():
            dirs.add(parts)
            continue
        problem = _member_problem(info)
        if problem:
            unreadable.append({"file": info.filename, "reason": problem})
            continue
        entries.append(
            _Entry(parts, info.filename, _member_reader(archive, info, lock), info.file_size)
        )
    return _layout(entries, dirs, archive_name, unreadable)


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    if info.flag_bits & 0x1:
        return "encrypted in the archive: re-create the archive without a password"
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > BOMB_MIN_BYTES and ratio > BOMB_RATIO:
        return (
            f"compression bomb: {info.compress_size:,} bytes would unpack to "
            f"{info.file_size:,} ({ratio:,.0f}x)"
        )
    if info.file_size > MAX_FILE_BYTES:
        return f"file is {info.file_size / 1024**2:,.0f} MB, over the {_mb(MAX_FILE_BYTES)} limit"
    return None


def _member_reader(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, lock: threading.Lock
) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with lock, archive.open(info) as handle:
                # Never trust the data to stop where the header says: read one byte
                # past the declared size and refuse the member if that byte exists.
                data = handle.read(info.file_size + 1)
        except RuntimeError as exc:  # encrypted without a password
            raise _Unreadable(f"cannot be read from the archive ({exc})") from exc
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise _Unreadable(f"damaged in the archive ({exc})") from exc
        except Exception as exc:  # zlib.error, NotImplementedError (unknown compression)
            raise _Unreadable(f"cannot be unpacked ({type(exc).__name__}: {exc})") from exc
        if len(data) > info.file_size:
            raise _Unreadable("unpacks to more than its declared size: archive tampered with")
        return data

    return read


def _collect_uploads(uploads: Iterable[Upload]) -> _Source:
    source = _Source(name="uploads")
    for upload in uploads:
        label = " ".join(str(upload.label or "").split())
        if not label:
            source.unreadable.append(
                {
                    "file": shown_name(upload.name),
                    "reason": "no label given: choose the class this image belongs to",
                }
            )
            continue
        problem = _name_problem(label) or _name_problem(upload.name)
        if problem:
            what = "label" if _name_problem(label) else "file name"
            source.unreadable.append(
                {"file": shown_name(upload.name), "reason": f"its {what} {problem}"}
            )
            continue
        source.classes.setdefault(label, set())
        data = upload.data if isinstance(upload.data, bytes) else bytes(upload.data)
        source.candidates.append(_Candidate(upload.name, label, "", lambda data=data: data))
    return source


def _collect_tree(files: Iterable[tuple[str, bytes]], name: str | None) -> _Source:
    """(relative path, bytes) pairs read like a folder; the source is named after `name`,
    else its lone top folder, else "folder"."""
    entries: list[_Entry] = []
    unreadable: list[dict[str, str]] = []
    for path, data in files:
        parts = _member_parts(path)
        if parts is None:
            unreadable.append({"file": path, "reason": "unsafe path (absolute or containing "
                               "'..'): skipped"})
        elif parts and not _is_junk(parts):
            entries.append(_Entry(parts, path, lambda data=data: bytes(data)))
    tops = {entry.parts[0] for entry in entries if len(entry.parts) > 1}
    label = name or (next(iter(tops)) if len(tops) == 1 else "folder")
    return _layout(entries, set(), label, unreadable)


def _mb(size: int) -> str:
    return f"{size / 1024**2:,.0f} MB"
