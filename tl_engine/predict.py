"""Top-k predictions from a completed run's saved model; each model is loaded once per process.

A batch may come from single files, a folder upload or a .zip: `prediction_batch` turns
uploaded files into (relative path, bytes) items, opening archives with the same safety
rules as ingest, and marks each file it will not read as `Refused` with the reason.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from . import runs
from .calibration import fold_temperature, is_not_sure, run_temperature
from .datasets import (
    MAX_FILE_BYTES,
    _archive_members,
    _is_junk,
    _mb,
    _member_parts,
    _member_problem,
    _member_reader,
    _open_zip,
    _Unreadable,
)
from .errors import DatasetError
from .familiarity import (
    FamiliarityProfile,
    features_and_probabilities_model,
    fingerprint_image,
    load_profile,
)
from .images import load_rgb_array
from .model_file import checked_model_path, load_run_model
from .pipeline import to_model_input
from .store import Workspace

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_CACHE_SIZE = 4
# Images decoded and sent to the model at a time: a batch of thousands (a whole archive)
# then never holds more than this many decoded inputs in memory.
_MODEL_BATCH = 64  # images per model call: bounds the activations held at once
_CHUNK = 256
_UNSAFE_PATH = "unsafe path (absolute or containing '..'): not read"
# Bytes unpacked from archives into one batch: what the batch holds until it is predicted.
# Members past it are refused by name, so an archive of large (or hugely compressible)
# members cannot fill the server's memory.
MAX_BATCH_UNPACKED_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class Refused:
    """A file of a batch that is never read (unsafe path, over a size limit, not an image
    file): its Prediction carries "name: reason" as the error."""

    name: str
    reason: str


BatchItem = tuple[str, bytes] | Refused
ImageInput = str | os.PathLike | bytes | tuple[str, bytes] | Refused


@dataclass(frozen=True)
class Prediction:
    name: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    # Every class's probability (0-1), in the model's label order; empty for a failed image.
    probabilities: dict[str, float] = field(default_factory=dict)
    # How much the image looks like the training images (0-1, see tl_engine.familiarity);
    # None for runs without a familiarity profile (trained before it existed).
    familiarity: float | None = None
    unfamiliar: bool = False  # like none of the training images: its label means little
    # Its (calibrated) confidence is below the threshold asked for: no label is claimed.
    not_sure: bool = False

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def confidence(self) -> float | None:
        return self.top[0][1] if self.top else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.name,
            "label": self.label,
            "confidence": self.confidence,
            "top": [{"label": label, "probability": p} for label, p in self.top],
            "error": self.error,
            "probabilities": dict(self.probabilities),
            "familiarity": self.familiarity,
            "unfamiliar": self.unfamiliar,
            "not_sure": self.not_sure,
        }

    def judged(self, not_sure_below: float | None) -> Prediction:
        """This prediction with `not_sure` set for the threshold (None or 0: never)."""
        return dataclasses.replace(self, not_sure=is_not_sure(self.confidence, not_sure_below))


def _display_name(image: ImageInput) -> str:
    if isinstance(image, Refused):
        return image.name
    if isinstance(image, tuple):
        return image[0]
    if isinstance(image, bytes):
        return "image"
    return Path(image).name


class Predictor:
    """A run's model ready to predict. With a `temperature` (the run's, fitted on its
    validation images) the model is changed in place to give calibrated probabilities,
    softmax(logits / T), exactly as the run's exports do."""

    def __init__(self, model: Any, labels: list[str], image_size: int, run_id: str,
                 profile: FamiliarityProfile | None = None,
                 temperature: float | None = None) -> None:
        self.model, self.labels, self.image_size, self.run_id = model, labels, image_size, run_id
        self.temperature = temperature
        fold_temperature(model, temperature)
        self._lock = threading.Lock()  # Keras models are not safe to call from many threads
        # The same model with its pooled features as a second output, when the run has a
        # familiarity profile that was made from this model's features.
        self.profile: FamiliarityProfile | None = None
        self._scoring_model: Any = None
        if profile is not None:
            scoring = features_and_probabilities_model(model)
            if scoring is not None:
                _, found = scoring.predict_on_batch(fingerprint_image(image_size))
                if profile.matches(np.asarray(found)):
                    self.profile, self._scoring_model = profile, scoring

    def pixels(self, image: ImageInput) -> tuple[str, np.ndarray]:
        """(name, uint8 model input) exactly as this model sees the image."""
        name = _display_name(image)
        if isinstance(image, Refused):
            raise DatasetError(f"{image.name}: {image.reason}")
        if isinstance(image, tuple):
            rgb = load_rgb_array(image[1], name)
        elif isinstance(image, bytes):
            rgb = load_rgb_array(image, name)
        else:
            rgb = load_rgb_array(image, str(image))
        return name, to_model_input(rgb, self.image_size)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self._outputs(batch)[0]

    def _outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities and, with a profile, pooled features, in one forward pass."""
        # predict_on_batch reuses one compiled function: about 15 ms for one photo where
        # Model.predict spends about 90 ms setting up its input pipeline on every call.
        batch = batch.astype(np.float32)
        model = self._scoring_model or self.model
        with self._lock:
            parts = [model.predict_on_batch(batch[start:start + _MODEL_BATCH])
                     for start in range(0, len(batch), _MODEL_BATCH)]
        if not parts:
            return np.zeros((0, len(self.labels)), np.float32), None
        if self._scoring_model is None:
            return np.concatenate([np.asarray(p) for p in parts]), None
        return (np.concatenate([np.asarray(p[0]) for p in parts]),
                np.concatenate([np.asarray(p[1], dtype=np.float32) for p in parts]))

    def predict(self, images: Sequence[ImageInput], top_k: int = 3,
                not_sure_below: float | None = None) -> list[Prediction]:
        """One Prediction per image, in order: the top-k classes and every class's
        probability, or the error that kept the image from being predicted; `not_sure`
        where the top confidence is below `not_sure_below`."""
        k = max(1, min(top_k, len(self.labels)))
        results: list[Prediction] = []
        for start in range(0, len(images), _CHUNK):
            results.extend(self._predict_chunk(images[start:start + _CHUNK], k))
        return [p.judged(not_sure_below) for p in results] if not_sure_below else results

    def _predict_chunk(self, images: Sequence[ImageInput], k: int) -> list[Prediction]:
        names: list[str] = []
        arrays: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for image in images:
            try:
                name, array = self.pixels(image)
                names.append(name)
                arrays.append(array)
                errors.append(None)
            except DatasetError as exc:
                names.append(_display_name(image))
                arrays.append(None)
                errors.append(str(exc))
        good = [a for a in arrays if a is not None]
        probs, features = self._outputs(np.stack(good)) if good else (np.zeros((0, 1)), None)
        scores = (self.profile.score(features) if self.profile is not None
                  and features is not None else None)
        results = []
        row_index = 0
        for name, array, error in zip(names, arrays, errors, strict=True):
            if array is None:
                results.append(Prediction(name, [], error))
                continue
            row = probs[row_index]
            order = np.argsort(-row)[:k]
            results.append(Prediction(
                name, [(self.labels[i], float(row[i])) for i in order],
                probabilities={label: float(p) for label, p in zip(self.labels, row,
                                                                    strict=True)},
                familiarity=None if scores is None else float(scores[0][row_index]),
                unfamiliar=False if scores is None else bool(scores[1][row_index])))
            row_index += 1
        return results


_loaded: OrderedDict[tuple[str, float], Predictor] = OrderedDict()
_loaded_lock = threading.Lock()


def load_predictor(ws: Workspace, run_id: str) -> Predictor:
    """The run's model, loaded once per process and kept (a few, least recently used)."""
    path = runs.model_path(ws, run_id)
    key = (str(path), path.stat().st_mtime)
    with _loaded_lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
    checked_model_path(ws, run_id)
    run = runs.get_run(ws, run_id)
    model = load_run_model(ws, run_id)
    predictor = Predictor(model, runs.labels(ws, run_id), run.spec.image_size, run_id,
                          load_profile(ws.run_dir(run_id)), run_temperature(ws.run_dir(run_id)))
    with _loaded_lock:
        _loaded[key] = predictor
        while len(_loaded) > _CACHE_SIZE:
            _loaded.popitem(last=False)
    return predictor


