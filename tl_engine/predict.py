"""Top-k predictions from a completed run's saved model; each model is loaded once per process."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import runs
from .errors import DatasetError
from .images import load_rgb_array
from .pipeline import to_model_input
from .store import Workspace

ImageInput = str | os.PathLike | bytes | tuple[str, bytes]
_CACHE_SIZE = 4


@dataclass(frozen=True)
class Prediction:
    name: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

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
        }


def _display_name(image: ImageInput) -> str:
    if isinstance(image, tuple):
        return image[0]
    if isinstance(image, bytes):
        return "image"
    return Path(image).name


class Predictor:
    def __init__(self, model: Any, labels: list[str], image_size: int, run_id: str) -> None:
        self.model, self.labels, self.image_size, self.run_id = model, labels, image_size, run_id
        self._lock = threading.Lock()  # Keras models are not safe to call from many threads

    def pixels(self, image: ImageInput) -> tuple[str, np.ndarray]:
        """(name, uint8 model input) exactly as this model sees the image."""
        name = _display_name(image)
        if isinstance(image, tuple):
            rgb = load_rgb_array(image[1], name)
        elif isinstance(image, bytes):
            rgb = load_rgb_array(image, name)
        else:
            rgb = load_rgb_array(image, str(image))
        return name, to_model_input(rgb, self.image_size)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.asarray(self.model.predict(batch.astype(np.float32), verbose=0))

    def predict(self, images: Sequence[ImageInput], top_k: int = 3) -> list[Prediction]:
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
        probs = iter(self.probabilities(np.stack(good)) if good else [])
        k = max(1, min(top_k, len(self.labels)))
        results = []
        for name, array, error in zip(names, arrays, errors, strict=True):
            if array is None:
                results.append(Prediction(name, [], error))
                continue
            row = next(probs)
            order = np.argsort(-row)[:k]
            results.append(Prediction(name, [(self.labels[i], float(row[i])) for i in order]))
        return results


_loaded: OrderedDict[tuple[str, float], Predictor] = OrderedDict()
_loaded_lock = threading.Lock()


def load_predictor(ws: Workspace, run_id: str) -> Predictor:
    """The run's model, loaded once per process and kept (a few, least recently used)."""
    import keras

    path = runs.model_path(ws, run_id)
    key = (str(path), path.stat().st_mtime)
    with _loaded_lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
    run = runs.get_run(ws, run_id)
    model = keras.saving.load_model(str(path), compile=False)
    predictor = Predictor(model, runs.labels(ws, run_id), run.spec.image_size, run_id)
    with _loaded_lock:
        _loaded[key] = predictor
        while len(_loaded) > _CACHE_SIZE:
            _loaded.popitem(last=False)
    return predictor


def predict_images(
    ws: Workspace, run_id: str, images: Sequence[ImageInput], top_k: int = 3
) -> list[Prediction]:
    return load_predictor(ws, run_id).predict(images, top_k)
