"""What a dataset is made of: image records, and the uploads some are made from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
class Upload:
    name: str
    data: bytes = field(repr=False)
    label: str


def _record_order(record: ImageRecord) -> tuple[str, str]:
    return (record.label, record.hash)
