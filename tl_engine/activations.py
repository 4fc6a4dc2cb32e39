"""Fine-tuning on cached activations: the classifier cut at the freeze boundary.

When only the top of a pretrained backbone trains and nothing changes an image from one
epoch to the next, the frozen bottom (BatchNormalization in inference mode) computes the
same activations for an image every epoch. `cut_classifier` splits the classifier there:
`bottom` maps pixels to the tensors that cross the boundary (a residual connection can
make that several), `top` maps those tensors through the trainable layers, the pooling
and the head to class probabilities. Both are built from the classifier's own layer
objects, so training `top` trains the complete model: the saved model, its exports and
its predictions are the ones the plain way of training gives.

The bottom's outputs are kept per image in the feature-cache file as float16
(`activation_cache`), keyed like pooled features plus the boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .features import FeatureCache
from .freeze import FreezePlan
from .progress import Progress
from .store import Workspace

ACTIVATIONS_TABLE = "activations"
ACTIVATIONS_DTYPE = np.float16
# In memory while a phase trains (float16, once) and once more while the training batches
# are made from them: beyond this the full pass on pixels is the better trade.
MAX_ACTIVATION_BYTES = 2 * 1024**3


@dataclass
class ClassifierCut:
    bottom: Any  # pixels -> the boundary tensors (frozen)
    top: Any  # boundary tensors -> class probabilities (shares its layers with the model)
    features: Any  # boundary tensors -> pooled features (the same layers, without the head)
    boundary: tuple[str, ...]  # the tensors' names, "layer" or "layer:index"
    shapes: tuple[tuple[int, ...], ...]  # each tensor's shape per image

    @property
    def values_per_image(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.shapes)

    def split(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Cached rows (one flat vector per image) -> the top model's inputs."""
        parts, start = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape))
            parts.append(rows[:, start:start + size].reshape((len(rows), *shape)))
            start += size
        return tuple(parts)


class CannotCut(Exception):
    """The backbone's graph cannot be cut at this boundary (the reason is the message)."""


def activation_key(feature_key: str, boundary: Sequence[str]) -> str:
    raw = f"{feature_key}|{'+'.join(boundary)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def activation_cache(ws: Workspace) -> FeatureCache:
    return FeatureCache(ws, table=ACTIVATIONS_TABLE, dtype=ACTIVATIONS_DTYPE)


def _producer(tensor: Any) -> tuple[Any, Any]:
    """The operation that made a functional-graph tensor, and its node."""
    operation, node_index, _ = tensor._keras_history
    return operation, operation._inbound_nodes[node_index]


def boundary_tensors(backbone: Any, first_trainable: int) -> list[Any]:
    """The tensors of the backbone's graph made below `first_trainable` (an index into its
    layers) and used at or above it, in the order of the layers that make them."""
    layers = list(backbone.layers)
    if [id(op) for op in backbone.operations] != [id(layer) for layer in layers]:
        raise CannotCut("the backbone's graph has operations that are not layers")
    index = {id(layer): i for i, layer in enumerate(layers)}
    if not 0 < first_trainable < len(layers):
        raise CannotCut("nothing or everything of the backbone is frozen")
    crossing: dict[int, Any] = {}
    seen: set[int] = set()
    pending = list(backbone.outputs)
    while pending:
        tensor = pending.pop()
        operation, node = _producer(tensor)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if index[id(operation)] < first_trainable:
            crossing[id(tensor)] = tensor  # an output of the top's graph is made below
            continue
        for source in node.input_tensors:
            if index[id(_producer(source)[0])] < first_trainable:
                crossing[id(source)] = source
            else:
                pending.append(source)

    def order(tensor: Any) -> tuple[int, int]:
        operation, _, tensor_index = tensor._keras_history
        return index[id(operation)], tensor_index

    return sorted(crossing.values(), key=order)


def _tensor_name(tensor: Any) -> str:
    operation, _, tensor_index = tensor._keras_history
    return operation.name if tensor_index == 0 else f"{operation.name}:{tensor_index}"


def _backbone_input_in(model: Any, backbone: Any) -> Any:
    """The tensor of `model`'s graph that is fed to `backbone` (after preprocessing)."""
    pending, seen = list(model.outputs), set()
    while pending:
        operation, node = _producer(pending.pop())
        if id(node) in seen:
            continue
        seen.add(id(node))
        if operation is backbone:
            return node.input_tensors[0]
        pending.extend(node.input_tensors)
    raise CannotCut("the backbone is not part of the classifier")


