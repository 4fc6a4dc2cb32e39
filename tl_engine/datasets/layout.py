"""Reading a tree of files as a dataset: where its classes are, whether it brings its own
train/val split, which names cannot be used, and what to say about stray files."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from .known_files import FileStatus

# Warnings name at most this many files, then say how many more there are.
NAMED_FILES = 3
# What a stray file looks like from its name alone: files outside class folders are
# never decoded, so their suffix is all that tells a misplaced photo from a script.
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".webp", ".tif",
    ".tiff", ".heic", ".heif", ".avif",
})

_SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_JUNK_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
# Characters a file or class name may not hold: control characters (line breaks, tabs),
# line and paragraph separators, and the stand-ins Python uses for bytes that are not
# UTF-8. A class name holding one would break labels.txt (one class per line) and
# the UTF-8 text every store and export is written in.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


class _Unreadable(Exception):
    """A file that cannot be read at all; the message is the reason."""


@dataclass(frozen=True)
class _Candidate:
    filename: str
    label: str
    split: str
    read: Callable[[], bytes] = field(repr=False, compare=False)
    size: int = 0  # bytes `read` will take into memory (0: already in memory)
    # A file in a folder: its absolute path and status before it was read.
    origin: tuple[str, FileStatus] | None = None


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
    origin: tuple[str, FileStatus] | None = None  # a file in a folder: path and status


def _is_junk(parts: Iterable[str]) -> bool:
    return any(part.startswith(".") or part.lower() in _JUNK_NAMES for part in parts)


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
        # itself the only class (its files sit right in it). A lone split folder (a
        # dataset's train/ picked or zipped alone) wraps its class folders alike: with no
        # other split beside it, there is no given split to keep.
        if not _child_dirs(dirs, only):
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
            if label.lower() in _SPLIT_DIRS and (inner := _child_dirs(dirs, (*prefix, label))):
                folder = _folder_text((*prefix, label))
                source.warnings.append(
                    f"{folder} is read as a class named {label!r}, although it holds folders "
                    f"({_some([f'{name}/' for name in inner])}): a given split needs a train/ "
                    f"folder beside it — put the class folders in train/ and {folder}"
                )
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
            _Candidate(entry.filename, label, split, entry.read, entry.size, entry.origin)
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