def predict_images(
    ws: Workspace, run_id: str, images: Sequence[ImageInput], top_k: int = 3,
    not_sure_below: float | None = None,
) -> list[Prediction]:
    return load_predictor(ws, run_id).predict(images, top_k, not_sure_below)


def prediction_batch(files: Iterable[tuple[str, bytes]]) -> list[BatchItem]:
    """Uploaded files (name or relative path, bytes) as one prediction batch, in order.

    Each .zip is opened in place: its images come under their paths inside it. Paths that
    are absolute or climb out with '..', files over the size limit and files that are not
    images (by extension) become `Refused` items naming the file; junk (__MACOSX, dot files)
    is left out. An archive that cannot be opened at all is one Refused item.
    """
    batch: list[BatchItem] = []
    allowance = [MAX_BATCH_UNPACKED_BYTES]  # shared by every archive of the batch
    for name, data in files:
        if name.lower().endswith(".zip"):
            try:
                batch.extend(_images_in_zip(data, name, allowance))
            except DatasetError as exc:
                batch.append(Refused(name, str(exc)))
            continue
        parts = _member_parts(name)
        if parts is None:
            batch.append(Refused(name, _UNSAFE_PATH))
        elif parts and not _is_junk(parts):
            path = "/".join(parts)
            problem = _size_problem(len(data)) or _not_an_image(path)
            batch.append(Refused(path, problem) if problem else (path, bytes(data)))
    return batch


