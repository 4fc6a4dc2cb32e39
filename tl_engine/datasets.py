"""Datasets: files in (a folder, a .zip, uploads), a validated, content-hashed set out.

Every file is read into memory, hashed, decoded and checked; what survives is stored
once per content (`images/<hash>.jpg`, already shrunk) and listed in a manifest. The
health report says, in plain words, what was skipped and why, and what to fix. Sources
are only ever read: archives are never extracted to disk, and nothing is written
outside the workspace.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import stat
import statistics
import threading
import time
import unicodedata
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import DatasetError, NotFound, SpecError
from .images import (
    ImageRejected,
    MemoryBudget,
    decode_budget_bytes,
    env_int,
    max_image_pixels,
    prepare,
    to_jpeg_bytes,
)
from .store import Workspace, validate_project_name

MANIFEST_FORMAT = 1
MAX_ARCHIVE_BYTES = 2 * 1024**3  # $TL_MAX_ARCHIVE_BYTES overrides it, read at each call
MAX_ARCHIVE_MEMBERS = 100_000
# A single file bigger than this is not a photo anyone meant to classify; refusing it
# bounds the memory one ingest thread can take.
MAX_FILE_BYTES = 256 * 1024**2
BOMB_RATIO = 200
# File bytes read and not yet decoded, across the ingest threads: a folder or archive of
# large files is read a few at a time, whatever the thread count. A file larger than
# this is read alone.
READ_BUDGET_BYTES = 256 * 1024**2
BOMB_MIN_BYTES = 10 * 1024**2

RECOMMENDED_PER_CLASS = 20
IMBALANCE_RATIO = 3.0
SMALL_SIDE = 32

# Warnings name at most this many files, then say how many more there are.
NAMED_FILES = 3
# What a stray file looks like from its name alone: files outside class folders are
# never decoded, so their suffix is all that tells a misplaced photo from a script.
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".webp", ".tif",
    ".tiff", ".heic", ".heif", ".avif",
})

SPLITS = ("train", "val", "test")
_SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_JUNK_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
# Characters a file or class name may not hold: control characters (line breaks, tabs),
# line and paragraph separators, and the stand-ins Python uses for bytes that are not
# UTF-8. A class name holding one would break labels.txt (one class per line) and
# the UTF-8 text every store and export is written in.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImageRecord:
    hash: str  # sha256 hex of the ORIGINAL file bytes
    label: str
    filename: str  # path as given: relative path inside the folder/zip, or the upload name
    split: str  # "" when the source gave no split; else "train" | "val" | "test"
    width: int  # original size after EXIF rotation
    height: int


@dataclass(frozen=True)
class Dataset:
    id: str  # "d" + 12 hex digits of sha256(project, content_hash): see dataset_id_for
    project: str
    name: str
    content_hash: str  # sha256 over sorted lines f"{hash}\t{label}\t{split}"
    classes: tuple[str, ...]  # sorted
    records: tuple[ImageRecord, ...]
    report: dict[str, Any] = field(hash=False)  # the health report (JSON-serialisable)
    created_at: float = 0.0

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


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes = field(repr=False)
    label: str


# --- public API --------------------------------------------------------------------


def max_archive_bytes() -> int:
    """The archive size limit in force: $TL_MAX_ARCHIVE_BYTES, else MAX_ARCHIVE_BYTES."""
    return env_int("TL_MAX_ARCHIVE_BYTES", MAX_ARCHIVE_BYTES)


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
    return _ingest(ws, _layout(entries, set(), label, unreadable), project, label, progress)


def check_data(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The health report of a folder or .zip, writing nothing; problems go in "errors"."""
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
        return _report_with_error(str(exc), str(path))


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
    """Forget a dataset (its manifest and row); stored images stay, other sets share them."""
    with ws.transaction() as db:
        if db.execute("SELECT 1 FROM datasets WHERE id = ?", (dataset_id,)).fetchone() is None:
            raise NotFound(f"dataset {dataset_id!r} is not in the workspace {ws.root}")
        runs = [
            row[0]
            for row in db.execute(
                "SELECT id FROM runs WHERE dataset_id = ? ORDER BY created_at", (dataset_id,)
            )
        ]
        if runs:
            shown = ", ".join(runs[:5]) + (", ..." if len(runs) > 5 else "")
            raise DatasetError(
                f"dataset {dataset_id!r} is used by {len(runs)} run(s) ({shown}): "
                "delete those runs first"
            )
        db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
    # After the commit: a crash here leaves an orphan manifest, never a row without one.
    folder = ws.dataset_dir(dataset_id)
    (folder / "manifest.json").unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (someone put more there) or already gone: leave it


