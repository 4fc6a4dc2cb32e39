"""Grad-CAM (Selvaraju et al. 2017): where in an image a run's model found the evidence
for a class.

The saved model is a chain: pixels -> preprocessing -> backbone -> pool -> head. The last
layer of that chain whose output is a 4-D map (batch, rows, columns, channels) is the last
convolutional feature map: for a nested include_top=False backbone that is the backbone's
own output, so every backbone of the registry is found the same way, without a table of
layer names. The model is split there: `front` (pixels -> map) runs without a tape, and
only `tail` (map -> class scores) is differentiated, which also makes the map a watched
tensor whatever the layers' trainable flags say.
"""

from __future__ import annotations

import io
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpecError
from .images import load_rgb_array
from .predict import ImageInput, Predictor, load_predictor
from .store import Workspace

OVERLAY_ALPHA = 0.45  # heat over the photo: enough colour to read, the photo still visible


@dataclass(frozen=True)
class Explanation:
    """A Grad-CAM heat map for one class of one image."""

    class_name: str  # the class explained
    predicted: str  # the model's top class for the image
    probability: float  # of `class_name`, as the model predicts it (0-1)
    heatmap: np.ndarray  # float32 rows x columns in [0, 1], at the image's (shown) size
    overlay: np.ndarray  # uint8 rows x columns x 3: the heat map coloured over the image
    feature_map: tuple[int, int, int]  # rows, columns, channels of the map explained

    def overlay_png(self) -> bytes:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.overlay).save(buffer, "PNG")
        return buffer.getvalue()


