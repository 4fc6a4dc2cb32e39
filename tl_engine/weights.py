"""Where a backbone's starting weights come from: ImageNet via Keras, a local file, or none.

"imagenet" goes through Keras's own loader (its cache in $KERAS_HOME/models, else its
download). Before asking Keras we check whether the file is cached and whether the
download host answers at all, so an offline host fails in seconds with a message naming
the file and the folder, instead of hanging inside a download.

Local files offered to users come from one folder an administrator chooses
($TL_WEIGHTS_DIR): users pick a file by name, and never type a path, so nobody can use
the dashboard to find out which other files exist on the server.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import socket
import stat
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import WeightsUnavailable
from .registry import Backbone

if TYPE_CHECKING:  # NumPy is imported where used: `python -m tl_engine train` needs none
    import numpy as np

DOWNLOAD_HOST = ("storage.googleapis.com", 443)
WEIGHTS_DIR_ENV = "TL_WEIGHTS_DIR"
WEIGHTS_SUFFIX = ".h5"  # also matches Keras 3's ".weights.h5"
_PROBE_TTL_S = 60.0
_probe_cache: dict[str, tuple[float, bool]] = {}


def keras_home() -> Path:
    """The folder Keras caches into. Keras reads $KERAS_HOME once, when it is imported."""
    if "keras" in sys.modules:
        from keras.src.backend import config

        return Path(config.keras_home())
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()


def cached_weights_path(backbone: Backbone) -> Path:
    return keras_home() / "models" / backbone.weights_file


def download_reachable(timeout_s: float = 3.0) -> bool:
    """Whether Keras's weight host answers; remembered for a minute. TL_OFFLINE=1 says no."""
    if os.environ.get("TL_OFFLINE", "").strip() not in ("", "0"):
        return False
    now = time.monotonic()
    seen = _probe_cache.get("host")
    if seen and now - seen[0] < _PROBE_TTL_S:
        return seen[1]
    try:
        with socket.create_connection(DOWNLOAD_HOST, timeout=timeout_s):
            reachable = True
    except OSError:
        reachable = False
    _probe_cache["host"] = (now, reachable)
    return reachable


def weights_status(backbone: Backbone, probe_network: bool = True) -> str:
    """'cached', 'downloadable' or 'missing' for the backbone's ImageNet weights."""
    if cached_weights_path(backbone).is_file():
        return "cached"
    if probe_network and download_reachable():
        return "downloadable"
    return "missing"


@dataclass(frozen=True)
class WeightsFile:
    """A weights file in the administrator's folder: users see `name`, specs store `path`."""

    name: str
    path: Path  # absolute: the folder (resolved) joined with the name
    size: int  # bytes


def weights_dir() -> Path | None:
    """The folder of weights files users may choose from ($TL_WEIGHTS_DIR), or None when
    no folder is configured. Read at each call, so a changed setting needs no restart."""
    value = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    if not value:
        return None
    return Path(value).expanduser().resolve()


def list_weight_files() -> list[WeightsFile]:
    """The *.h5 / *.weights.h5 files directly in weights_dir(), sorted by name.

    Not recursive. A symbolic link is listed only when it resolves to a regular file inside
    the folder itself: a link leading elsewhere would expose a file the administrator did
    not put there. An unset, missing or unreadable folder lists nothing.
    """
    folder = weights_dir()
    if folder is None or not folder.is_dir():
        return []
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError:
        return []
    files: list[WeightsFile] = []
    for name in names:
        if not name.lower().endswith(WEIGHTS_SUFFIX) or name.startswith("."):
            continue
        path = folder / name
        try:
            if folder not in path.resolve().parents:
                continue
            info = path.stat()
        except (OSError, RuntimeError):  # dangling or looping link, vanished file
            continue
        if stat.S_ISREG(info.st_mode):
            files.append(WeightsFile(name=name, path=path, size=info.st_size))
    return files


def find_weight_file(weights: str) -> WeightsFile | None:
    """The listed file a spec's `weights` value names, or None (it is "imagenet", "none",
    or a path outside the administrator's folder). Compared as text: nothing is probed."""
    if weights in ("imagenet", "none"):
        return None
    wanted = Path(weights).expanduser()
    return next((item for item in list_weight_files() if item.path == wanted), None)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime)


def weights_identity(backbone: Backbone, weights: str, seed: int) -> str:
    """A value that changes exactly when the starting weights change (used in cache keys)."""
    if weights == "none":
        return f"none:seed={seed}"
    if weights == "imagenet":
        return f"imagenet:{backbone.weights_file}"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(
            f"Weights file {path} does not exist: give the path to a .h5 or .weights.h5 "
            f"file for {backbone.key}, or use 'imagenet' or 'none'."
        )
    if problem := _weights_file_problem(path):
        raise WeightsUnavailable(
            f"Weights file {path} {problem}: give a .h5 or .weights.h5 file saved from "
            f"{backbone.key} without its top, or use 'imagenet' or 'none'."
        )
    return f"file:{file_digest(path)}"