def cut_classifier(clf: Any, freeze: FreezePlan, pretrained: bool) -> ClassifierCut:
    """`clf` (a modeling.Classifier) cut where `freeze`'s trainable top starts.

    `pretrained`: the backbone runs with training=False, as in `build_classifier`, so
    BatchNormalization stays in inference mode in the top; the head's Dropout still trains.
    """
    import keras

    crossing = boundary_tensors(clf.backbone, freeze.first_trainable)
    lower = keras.Model(clf.backbone.inputs, crossing, name="backbone_bottom")
    upper = keras.Model(crossing, clf.backbone.output, name="backbone_top")
    into_backbone = _backbone_input_in(clf.model, clf.backbone)
    bottom_out = lower(into_backbone, training=False)
    bottom_out = list(bottom_out) if isinstance(bottom_out, (list, tuple)) else [bottom_out]
    bottom = keras.Model(clf.model.inputs, bottom_out, name="classifier_bottom")

    shapes = tuple(tuple(int(d) for d in t.shape[1:]) for t in crossing)
    inputs = [keras.Input(shape, name=f"activation_{i}") for i, shape in enumerate(shapes)]
    x = upper(inputs, training=False) if pretrained else upper(inputs)
    # A pooling layer of its own (it has no weights): calling the classifier's would add a
    # node to it per phase, and a worker keeps the classifier's trunk for its next runs.
    pooled = keras.layers.GlobalAveragePooling2D(name="cut_pool")(x)
    top = keras.Model(inputs, clf.head(pooled), name="classifier_top")
    features = keras.Model(inputs, pooled, name="classifier_top_features")
    return ClassifierCut(bottom, top, features, tuple(_tensor_name(t) for t in crossing),
                         shapes)


def too_big(cut: ClassifierCut, n_images: int) -> str | None:
    """Why `n_images` images' activations at the cut are not worth caching, or None."""
    size = cut.values_per_image * np.dtype(ACTIVATIONS_DTYPE).itemsize * n_images
    if size > MAX_ACTIVATION_BYTES:
        return (f"the activations at the boundary ({size / 1024**3:.1f} GiB) would not fit "
                "in memory")
    return None


def _tensors(cut: ClassifierCut, rows: np.ndarray, labels: np.ndarray) -> tuple[Any, Any]:
    import tensorflow as tf

    return tuple(tf.constant(part) for part in cut.split(rows)), tf.constant(labels)


def _batches(tensors: tuple[Any, Any], batch_size: int, shuffle_seed: int | None) -> Any:
    """Batches gathered from activation tensors, in order or shuffled by row number."""
    import tensorflow as tf

    parts, targets = tensors
    count = int(targets.shape[0])
    order = tf.data.Dataset.range(count)
    if shuffle_seed is not None:
        order = order.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)

    def gather(index: Any) -> Any:
        inputs = tuple(tf.cast(tf.gather(part, index), tf.float32) for part in parts)
        return inputs, tf.gather(targets, index)

    return order.batch(batch_size).map(gather).prefetch(tf.data.AUTOTUNE)


# Images per direct call of a model cut from the classifier on cached activations.
OUTPUTS_BATCH = 256


@dataclass
class ActivationData:
    cut: ClassifierCut
    train: Any  # shuffled (activations, labels) batches for cut.top
    val: Any
    train_tensors: tuple[Any, Any]  # (activation tensors, labels) of the training images
    val_tensors: tuple[Any, Any]
    computed: int  # images whose activations the bottom computed
    reused: int  # images whose activations came from the cache

    def train_outputs(self, model: Any) -> np.ndarray:
        """`model` (the cut's top or features) on every training image, in order."""
        return _outputs(model, self.train_tensors[0])

    def val_outputs(self, model: Any) -> np.ndarray:
        return _outputs(model, self.val_tensors[0])


def _outputs(model: Any, parts: tuple[Any, ...]) -> np.ndarray:
    """Direct calls in large batches: no predict function to trace for one pass."""
    count = int(parts[0].shape[0])
    chunks = [np.asarray(model([part[start:start + OUTPUTS_BATCH] for part in parts],
                               training=False))
              for start in range(0, count, OUTPUTS_BATCH)]
    return np.concatenate(chunks) if chunks else np.zeros((0, *model.output_shape[1:]))


def activation_data(ws: Workspace, clf: Any, freeze: FreezePlan, spec: Any, features_key: str,
                    train: tuple[Sequence[Any], np.ndarray], val: tuple[Sequence[Any], np.ndarray],
                    report: Callable[[Progress], bool]) -> ActivationData | str:
    """The cut and its training and validation batches for a phase that trains the top of
    the backbone: (records, one-hot labels) each; activations the cache lacks are computed
    with `extract_features`'s progress and cancel checks (FeaturesCancelled). A string says
    why the phase cannot train this way. `features_key`: the run's pooled features' key
    (`feature_key`), which the activations' key extends."""
    from .features import extract_features

    try:
        cut = cut_classifier(clf, freeze, pretrained=spec.weights != "none")
    except CannotCut as exc:
        return str(exc)
    reason = too_big(cut, len(train[0]) + len(val[0]))
    if reason:
        return reason
    key = activation_key(features_key, cut.boundary)
    found = extract_features(ws, cut.bottom, key, [("training images", train[0]),
                                                   ("validation images", val[0])],
                             spec.batch_size, report, cache=activation_cache(ws))
    train_tensors = _tensors(cut, found.matrices[0], train[1])
    val_tensors = _tensors(cut, found.matrices[1], val[1])
    return ActivationData(
        cut,
        _batches(train_tensors, spec.batch_size, spec.seed),
        _batches(val_tensors, spec.batch_size, None),
        train_tensors, val_tensors, found.computed, found.reused)
