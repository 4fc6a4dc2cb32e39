"""Keeping the server's script runs cheap once TensorFlow is loaded in it.

After every script run (every page view, every 2-second refresh of a live page) Streamlit
calls `keras.backend.clear_session()` when Keras is imported, and Keras 3 then runs a full
garbage collection: about 0.3 s of CPU with TensorFlow's objects on the heap, which made
two tabs watching a training cost the server almost half a core. The server only loads
saved models (cached predictors) and never builds models in a loop, so it keeps Keras's
global state and skips that collection. (The same reason turns `runner.postScriptGC` off
in .streamlit/config.toml.)
"""

from __future__ import annotations

import functools
import sys
from typing import Any


def skip_garbage_collection_on_keras_clear_session() -> None:
    """Idempotent; does nothing until Keras is imported in this process (the next script
    run's end patches it once the import has finished)."""
    keras = sys.modules.get("keras")
    # Keras may be half imported: TensorFlow's set-up imports it in a background thread.
    backend: Any = getattr(keras, "backend", None)
    clear_session = getattr(backend, "clear_session", None)
    if clear_session is None:
        return
    if getattr(clear_session, "keeps_memory", False):
        return
    cheap = functools.partial(clear_session, free_memory=False)
    cheap.keeps_memory = True  # type: ignore[attr-defined]
    backend.clear_session = cheap
