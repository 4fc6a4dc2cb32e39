"""A model file written while the model's head still trains.

Saving a classifier is mostly Python walking the backbone's layers (0.2 s for
MobileNetV2-0.35, a fifth of a warm run of a new head). A head on cached features spends
its epochs inside TensorFlow, which lets Python run meanwhile. So the save starts when the
head's training does, in a thread, and the head's own layers wait: their
`save_own_variables`, when this save calls it, returns only once `finish()` says the
head's weights are final (other saves of those layers meanwhile, such as the best epoch's
weights, are not held). The file is then what `model.save` would write after training,
as nothing else in the model changes meanwhile (the backbone is frozen, its BatchNorm in
inference mode).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .model_file import save_keras_model


class _Abandoned(Exception):
    """The training stopped: the half-written file is not wanted."""


class EarlySave:
    """`model.save(path)` in a thread, the `written_last` layers' weights held back until
    `finish()` (or dropped by `abandon()`)."""

    def __init__(self, model: Any, written_last: list[Any], path: Path) -> None:
        self.path = path
        self._final = threading.Event()
        self._abandoned = False
        self._error: BaseException | None = None
        self._layers = list(written_last)
        self._thread = threading.Thread(target=self._save, args=(model,),
                                        name="tl-early-save", daemon=True)
        try:
            for layer in self._layers:
                layer.save_own_variables = self._held_back(layer.save_own_variables)
            self._thread.start()
        except BaseException:
            self._release()
            raise

    def _held_back(self, save: Callable[[Any], None]) -> Callable[[Any], None]:
        def save_when_final(store: Any) -> None:
            if threading.current_thread() is not self._thread:  # another save of the layer
                save(store)
                return
            self._final.wait()
            if self._abandoned:
                raise _Abandoned()
            save(store)

        return save_when_final

    def _save(self, model: Any) -> None:
        try:
            save_keras_model(model, self.path)
        except BaseException as exc:  # raised again by finish(), in the training thread
            self._error = exc

    def finish(self) -> Path:
        """The held-back layers' weights are final: write them and wait for the file."""
        self._final.set()
        self._thread.join()
        self._release()
        if self._error is not None:
            self.path.unlink(missing_ok=True)
            raise self._error
        return self.path

    def abandon(self) -> None:
        """Stop the save (the training failed or was cancelled) and remove its file."""
        self._abandoned = True
        self._final.set()
        self._thread.join()
        self._release()
        self.path.unlink(missing_ok=True)

    def _release(self) -> None:
        for layer in self._layers:
            with contextlib.suppress(AttributeError):
                del layer.save_own_variables  # the class's own method again