class GradCam:
    """Grad-CAM over a classifier built as a chain of layers (our saved run models)."""

    def __init__(self, model: Any) -> None:
        import keras

        chain = _flatten(model)
        inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="pixels")
        x, cut = inputs, None
        for position, layer in enumerate(chain):
            x = layer(x, training=False)
            if len(x.shape) == 4:
                cut, feature_map = position, x
        if cut is None:
            raise SpecError(f"model {model.name!r} has no 4-D feature map to explain")
        last = chain[-1]
        if not isinstance(last, keras.layers.Dense):
            raise SpecError(f"model {model.name!r} does not end in a Dense layer")
        self.feature_layer: str = chain[cut].name
        self.feature_shape: tuple[int, int, int] = tuple(int(d) for d in feature_map.shape[1:])
        self.front = keras.Model(inputs, feature_map, name="gradcam_front")
        # The tail stops before the last Dense: its pre-softmax scores (the logits) are
        # what Grad-CAM differentiates, as a saturated softmax has almost no gradient.
        tail_in = keras.Input(self.feature_shape, name="feature_map")
        y = tail_in
        for layer in chain[cut + 1:-1]:
            y = layer(y, training=False)
        self.tail = keras.Model(tail_in, y, name="gradcam_tail")
        self.dense = last

    def logits(self, features: Any) -> Any:
        import tensorflow as tf

        # Cast to float32: under mixed precision the map and the head run in float16,
        # where small gradients underflow to zero.
        hidden = tf.cast(self.tail(features, training=False), tf.float32)
        kernel = tf.cast(self.dense.kernel, tf.float32)
        return tf.matmul(hidden, kernel) + tf.cast(self.dense.bias, tf.float32)

    def heatmap(self, pixels: np.ndarray, class_index: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """(map-sized heat in [0, 1], logits) for one uint8 image the model's size;
        `class_index` None explains the top class."""
        import tensorflow as tf

        batch = tf.convert_to_tensor(pixels[None].astype(np.float32))
        features = tf.cast(self.front(batch, training=False), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(features)
            logits = self.logits(features)
            index = int(tf.argmax(logits[0])) if class_index is None else class_index
            score = logits[0, index]
        grads = tape.gradient(score, features)[0]
        weights = tf.reduce_mean(grads, axis=(0, 1))  # alpha_k: pooled gradients per channel
        cam = tf.nn.relu(tf.reduce_sum(features[0] * weights, axis=-1)).numpy()
        top = float(cam.max())
        cam = cam / top if top > 0 else np.zeros_like(cam)
        return cam.astype(np.float32), logits[0].numpy()


def _flatten(model: Any) -> list[Any]:
    """The model's layers in order, with any nested model after the first 4-D map (the
    head) opened up so its last Dense is reachable; the backbone stays one layer."""
    import keras

    layers: list[Any] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model) and len(layer.outputs[0].shape) != 4:
            layers.extend(_flatten(layer))
        else:
            layers.append(layer)
    return layers


# --- colouring -------------------------------------------------------------------------------


def _jet() -> np.ndarray:
    """matplotlib's "jet" as a 256 x 3 uint8 table: blue (cold) -> red (hot)."""
    x = np.linspace(0.0, 1.0, 256)
    channels = [np.clip(1.5 - np.abs(4 * x - centre), 0.0, 1.0) for centre in (3, 2, 1)]
    return np.round(np.stack(channels, axis=1) * 255).astype(np.uint8)


JET = _jet()


def colorize(heat: np.ndarray) -> np.ndarray:
    """Heat in [0, 1] -> uint8 RGB through the jet table."""
    return JET[np.clip(np.round(heat * 255), 0, 255).astype(np.intp)]


def resize_heat(heat: np.ndarray, width: int, height: int) -> np.ndarray:
    """The map-sized heat stretched over an image of width x height (the model saw the
    whole image squashed to a square, so the stretch maps cells back onto it)."""
    from PIL import Image

    resized = Image.fromarray(heat.astype(np.float32), mode="F").resize(
        (width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The heat map (already at the image's size) blended over the image."""
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colorize(heat).astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


# --- runs ------------------------------------------------------------------------------------

_cams: weakref.WeakKeyDictionary[Predictor, GradCam] = weakref.WeakKeyDictionary()
_cams_lock = threading.Lock()


def grad_cam(predictor: Predictor) -> GradCam:
    """The Grad-CAM of a loaded run model, built once per loaded model."""
    with _cams_lock:
        cam = _cams.get(predictor)
        if cam is None:
            cam = _cams[predictor] = GradCam(predictor.model)
        return cam


def explain_image(ws: Workspace, run_id: str, image: ImageInput, class_name: str | None = None,
                  max_side: int | None = None) -> Explanation:
    """Grad-CAM of a run's model on one image, for `class_name` (default: the predicted
    class). The heat map and overlay come at the image's own size, or shrunk to fit
    `max_side`; the model always sees the whole image at its input size, as in prediction.
    Raises DatasetError for an unreadable image and SpecError for an unknown class."""
    predictor = load_predictor(ws, run_id)
    name, pixels = predictor.pixels(image)
    labels = predictor.labels
    if class_name is not None and class_name not in labels:
        raise SpecError(f"class {class_name!r} is not one of run {run_id}'s classes: "
                        f"{', '.join(labels)}")
    cam = grad_cam(predictor)
    probabilities = predictor.probabilities(pixels[None])[0]
    predicted = int(np.argmax(probabilities))
    index = predicted if class_name is None else labels.index(class_name)
    with predictor_lock(predictor):
        heat, _ = cam.heatmap(pixels, index)
    rgb = _shown_rgb(image, name, max_side)
    heat = resize_heat(heat, rgb.shape[1], rgb.shape[0])
    return Explanation(labels[index], labels[predicted], float(probabilities[index]), heat,
                       overlay(rgb, heat), cam.feature_shape)


def predictor_lock(predictor: Predictor) -> Any:
    # The Grad-CAM models share the predictor's layers, which are not safe to call from
    # two threads at once: they take the predictor's own lock.
    return predictor._lock


def _shown_rgb(image: ImageInput, name: str, max_side: int | None) -> np.ndarray:
    if isinstance(image, tuple):
        data: Any = image[1]
    elif isinstance(image, bytes):
        data = image
    else:
        data = image
        name = str(image)
    return load_rgb_array(data, name, max_side=max_side)


def write_explanation(ws: Workspace, run_id: str, image: str | Path, out: str | Path,
                      class_name: str | None = None, *, overwrite: bool = False
                      ) -> tuple[Path, Explanation]:
    """Write the Grad-CAM overlay of `image` as a PNG at `out`, at the image's own size.
    `out` must lie outside the workspace and not exist unless `overwrite` is set."""
    from .export import _checked_destination

    if Path(out).suffix.lower() != ".png":  # never PNG bytes under another format's name
        raise SpecError(f"The heat map is written as a PNG: name --out with .png, not "
                      f"{Path(out).name!r}.")
    destination = _checked_destination(ws, Path(out), "heat map", overwrite)
    explanation = explain_image(ws, run_id, str(image), class_name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(f".{destination.name}.part")
    try:
        staging.write_bytes(explanation.overlay_png())
        staging.replace(destination)
    finally:
        staging.unlink(missing_ok=True)
    return destination, explanation