def images_in_zip(data: bytes, name: str) -> list[BatchItem]:
    """A .zip's files as a prediction batch, in archive order: (path inside the archive,
    bytes) per image, a `Refused` item for each member not read (unsafe path, encrypted,
    over a size limit, a compression bomb, not an image file). Members are only read once
    accepted, and at most MAX_BATCH_UNPACKED_BYTES of them. Raises DatasetError when the
    archive is unreadable or over its limits."""
    return _images_in_zip(data, name, [MAX_BATCH_UNPACKED_BYTES])


def _images_in_zip(data: bytes, name: str, allowance: list[int]) -> list[BatchItem]:
    """images_in_zip, drawing the bytes it unpacks from `allowance` (one mutable number)."""
    batch: list[BatchItem] = []
    with _open_zip(data, name) as archive:
        lock = threading.Lock()
        for info in _archive_members(archive, name):
            if info.is_dir():
                continue
            parts = _member_parts(info.filename)
            if parts is None:
                batch.append(Refused(info.filename, _UNSAFE_PATH))
                continue
            if not parts or _is_junk(parts):
                continue
            path = "/".join(parts)
            problem = _member_problem(info) or _not_an_image(path)
            if not problem and info.file_size > allowance[0]:
                problem = (f"not read: the batch already holds "
                           f"{_mb(MAX_BATCH_UNPACKED_BYTES - allowance[0])} of unpacked images "
                           f"(limit {_mb(MAX_BATCH_UNPACKED_BYTES)}); predict the rest of "
                           f"{name} in another batch")
            if problem:
                batch.append(Refused(path, problem))
                continue
            allowance[0] -= info.file_size
            batch.append(_read_member(archive, info, path, lock))
    return batch


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str,
                 lock: threading.Lock) -> BatchItem:
    try:
        return path, _member_reader(archive, info, lock)()
    except _Unreadable as exc:
        return Refused(path, str(exc))


def _size_problem(size: int) -> str | None:
    if size > MAX_FILE_BYTES:
        return f"file is {size / 1024**2:,.0f} MB, over the {_mb(MAX_FILE_BYTES)} limit"
    return None


def _not_an_image(path: str) -> str | None:
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return None
    return (f"not an image file ({suffix or 'no extension'}): only "
            f"{', '.join(s[1:] for s in IMAGE_SUFFIXES)} files are predicted")
