"""A completed run's saved model, checked before it is loaded or handed out.

A model file cut short (a full disk, a copy stopped halfway) or overwritten must be named
as damaged, with what to do, never reported as missing nor exported as if it were fine.
"""

from __future__ import annotations

import contextlib
import threading
import zipfile
from pathlib import Path
from typing import Any

from . import runs
from .errors import ModelDamaged
from .store import Workspace

# What every Keras 3 `.keras` archive holds.
_REQUIRED_MEMBERS = ("config.json", "model.weights.h5")

# Files already checked, by (path, size, mtime): pages that offer downloads ask on every
# rerun, and reading a large model's every byte each time would be wasted.
_checked: set[tuple[str, int, int]] = set()
_checked_lock = threading.Lock()


def checked_model_path(ws: Workspace, run_id: str) -> Path:
    """The run's model file once it reads as a whole `.keras` archive; else ModelDamaged
    naming the file. NotFound / RunNotReady as runs.model_path for other runs."""
    path = runs.model_path(ws, run_id)
    try:
        info = path.stat()
    except OSError as exc:
        raise ModelDamaged(damaged_message(run_id, path, exc.strerror or str(exc))) from exc
    key = (str(path), info.st_size, info.st_mtime_ns)
    with _checked_lock:
        if key in _checked:
            return path
    problem = _archive_problem(path)
    if problem:
        raise ModelDamaged(damaged_message(run_id, path, problem))
    with _checked_lock:
        _checked.add(key)
    return path


def load_run_model(ws: Workspace, run_id: str) -> Any:
    """The run's Keras model, uncompiled; ModelDamaged when its file cannot be loaded."""
    import keras

    path = checked_model_path(ws, run_id)
    remember_keras_skipsets()
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as exc:  # Keras and h5py raise many types on a corrupt archive
        reason = f"Keras cannot load it ({type(exc).__name__}: {str(exc)[:200]})"
        raise ModelDamaged(damaged_message(run_id, path, reason)) from exc


def save_keras_model(model: Any, path: Path) -> None:
    """`model.save(path)`, without the Keras overhead `remember_keras_skipsets` removes."""
    remember_keras_skipsets()
    model.save(str(path))


def remember_keras_skipsets() -> None:
    """Keras's saving walks the attributes of every layer it saves or loads, skipping
    those every bare Layer has. It means to compute that set once per kind of object, but
    stores it under another key than it reads it from ("saving_attr_skipset_" against
    "saving_attr_skiplist_"), so it builds a throwaway Layer for every layer: a third of
    a MobileNetV2 classifier's save. Stored under the key it reads, it is computed once.
    Keras's global state is cleared after every job, so this runs before each save and
    load; a Keras that reads its own key again ignores what this stores."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.saving import saving_lib
    except ImportError:
        return
    for kind in ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer",
                 "Loss"):
        key = f"saving_attr_skiplist_{kind}"
        if global_state.get_global_attribute(key) is None:
            with contextlib.suppress(Exception):  # a Keras whose internals moved: as before
                global_state.set_global_attribute(key, saving_lib.get_attr_skipset(kind))


def damaged_message(run_id: str, path: Path, problem: str) -> str:
    return (
        f"the model file of run {run_id} is damaged: {path} ({problem}). Train the run "
        "again (Train on the Training page, or `python -m tl_engine train` with the same "
        "settings and --force), or put back a good copy of the file."
    )


def _archive_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [name for name in _REQUIRED_MEMBERS if name not in names]
            if missing:
                return f"it lacks {', '.join(missing)}"
            bad = archive.testzip()
    except zipfile.BadZipFile:
        return "it is not a complete .keras archive: cut short or overwritten"
    except (OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
        return f"it cannot be read ({type(exc).__name__}: {exc})"
    except Exception as exc:  # zlib.error from a corrupt member
        return f"it cannot be unpacked ({type(exc).__name__}: {exc})"
    if bad is not None:
        return f"its member {bad} fails its checksum"
    return None