def _weights_file_problem(path: Path) -> str | None:
    """Why a weights file cannot be read as HDF5 weights (checked where a run is asked
    for, not minutes later in the worker); None when it can."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if not len(handle) and not handle.attrs:
                return "holds no weights"
    except OSError as exc:
        return f"is not a readable HDF5 weights file ({exc})"
    return None


def require_imagenet(backbone: Backbone) -> None:
    """Raise WeightsUnavailable at once when Keras could neither find nor fetch the file."""
    if weights_status(backbone) == "missing":
        folder = keras_home() / "models"
        raise WeightsUnavailable(
            f"ImageNet weights for {backbone.key} are not cached and this host cannot "
            f"download them: put {backbone.weights_file} in {folder} (or set KERAS_HOME "
            f"to a folder whose models/ holds it), or choose weights 'none' or a local file."
        )


# Starting weights already read in this process, by (backbone, weights identity): a
# worker that runs job after job builds the default-size model and reads the file once.
# The arrays are read-only copies, never the variables a run trains, so a fine-tuned run
# cannot leak its weights into a later one. A few entries: large backbones weigh ~100 MB.
_STARTING_WEIGHTS: OrderedDict[tuple[str, str], list[np.ndarray]] = OrderedDict()
_STARTING_WEIGHTS_KEPT = 3


def _starting_weights(backbone: Backbone, weights: str, target: Any) -> None:
    """Give `target` (a new backbone, any input size) the pretrained weights, read once per
    process and kept as arrays.

    ImageNet weights already in Keras's cache load straight into `target`: the file holds
    no input size, so building the default-size model first (as `weights="imagenet"`
    does) would only cost a second build. Otherwise they come through Keras's own loader
    (its cache, else its download) at the default size and are copied over."""
    key = (backbone.key, weights_identity(backbone, weights, seed=0))
    if key in _STARTING_WEIGHTS:
        _STARTING_WEIGHTS.move_to_end(key)
        target.set_weights(_STARTING_WEIGHTS[key])
        return
    cached = cached_weights_path(backbone) if weights == "imagenet" else None
    try:
        if cached is None or not cached.is_file():
            raise FileNotFoundError(cached)
        target.load_weights(str(cached))
    except Exception:  # not cached, or a file only Keras's loader reads: the long way
        # Keras seeds each unseeded initializer from Python's `random`: building the source
        # model must not move it, or a run's head would start differently depending on
        # whether an earlier run in this process had loaded these weights already.
        state = random.getstate()
        try:
            source = _load_source(backbone, weights)
        finally:
            random.setstate(state)
        target.set_weights(source.get_weights())
    import numpy as np

    arrays = [np.array(value, copy=True) for value in target.get_weights()]
    for array in arrays:
        array.setflags(write=False)
    _STARTING_WEIGHTS[key] = arrays
    while len(_STARTING_WEIGHTS) > _STARTING_WEIGHTS_KEPT:
        _STARTING_WEIGHTS.popitem(last=False)


def reset_starting_weights(backbone: Backbone, weights: str, target: Any) -> None:
    """Give a backbone built earlier in this process its starting weights again."""
    _starting_weights(backbone, weights, target)


def _load_source(backbone: Backbone, weights: str) -> Any:
    """The backbone at its default size with the pretrained weights loaded."""
    if weights == "imagenet":
        require_imagenet(backbone)
        try:
            return backbone.build_imagenet()
        except Exception as exc:  # a failed download or a corrupt cache file
            raise WeightsUnavailable(
                f"Keras could not load ImageNet weights for {backbone.key} "
                f"({backbone.weights_file} in {keras_home() / 'models'}): {exc}"
            ) from exc
    path = Path(weights).expanduser()
    source = backbone.build(backbone.default_size)
    try:
        source.load_weights(str(path))
    except Exception as exc:
        raise WeightsUnavailable(
            f"Weights file {path} does not fit {backbone.key} without its top: "
            f"{str(exc).rstrip('.')}. "
            f"Use a file saved from keras.applications.{backbone.constructor}"
            f"(include_top=False, input_shape=({backbone.default_size}, "
            f"{backbone.default_size}, 3))."
        ) from exc
    return source


def load_backbone(backbone: Backbone, weights: str, image_size: int) -> Any:
    """A new backbone at `image_size` with the requested starting weights.

    Pretrained weights are loaded at the backbone's default size (the only size whose
    files Keras publishes for every family) and copied into a model of the requested
    size: convolution weights do not depend on the input size.
    """
    if weights == "none":
        return backbone.build(image_size)
    target = backbone.build(image_size)
    _starting_weights(backbone, weights, target)
    return target
