"""ValidationOnArrays gives a head on cached features the validation `fit` itself gives."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tl_engine.callbacks import ValidationOnArrays
from tl_engine.modeling import build_head
from tl_engine.spec import RunSpec
from tl_engine.training import compile_classifier

N_CLASSES = 4


class EpochLogs(keras.callbacks.Callback):
    """Each epoch's logs, as the callbacks after it see them (also used by test_head_fit)."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs.append(dict(logs or {}))


def _features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    # Class-dependent means: the head learns something, so the figures move every epoch.
    x = rng.standard_normal((n, 64)).astype("float32") + labels[:, None] * 0.3
    return x, keras.utils.to_categorical(labels, N_CLASSES)


def _fit(validation: str, x: np.ndarray, y: np.ndarray, x_val: np.ndarray,
         y_val: np.ndarray, val_batch: int) -> tuple[list[dict[str, float]], list[np.ndarray]]:
    spec = RunSpec(label_smoothing=0.1, dropout=0.3, hidden_units=16).normalized()
    keras.utils.set_random_seed(7)
    head = build_head(x.shape[1], N_CLASSES, spec.hidden_units, spec.dropout)
    compile_classifier(head, spec, N_CLASSES, 1e-2, steps_per_execution=4)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        len(x), seed=7, reshuffle_each_iteration=True).batch(16)
    logs = EpochLogs()
    if validation == "keras":
        head.fit(train, epochs=5, verbose=0, callbacks=[logs],
                 validation_data=tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(
                     val_batch))
    else:
        head.fit(train, epochs=5, verbose=0,
                 callbacks=[ValidationOnArrays(x_val, y_val, val_batch), logs])
    return logs.epochs, head.get_weights()


@pytest.mark.parametrize("val_batch", [1024, 48])  # one batch, and several with a remainder
def test_validation_on_arrays_logs_what_fits_own_validation_logs(val_batch: int) -> None:
    x, y = _features(160, seed=1)
    x_val, y_val = _features(120, seed=2)
    theirs, their_weights = _fit("keras", x, y, x_val, y_val, val_batch)
    ours, our_weights = _fit("arrays", x, y, x_val, y_val, val_batch)

    assert len(ours) == len(theirs) == 5
    for mine, keras_logs in zip(ours, theirs, strict=True):
        assert set(mine) == set(keras_logs)
        assert {"val_loss", "val_accuracy", "val_top_k"} <= set(mine)
        for name in keras_logs:
            assert mine[name] == pytest.approx(keras_logs[name], rel=1e-6, abs=1e-7), name
    # The validation figures change as the head learns: they are the epoch's own.
    assert len({round(epoch["val_loss"], 6) for epoch in ours}) > 1
    # Validation reads the weights and never changes them.
    for mine, keras_weights in zip(our_weights, their_weights, strict=True):
        np.testing.assert_array_equal(mine, keras_weights)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_compiled_head_traces_its_training_step_once(optimizer: str) -> None:
    """compile_classifier creates the optimizer's and metrics' variables: Keras would
    otherwise create them inside the first traced step, and trace that step again."""
    x, y = _features(96, seed=3)
    spec = RunSpec(optimizer=optimizer, hidden_units=16).normalized()
    head = build_head(x.shape[1], N_CLASSES, spec.hidden_units, spec.dropout)
    compile_classifier(head, spec, N_CLASSES, 1e-3, steps_per_execution=6)
    assert head.optimizer.built
    traced: list[int] = []
    keras_step = head.train_step

    def counted_step(data: object) -> object:  # runs only while Keras traces the graph
        traced.append(1)
        return keras_step(data)

    head.train_step = counted_step
    history = head.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=3,
                       verbose=0)
    assert len(traced) == 1
    assert set(history.history) >= {"loss", "accuracy", "top_k"}
    assert np.isfinite(history.history["loss"]).all()
