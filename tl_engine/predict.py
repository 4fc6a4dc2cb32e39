"""Top-k predictions from a completed run's saved model; each model is loaded once per process.

A model is ready as soon as it can be: `warm_predictor` loads it in the background the
moment a run is chosen, a few recent ones stay loaded, and its forward pass is one graph
traced once for every batch size, so neither the first nor a later call waits on tracing.

A batch may come from single files, a folder upload or a .zip: `prediction_batch` turns
uploaded files into (relative path, bytes) items, opening archives with the same safety
rules as ingest, and marks each file it will not read as `Refused` with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
from .features import inference_function
from .images import load_rgb_array
from .model_file import checked_model_path, load_run_model
from .pipeline import to_model_input
from .store import Workspace

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_CACHE_SIZE = 4
# Threads decoding one batch's images: Pillow and the resize release the GIL.
_DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))
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
        # With a profile, the same model with its pooled features as a second output: one
        # forward pass gives both. Its features are needed to check the profile anyway.
        scoring = (features_and_probabilities_model(model) if profile is not None
                   else None)
        self._network = scoring or model
        self._forward = inference_function(self._network, image_size)
        self._graph_ready = threading.Event()
        self._tracing_started = False
        self._trace_lock = threading.Lock()
        # The profile is checked against this model (a fingerprint image's features) with
        # the first prediction, in the same forward pass, or when `profile` is first read.
        self._unchecked_profile = profile
        self._checked_profile: FamiliarityProfile | None = None
        self._profile_lock = threading.Lock()

    @property
    def profile(self) -> FamiliarityProfile | None:
        """The run's familiarity profile, if it matches this model's features."""
        with self._profile_lock:
            if self._unchecked_profile is not None:
                self._check_profile(self._call(fingerprint_image(self.image_size))[1])
        return self._checked_profile

    def _check_profile(self, fingerprint_features: np.ndarray | None) -> None:
        profile, self._unchecked_profile = self._unchecked_profile, None
        if (profile is not None and fingerprint_features is not None
                and profile.matches(fingerprint_features)):
            self._checked_profile = profile

    def start_tracing(self) -> None:
        """Trace and optimise the forward graph in the background (about a second); until
        it is done the model runs eagerly: a few times slower per call, but at once. It
        starts after the first prediction, or when a load in the background ends: tracing
        beside a prediction would hold it up, both needing Python at the same time."""
        with self._trace_lock:
            if self._tracing_started:
                return
            self._tracing_started = True
        # Not a daemon: TensorFlow aborts a process that exits while a thread traces.
        threading.Thread(target=self._prepare_graph, name=f"tl-trace-{self.run_id}").start()

    def _prepare_graph(self) -> None:
        size = self.image_size
        try:
            self._forward(np.zeros((1, size, size, 3), np.float32))
            to_model_input(np.zeros((size + 1, size, 3), np.uint8), size)
        except Exception:  # the eager path goes on serving: slower, still right
            logging.getLogger(__name__).exception("run %s: no graph for predictions",
                                                  self.run_id)
            return
        self._graph_ready.set()

    def wait_until_traced(self, timeout: float | None = None) -> bool:
        """Start tracing the forward graph if it has not started (see `start_tracing`) and
        wait for it; True once predictions run on it."""
        self.start_tracing()
        return self._graph_ready.wait(timeout)

    @property
    def traces(self) -> int:
        """How often the forward graph was traced: 1 whatever the batch sizes seen."""
        return int(self._forward.experimental_get_tracing_count())

    def _call(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One forward pass: probabilities and (when the graph gives them) pooled features."""
        batch = np.asarray(batch, dtype=np.float32)
        with self._lock:
            out = (self._forward(batch) if self._graph_ready.is_set()
                   else self._network([batch], training=False))
        if self._network is not self.model:
            return np.asarray(out[0]), np.asarray(out[1], dtype=np.float32)
        return np.asarray(out), None

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
        """Class probabilities and, with a profile, pooled features, in one forward pass
        per _MODEL_BATCH images."""
        parts = self._first_outputs(batch) if self._unchecked_profile is not None else None
        if parts is None:
            parts = self._batched_calls(batch)
        if not parts:
            return np.zeros((0, len(self.labels)), np.float32), None
        probabilities = np.concatenate([p[0] for p in parts])
        if self._checked_profile is None:
            return probabilities, None
        return probabilities, np.concatenate([p[1] for p in parts])

    def _batched_calls(self, batch: np.ndarray) -> list[tuple[np.ndarray, Any]]:
        return [self._call(batch[start:start + _MODEL_BATCH])
                for start in range(0, len(batch), _MODEL_BATCH)]

    def _first_outputs(self, batch: np.ndarray) -> list[tuple[np.ndarray, Any]] | None:
        """The first prediction's outputs, the profile's fingerprint image riding along in
        its first model batch; None when another call has checked the profile meanwhile."""
        with self._profile_lock:
            if self._unchecked_profile is None:
                return None
            parts = self._batched_calls(
                np.concatenate([fingerprint_image(self.image_size), batch]))
            features = parts[0][1]
            self._check_profile(None if features is None else features[:1])
            parts[0] = (parts[0][0][1:], None if features is None else features[1:])
            return parts

    def predict(self, images: Sequence[ImageInput], top_k: int = 3,
                not_sure_below: float | None = None,
                expect_more: bool = True) -> list[Prediction]:
        """One Prediction per image, in order: the top-k classes and every class's
        probability, or the error that kept the image from being predicted; `not_sure`
        where the top confidence is below `not_sure_below`. `expect_more`: the model is
        likely to predict again (a page, not a one-off command), so its graph is traced in
        the background once this prediction is done."""
        k = max(1, min(top_k, len(self.labels)))
        results: list[Prediction] = []
        for start in range(0, len(images), _CHUNK):
            results.extend(self._predict_chunk(images[start:start + _CHUNK], k))
        if expect_more:
            self.start_tracing()
        return [p.judged(not_sure_below) for p in results] if not_sure_below else results

    def _decoded(self, image: ImageInput) -> tuple[str, np.ndarray | None, str | None]:
        try:
            name, array = self.pixels(image)
            return name, array, None
        except DatasetError as exc:
            return _display_name(image), None, str(exc)

    def _predict_chunk(self, images: Sequence[ImageInput], k: int) -> list[Prediction]:
        decoded = _map_threads(self._decoded, images)
        names = [name for name, _, _ in decoded]
        arrays = [array for _, array, _ in decoded]
        errors = [error for _, _, error in decoded]
        good = [a for a in arrays if a is not None]
        probs, features = self._outputs(np.stack(good)) if good else (np.zeros((0, 1)), None)
        scores = (self._checked_profile.score(features) if self._checked_profile is not None
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


def _map_threads(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """[function(item) for item in items], in order, on a few threads when there are many."""
    if len(items) < 2 or _DECODE_THREADS < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(_DECODE_THREADS, thread_name_prefix="tl-decode") as pool:
        return list(pool.map(function, items))


_ModelKey = tuple[str, int, int]  # the model file's path, size and modification time
_loaded: OrderedDict[_ModelKey, Predictor] = OrderedDict()
_loading: dict[_ModelKey, Future[Predictor]] = {}
_loaded_lock = threading.Lock()


def _model_key(ws: Workspace, run_id: str) -> _ModelKey:
    path = runs.model_path(ws, run_id)
    info = path.stat()
    return str(path), info.st_size, info.st_mtime_ns


def load_predictor(ws: Workspace, run_id: str) -> Predictor:
    """The run's model, loaded once per process and kept (a few, least recently used).
    A load already under way (a warm-up, another session) is waited for, not repeated."""
    key = _model_key(ws, run_id)
    with _loaded_lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
        pending = _loading.get(key)
        if pending is None:
            pending = _loading[key] = Future()
            pending.set_running_or_notify_cancel()
            ours = True
        else:
            ours = False
    if not ours:
        return pending.result()
    try:
        predictor = _load(ws, run_id)
    except BaseException as exc:
        with _loaded_lock:
            del _loading[key]  # the next caller tries again and sees the error itself
        pending.set_exception(exc)
        raise
    with _loaded_lock:
        _loaded[key] = predictor
        while len(_loaded) > _CACHE_SIZE:
            _loaded.popitem(last=False)
        del _loading[key]
    pending.set_result(predictor)
    return predictor


def _load(ws: Workspace, run_id: str) -> Predictor:
    run = runs.get_run(ws, run_id)
    model = load_run_model(ws, run_id)  # checks the file first (ModelDamaged)
    return Predictor(model, runs.labels(ws, run_id), run.spec.image_size, run_id,
                     load_profile(ws.run_dir(run_id)), run_temperature(ws.run_dir(run_id)))


def warm_predictor(ws: Workspace, run_id: str) -> Future[Predictor]:
    """Start loading the run's model in the background and return at once, so a
    prediction asked for a moment later finds it ready (`load_predictor` waits for a
    load under way instead of starting another). What a quick look finds is raised here
    and now: NotFound / RunNotReady for a run without a model, ModelDamaged for a damaged
    file. The future gives the Predictor, or the error loading it met."""
    checked_model_path(ws, run_id)
    done: Future[Predictor] = Future()
    with _loaded_lock:
        loaded = _loaded.get(_model_key(ws, run_id))
    if loaded is not None:
        done.set_result(loaded)
        return done

    def load() -> None:
        try:
            predictor = load_predictor(ws, run_id)
            predictor.start_tracing()  # nobody waits on this load: its graph may come now
            done.set_result(predictor)
        except BaseException as exc:  # kept for whoever asks the future; never lost silently
            done.set_exception(exc)

    # Not a daemon: TensorFlow aborts a process that exits while a thread loads a model.
    threading.Thread(target=load, name=f"tl-warm-{run_id}").start()
    return done


def predict_images(
    ws: Workspace, run_id: str, images: Sequence[ImageInput], top_k: int = 3,
    not_sure_below: float | None = None,
) -> list[Prediction]:
    """A one-off prediction (the CLI's): the model runs eagerly, no graph is traced."""
    return load_predictor(ws, run_id).predict(images, top_k, not_sure_below,
                                              expect_more=False)


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
