"""Where a backbone's starting weights come from: ImageNet via Keras, a local file, or none.

"imagenet" goes through Keras's own loader (its cache in $KERAS_HOME/models, else its
download). Before asking Keras we check whether the file is cached and whether the
download host answers at all, so an offline host fails in seconds with a message naming
the file and the folder, instead of hanging inside a download.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .errors import WeightsUnavailable
from .registry import Backbone

DOWNLOAD_HOST = ("storage.googleapis.com", 443)
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
    return f"file:{file_digest(path)}"


def require_imagenet(backbone: Backbone) -> None:
    """Raise WeightsUnavailable at once when Keras could neither find nor fetch the file."""
    if weights_status(backbone) == "missing":
        folder = keras_home() / "models"
        raise WeightsUnavailable(
            f"ImageNet weights for {backbone.key} are not cached and this host cannot "
            f"download them: put {backbone.weights_file} in {folder} (or set KERAS_HOME "
            f"to a folder whose models/ holds it), or choose weights 'none' or a local file."
        )


def load_backbone(backbone: Backbone, weights: str, image_size: int) -> Any:
    """The backbone at `image_size` with the requested starting weights.

    Pretrained weights are loaded at the backbone's default size (the only size whose
    files Keras publishes for every family) and copied into a model of the requested
    size: convolution weights do not depend on the input size.
    """
    if weights == "none":
        return backbone.build(image_size)
    if weights == "imagenet":
        require_imagenet(backbone)
        try:
            source = backbone.build_imagenet()
        except Exception as exc:  # a failed download or a corrupt cache file
            raise WeightsUnavailable(
                f"Keras could not load ImageNet weights for {backbone.key} "
                f"({backbone.weights_file} in {keras_home() / 'models'}): {exc}"
            ) from exc
    else:
        path = Path(weights).expanduser()
        source = backbone.build(backbone.default_size)
        try:
            source.load_weights(str(path))
        except Exception as exc:
            raise WeightsUnavailable(
                f"Weights file {path} does not fit {backbone.key} without its top: {exc}. "
                f"Use a file saved from keras.applications.{backbone.constructor}"
                f"(include_top=False, input_shape=({backbone.default_size}, "
                f"{backbone.default_size}, 3))."
            ) from exc
    if image_size == backbone.default_size:
        return source
    target = backbone.build(image_size)
    target.set_weights(source.get_weights())
    return target
