"""Splitting a dataset into train / val / test: its own split if it brings one, else a
seeded split stratified per class."""

from __future__ import annotations

import random
from collections import defaultdict

from ..errors import SpecError
from .records import ImageRecord, _record_order
from .storage import Dataset

SPLITS = ("train", "val", "test")


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