def split_records(
    dataset: Dataset, val_split: float = 0.2, test_split: float = 0.0, seed: int = 42
) -> dict[str, list[ImageRecord]]:
    """Train / val / test records: the dataset's own split, else a seeded stratified one.

    A given split is used as is. If it has train (and maybe test) but no val folder, val
    is carved out of train as below, so training always has something to validate on.
    Without a test folder, `test_split > 0` carves a test split out of train the same way
    (a fraction of the train part); the given val images stay as they are.
    """
    if not 0.0 <= val_split < 1.0 or not 0.0 <= test_split < 1.0:
        raise SpecError("val_split and test_split must each be at least 0 and below 1.")
    if val_split + test_split >= 1.0:
        raise SpecError("val_split + test_split must leave some images for training (< 1).")
    parts: dict[str, list[ImageRecord]] = {split: [] for split in SPLITS}
    if dataset.has_given_split:
        for record in dataset.records:
            parts[record.split or "train"].append(record)
        carve_val = 0.0 if parts["val"] else val_split
        carve_test = 0.0 if parts["test"] else test_split
        if carve_val or carve_test:
            carved = _stratified(parts["train"], carve_val, carve_test, seed)
            parts["train"] = carved["train"]
            if carve_val:
                parts["val"] = carved["val"]
            if carve_test:
                parts["test"] = carved["test"]
    else:
        parts = _stratified(list(dataset.records), val_split, test_split, seed)
    return {split: sorted(parts[split], key=_record_order) for split in SPLITS}


# --- collecting files from a source ------------------------------------------------


class _Unreadable(Exception):
    """A file that cannot be read at all; the message is the reason."""


@dataclass(frozen=True)
class _Candidate:
    filename: str
    label: str
    split: str
    read: Callable[[], bytes] = field(repr=False, compare=False)
    size: int = 0  # bytes `read` will take into memory (0: already in memory)


@dataclass
class _Source:
    name: str  # what messages call the source: a folder, an archive, "uploads"
    candidates: list[_Candidate] = field(default_factory=list)
    classes: dict[str, set[str]] = field(default_factory=dict)  # label -> splits seen
    given_split: bool = False
    unreadable: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # label -> its folders as shown to the user ("train/cats/"), for messages only
    class_folders: dict[str, list[str]] = field(default_factory=dict)
    split_folders: dict[str, str] = field(default_factory=dict)  # split -> "train/"


@dataclass(frozen=True)
class _Entry:
    parts: tuple[str, ...]
    filename: str
    read: Callable[[], bytes]
    size: int = 0  # bytes `read` will take into memory (0: already in memory)


def _is_junk(parts: Iterable[str]) -> bool:
    return any(part.startswith(".") or part.lower() in _JUNK_NAMES for part in parts)


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
    for dirpath, dirnames, filenames in os.walk(root):
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
            entries.append(_Entry(parts, rel, _file_reader(full), _file_size(full)))
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


