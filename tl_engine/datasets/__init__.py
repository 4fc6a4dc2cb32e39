"""Datasets: files in (a folder, a .zip, uploads), a validated, content-hashed set out.

Every file is read into memory, hashed, decoded and checked; what survives is stored
once per content (`images/<hash>.jpg`, already shrunk) and listed in a manifest. The
health report says, in plain words, what was skipped and why, and what to fix. Sources
are only ever read: archives are never extracted to disk, and nothing is written
outside the workspace.

One module per job: `collect` (folders, archives, uploads) and `layout` (classes and
splits in a tree of files), `decode` (decoding, de-duplicating), `health` (the report),
`storage` (manifests and index rows), `splits` (train / val / test), and `ingest`,
which runs them in that order; `revise` makes a new version of a stored dataset.
"""

from .collect import (
    BOMB_MIN_BYTES,
    BOMB_RATIO,
    MAX_ARCHIVE_BYTES,
    MAX_ARCHIVE_MEMBERS,
    MAX_FILE_BYTES,
    _archive_members,
    _mb,
    _member_parts,
    _member_problem,
    _member_reader,
    _open_zip,
    max_archive_bytes,
)
from .decode import READ_BUDGET_BYTES
from .health import (
    IMBALANCE_RATIO,
    RECOMMENDED_PER_CLASS,
    SMALL_SIDE,
    HealthReport,
    ImageSizes,
)
from .ingest import (
    check_data,
    check_health,
    ingest_folder,
    ingest_tree,
    ingest_uploads,
    ingest_zip,
)
from .layout import IMAGE_SUFFIXES, NAMED_FILES, _is_junk, _Unreadable, shown_name
from .records import ImageRecord, Progress, Upload
from .revise import revise_dataset
from .splits import SPLITS, split_records
from .storage import (
    MANIFEST_FORMAT,
    Dataset,
    content_hash_of,
    dataset_id_for,
    delete_dataset,
    list_datasets,
    load_dataset,
)

__all__ = [
    "BOMB_MIN_BYTES",
    "BOMB_RATIO",
    "IMAGE_SUFFIXES",
    "IMBALANCE_RATIO",
    "MANIFEST_FORMAT",
    "MAX_ARCHIVE_BYTES",
    "MAX_ARCHIVE_MEMBERS",
    "MAX_FILE_BYTES",
    "NAMED_FILES",
    "READ_BUDGET_BYTES",
    "RECOMMENDED_PER_CLASS",
    "SMALL_SIDE",
    "SPLITS",
    "Dataset",
    "HealthReport",
    "ImageRecord",
    "ImageSizes",
    "Progress",
    "Upload",
    "check_data",
    "check_health",
    "content_hash_of",
    "dataset_id_for",
    "delete_dataset",
    "ingest_folder",
    "ingest_tree",
    "ingest_uploads",
    "ingest_zip",
    "list_datasets",
    "load_dataset",
    "revise_dataset",
    "max_archive_bytes",
    "shown_name",
    "split_records",
    # The archive readers the prediction batch shares (tl_engine/predict.py).
    "_Unreadable",
    "_archive_members",
    "_is_junk",
    "_mb",
    "_member_parts",
    "_member_problem",
    "_member_reader",
    "_open_zip",
]