def _layout(
    entries: list[_Entry], dirs: set[tuple[str, ...]], name: str, unreadable: list[dict[str, str]]
) -> _Source:
    """Find the classes (and a given split) in a tree of files, wherever its top is."""
    for entry in entries:  # zips need not list a member's folders
        for depth in range(1, len(entry.parts)):
            dirs.add(entry.parts[:depth])
    unreadable = [{**item, "file": shown_name(item["file"])} for item in unreadable]
    entries, dirs = _plain_names_only(entries, dirs, unreadable)
    prefix: tuple[str, ...] = ()
    while True:
        children = _child_dirs(dirs, prefix)
        if len(children) != 1:
            break
        only = (*prefix, children[0])
        # Descend into a lone wrapper folder ("flowers/daisy/..."), but not when it is
        # itself the only class (its files sit right in it) or a split folder.
        if children[0].lower() in _SPLIT_DIRS or not _child_dirs(dirs, only):
            break
        prefix = only

    source = _Source(name=name, unreadable=unreadable)
    top = _child_dirs(dirs, prefix)
    split_of = {d: _SPLIT_DIRS[d.lower()] for d in top if d.lower() in _SPLIT_DIRS}
    source.given_split = "train" in split_of.values() and len(set(split_of.values())) > 1
    depth = len(prefix)
    ignored_dirs: set[str] = set()
    loose: list[_Entry] = []
    if source.given_split:
        for folder, split in sorted(split_of.items()):
            source.split_folders.setdefault(split, _folder_text((*prefix, folder)))
            for label in _child_dirs(dirs, (*prefix, folder)):
                source.classes.setdefault(label, set()).add(split)
                source.class_folders.setdefault(label, []).append(
                    _folder_text((*prefix, folder, label))
                )
        ignored_dirs = {d for d in top if d not in split_of}
    else:
        for label in top:
            source.classes.setdefault(label, set())
            source.class_folders.setdefault(label, []).append(_folder_text((*prefix, label)))
    for entry in entries:
        if not _under(entry.parts, prefix) or len(entry.parts) == depth:
            loose.append(entry)  # beside the wrapper folder(s) we descended through
            continue
        rel = entry.parts[depth:]
        if source.given_split:
            if rel[0] in ignored_dirs:
                continue
            if rel[0] not in split_of or len(rel) < 3:
                loose.append(entry)
                continue
            label, split = rel[1], split_of[rel[0]]
        else:
            if len(rel) < 2:
                loose.append(entry)
                continue
            label, split = rel[0], ""
        source.candidates.append(
            _Candidate(entry.filename, label, split, entry.read, entry.size)
        )
    source.warnings += _loose_file_warnings(loose, source, prefix)
    if ignored_dirs:
        folders = [_folder_text((*prefix, d)) for d in sorted(ignored_dirs)]
        source.warnings.append(
            f"ignored: folder(s) {_some(folders)} — with train/ and val/ folders only train, "
            f"val (or validation) and test are read: move any images in them into their "
            f"class folders in {source.split_folders['train']}"
        )
    return source


def shown_name(name: str) -> str:
    """A file or folder name as plain one-line text: bytes that are not UTF-8 as \\xNN,
    control characters and line breaks as their escapes (\\n, \\t)."""
    return "".join(_shown_char(char) for char in name)


def _shown_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that os.fsdecode could not decode
        return f"\\x{code - 0xDC00:02x}"
    if unicodedata.category(char) in _UNPRINTABLE_CATEGORIES:
        return ascii(char)[1:-1]
    return char


def _name_problem(name: str) -> str | None:
    """Why a name cannot be used as it is, or None."""
    categories = {unicodedata.category(char) for char in name}
    if "Cs" in categories:
        return "is not valid UTF-8 text"
    if categories & _UNPRINTABLE_CATEGORIES:
        return "contains a line break, tab or other control character"
    return None


def _plain_names_only(
    entries: list[_Entry], dirs: set[tuple[str, ...]], unreadable: list[dict[str, str]]
) -> tuple[list[_Entry], set[tuple[str, ...]]]:
    """Skip each folder and file whose name is not plain text, naming it once in
    `unreadable`: a folder's files go with it, whether or not it would be a class."""
    for folder in sorted(dirs):
        problem = _name_problem(folder[-1])
        if problem and not any(_name_problem(part) for part in folder[:-1]):
            unreadable.append(
                {
                    "file": _folder_text(tuple(shown_name(part) for part in folder)),
                    "reason": f"the folder name {problem}: rename the folder to use it",
                }
            )
    kept: list[_Entry] = []
    for entry in entries:
        if any(_name_problem(part) for part in entry.parts[:-1]):
            continue  # its folder is named above
        problem = _name_problem(entry.parts[-1])
        if problem:
            unreadable.append(
                {
                    "file": shown_name(entry.filename),
                    "reason": f"the file name {problem}: rename the file to use it",
                }
            )
            continue
        kept.append(entry)
    plain_dirs = {folder for folder in dirs if not any(_name_problem(p) for p in folder)}
    return kept, plain_dirs


def _loose_file_warnings(
    loose: list[_Entry], source: _Source, prefix: tuple[str, ...]
) -> list[str]:
    """What to say about files outside any class folder: each named, by what it is."""
    images = sorted((e for e in loose if _looks_like_image(e.filename)), key=lambda e: e.filename)
    others = sorted(e.filename for e in loose if not _looks_like_image(e.filename))
    warnings: list[str] = []
    if others:
        warnings.append(
            f"ignored: not an image ({_some(others)}) — only images inside class folders "
            f"are read; nothing to do, or remove {'it' if len(others) == 1 else 'them'} from "
            "the dataset folder"
        )
    if images:
        first = images[0].parts
        if not source.given_split:
            folder = _folder_text(prefix)
        elif len(first) == len(prefix) + 2 and first[len(prefix)].lower() in _SPLIT_DIRS:
            folder = _folder_text(first[:-1])  # right in train/: its class folder is in there
        else:
            folder = source.split_folders["train"]
        # A real class in the example: "<class>" would read as markup on a web page.
        label = min(source.classes, default="cats")
        warnings.append(
            f"ignored: image not in a class folder ({_some([e.filename for e in images])}) — "
            f"move each image into its class folder, e.g. {folder}{label}/{first[-1]}"
        )
    return warnings


def _looks_like_image(filename: str) -> bool:
    return PurePosixPath(filename).suffix.lower() in IMAGE_SUFFIXES


def _folder_text(parts: tuple[str, ...]) -> str:
    """A folder as messages name it: "train/cats/"; the source's top is ""."""
    return "".join(f"{part}/" for part in parts)


def _some(names: list[str], shown: int = NAMED_FILES) -> str:
    """'a, b, c and 4 more': names a few and counts the rest."""
    rest = len(names) - shown
    head = ", ".join(names[:shown])
    return f"{head} and {rest} more" if rest > 0 else head


def _child_dirs(dirs: set[tuple[str, ...]], prefix: tuple[str, ...]) -> list[str]:
    depth = len(prefix)
    return sorted({d[depth] for d in dirs if len(d) == depth + 1 and d[:depth] == prefix})


def _under(parts: tuple[str, ...], prefix: tuple[str, ...]) -> bool:
    return parts[: len(prefix)] == prefix


# --- decoding, de-duplicating, reporting --------------------------------------------


@dataclass(frozen=True)
class _Decoded:
    hash: str
    width: int
    height: int


def _ingest(
    ws: Workspace, source: _Source, project: str, name: str, progress: Progress | None
) -> Dataset:
    project = ws.ensure_project(project)
    records, report = _process(source, ws, progress)
    if report["errors"]:
        error = DatasetError(f"{source.name}: " + "; ".join(report["errors"]))
        error.report = report  # type: ignore[attr-defined]  # for pages that show it
        raise error
    return _save(ws, project, name, records, report)


def _process(
    source: _Source, ws: Workspace | None, progress: Progress | None
) -> tuple[list[ImageRecord], dict[str, Any]]:
    """Decode every candidate (storing it when `ws` is given) and build the report."""
    max_image_pixels()  # a mistyped limit fails once, here, not once per image
    decode_budget_bytes()
    candidates = source.candidates
    unreadable = list(source.unreadable)
    decoded: dict[int, _Decoded] = {}
    total = len(candidates)
    if progress:
        progress(0, total)
    if candidates:
        workers = min(16, (os.cpu_count() or 2) + 2, total)
        # Pillow and hashlib release the GIL while decoding, resizing, encoding and
        # hashing, so threads scale across cores without pickling images to processes.
        reading = MemoryBudget()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
            futures = {
                pool.submit(_decode_one, c, ws, reading): i for i, c in enumerate(candidates)
            }
            for done, future in enumerate(as_completed(futures), start=1):
                # Dropped as soon as it is read: a finished future keeps its result alive.
                index = futures.pop(future)
                outcome = future.result()
                if isinstance(outcome, _Decoded):
                    decoded[index] = outcome
                else:
                    unreadable.append({"file": candidates[index].filename, "reason": outcome})
                if progress:
                    progress(done, total)

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
    report = _report(source, records, unreadable, duplicates, cross_class, across_splits)
    return records, report


def _decode_one(
    candidate: _Candidate, ws: Workspace | None, reading: MemoryBudget
) -> _Decoded | str:
    """The decoded image's facts, or the reason it cannot be used.

    A reason, not an exception: a raised exception would keep the file's bytes alive
    through its traceback for as long as its future is kept.
    """
    try:
        with reading.hold(candidate.size, READ_BUDGET_BYTES):
            data = candidate.read()
            content_hash = hashlib.sha256(data).hexdigest()
            prepared = prepare(data, candidate.filename)
            del data
    except ImageRejected as exc:
        return exc.reason
    except _Unreadable as exc:
        return str(exc)
    if ws is not None:
        target = ws.image_path(content_hash)
        # Content-addressed: the same bytes always give the same stored pixels.
        if not target.exists():
            ws.write_bytes_atomic(target, to_jpeg_bytes(prepared.image))
    return _Decoded(content_hash, prepared.original_width, prepared.original_height)


def _report(
    source: _Source,
    records: list[ImageRecord],
    unreadable: list[dict[str, str]],
    duplicates: list[dict[str, Any]],
    cross_class: list[dict[str, Any]],
    across_splits: list[str],
) -> dict[str, Any]:
    classes: dict[str, dict[str, int]] = {
        label: {"count": 0, "train": 0, "val": 0, "test": 0} for label in sorted(source.classes)
    }
    for record in records:
        entry = classes.setdefault(record.label, {"count": 0, "train": 0, "val": 0, "test": 0})
        entry["count"] += 1
        if record.split:
            entry[record.split] += 1
    widths = [r.width for r in records]
    heights = [r.height for r in records]
    sizes = {
        "min_width": min(widths, default=0),
        "min_height": min(heights, default=0),
        "median_width": int(statistics.median(widths)) if widths else 0,
        "median_height": int(statistics.median(heights)) if heights else 0,
        "max_width": max(widths, default=0),
        "max_height": max(heights, default=0),
    }
    errors = _errors(source, classes, records, unreadable)
    warnings = list(source.warnings)
    warnings += _warnings(
        source, classes, records, unreadable, duplicates, cross_class, across_splits
    )
    return {
        "source": source.name,
        "n_files": len(source.candidates) + len(source.unreadable),
        "n_images": len(records),
        "n_classes": len(classes),
        "classes": classes,
        "sizes": sizes,
        "unreadable": unreadable,
        "duplicates": duplicates,
        "cross_class_duplicates": cross_class,
        "given_split": source.given_split,
        "warnings": warnings,
        "errors": errors,
    }


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
            f"class ({_some(across_splits)}): kept once, in train, so validation is not "
            "flattered; delete the copies from the other split folders"
        )
    if cross_class:
        files = sorted(name for item in cross_class for name in item["files"])
        warnings.append(
            f"{len(cross_class)} image(s) appear under more than one class ({len(files)} "
            f"files: {_some(files)}): all copies were left out, because their label is "
            "ambiguous — keep each image in its one class folder"
        )
    return warnings


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


def _report_with_error(message: str, source: str) -> dict[str, Any]:
    return {
        "source": source,
        "n_files": 0,
        "n_images": 0,
        "n_classes": 0,
        "classes": {},
        "sizes": {
            key: 0
            for key in (
                "min_width",
                "min_height",
                "median_width",
                "median_height",
                "max_width",
                "max_height",
            )
        },
        "unreadable": [],
        "duplicates": [],
        "cross_class_duplicates": [],
        "given_split": False,
        "warnings": [],
        "errors": [message],
    }


# --- storage ------------------------------------------------------------------------


def content_hash_of(records: Iterable[ImageRecord]) -> str:
    lines = sorted(f"{r.hash}\t{r.label}\t{r.split}" for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def dataset_id_for(project: str, content_hash: str) -> str:
    # The project is part of the id because the schema keys datasets by id alone while
    # allowing the same content in several projects (UNIQUE (project, content_hash)).
    digest = hashlib.sha256(f"{project}\n{content_hash}".encode()).hexdigest()
    return "d" + digest[:12]


def _save(
    ws: Workspace, project: str, name: str, records: list[ImageRecord], report: dict[str, Any]
) -> Dataset:
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
    return load_dataset(ws, existing["id"] if existing is not None else dataset_id)


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


# --- splitting ----------------------------------------------------------------------


def _record_order(record: ImageRecord) -> tuple[str, str]:
    return (record.label, record.hash)


def _stratified(
    records: list[ImageRecord], val_split: float, test_split: float, seed: int
) -> dict[str, list[ImageRecord]]:
    by_label: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_label[record.label].append(record)
    parts: dict[str, list[ImageRecord]] = {split: [] for split in SPLITS}
    for label in sorted(by_label):
        # Sorting by hash first makes the split independent of the order files were
        # found in; a generator per class keeps one class's split stable when another
        # class gains images. String seeds are hashed with SHA-512: stable across runs.
        group = sorted(by_label[label], key=lambda r: r.hash)
        random.Random(f"{seed}:{label}").shuffle(group)
        n_val, n_test = _split_sizes(len(group), val_split, test_split)
        parts["val"] += group[:n_val]
        parts["test"] += group[n_val : n_val + n_test]
        parts["train"] += group[n_val + n_test :]
    return parts


def _split_sizes(n: int, val_split: float, test_split: float) -> tuple[int, int]:
    n_val = round(n * val_split)
    n_test = round(n * test_split)
    if val_split > 0 and n >= 2:
        n_val = max(n_val, 1)
    if test_split > 0 and n >= 3:
        n_test = max(n_test, 1)
    while n_val + n_test > max(n - 1, 0):  # at least one image left to train on
        if n_test > 0 and (n_test >= n_val or n_val <= 1):
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def _mb(size: int) -> str:
    return f"{size / 1024**2:,.0f} MB"
