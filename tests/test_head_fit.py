"""head_fit trains a head on features as Keras's `fit` does, with one graph for every head."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_feature_validation import EpochLogs

from tl_engine import head_fit
from tl_engine.callbacks import ValidationOnArrays
from tl_engine.modeling import build_head
from tl_engine.optimizers import make_optimizer
from tl_engine.spec import RunSpec
from tl_engine.training import compile_classifier

N_CLASSES = 4
BATCH = 16
SEED = 11


def _features(n: int, seed: int, n_classes: int = N_CLASSES,
              dim: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    labels[:n_classes] = np.arange(n_classes)
    # Class-dependent means, so the head learns and every figure moves each epoch.
    x = rng.standard_normal((n, dim)).astype("float32") + labels[:, None] * 0.25
    return x, keras.utils.to_categorical(labels, n_classes)


def _class_weights(y: np.ndarray) -> dict[int, float]:
    counts = y.sum(axis=0)
    return {i: float(len(y) / (len(counts) * c)) for i, c in enumerate(counts)}


def _head(spec: RunSpec, dim: int = 48, n_classes: int = N_CLASSES) -> keras.Model:
    keras.utils.set_random_seed(3)
    return build_head(dim, n_classes, spec.hidden_units, spec.dropout)


def _keras_way(spec: RunSpec, train: tuple, val: tuple, epochs: int,
               class_weights: dict[int, float] | None) -> tuple[list[dict], list[np.ndarray]]:
    """Keras's fit, one epoch at a time, on the batches head_fit takes in each epoch."""
    head = _head(spec)
    compile_classifier(head, spec, N_CLASSES, spec.learning_rate, steps_per_execution=3)
    logs = EpochLogs()
    validation = ValidationOnArrays(*val, 1024)
    x, y = train
    for epoch in range(epochs):
        order = head_fit.epoch_order(SEED, epoch, len(x))
        batches = tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(BATCH)
        head.fit(batches, initial_epoch=epoch, epochs=epoch + 1, verbose=0, shuffle=False,
                 callbacks=[validation, logs], class_weight=class_weights)
    return logs.epochs, head.get_weights()


def _graph_way(spec: RunSpec, train: tuple, val: tuple, epochs: int,
               class_weights: dict[int, float] | None) -> tuple[list[dict], list[np.ndarray]]:
    head = _head(spec)
    logs = EpochLogs()
    head_fit.fit_head(head, make_optimizer(spec.optimizer, spec.learning_rate), train, val,
                      batch_size=BATCH, epochs=epochs, seed=SEED,
                      label_smoothing=spec.label_smoothing, class_weights=class_weights,
                      top_k=2, callbacks=[logs])
    return logs.epochs, head.get_weights()


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop"])
@pytest.mark.parametrize("hidden_units", [16, 0])
def test_the_graph_trains_a_head_as_keras_fit_does_on_the_same_batches(
        optimizer: str, hidden_units: int) -> None:
    """Every epoch's figures and the final weights, with label smoothing and class
    weights, and a last batch smaller than the others (90 = 5 × 16 + 10). Without
    dropout: its random masks come from another stream than Keras's."""
    spec = RunSpec(optimizer=optimizer, hidden_units=hidden_units, dropout=0.0,
                   label_smoothing=0.1, learning_rate=3e-3).normalized()
    train, val = _features(90, seed=1), _features(50, seed=2)
    weights = _class_weights(train[1])
    theirs, their_weights = _keras_way(spec, train, val, 4, weights)
    ours, our_weights = _graph_way(spec, train, val, 4, weights)

    assert len(ours) == len(theirs) == 4
    for mine, keras_logs in zip(ours, theirs, strict=True):
        assert set(mine) == set(keras_logs) == {"loss", "accuracy", "top_k", "val_loss",
                                                "val_accuracy", "val_top_k"}
        for name, value in keras_logs.items():
            assert mine[name] == pytest.approx(value, rel=2e-5, abs=2e-6), name
    assert len({round(epoch["val_loss"], 5) for epoch in ours}) == 4  # it learned
    for mine, keras_weights in zip(our_weights, their_weights, strict=True):
        np.testing.assert_allclose(mine, keras_weights, rtol=2e-4, atol=2e-6)


def test_one_graph_serves_heads_of_every_width_class_count_and_optimizer() -> None:
    head_fit.warm_up()
    traced = head_fit._train_epoch.experimental_get_tracing_count()
    for hidden, n_classes, optimizer in ((32, 3, "adam"), (0, 5, "sgd"), (7, 2, "rmsprop"),
                                         (0, 3, "adamw")):
        x, y = _features(70, seed=hidden, n_classes=n_classes, dim=20)
        keras.utils.set_random_seed(1)
        head = build_head(20, n_classes, hidden, 0.2)
        before = [w.copy() for w in head.get_weights()]
        logs = EpochLogs()
        head_fit.fit_head(head, make_optimizer(optimizer, 1e-2), (x, y), (x[:20], y[:20]),
                          batch_size=8, epochs=3, seed=5, callbacks=[logs])
        assert len(logs.epochs) == 3
        assert all(np.isfinite(list(epoch.values())).all() for epoch in logs.epochs)
        assert any(not np.array_equal(a, b) for a, b in zip(before, head.get_weights(),
                                                              strict=True))
    assert head_fit._train_epoch.experimental_get_tracing_count() == traced


def test_dropout_is_seeded_and_only_in_training() -> None:
    spec = RunSpec(hidden_units=24, dropout=0.5, learning_rate=1e-2).normalized()
    train, val = _features(80, seed=4), _features(40, seed=5)
    first, first_weights = _graph_way(spec, train, val, 3, None)
    again, again_weights = _graph_way(spec, train, val, 3, None)
    assert first == again
    for a, b in zip(first_weights, again_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    no_dropout, _ = _graph_way(RunSpec(hidden_units=24, dropout=0.0, learning_rate=1e-2)
                               .normalized(), train, val, 3, None)
    # The first epoch's training loss is over dropped-out features; validation's is not.
    assert first[0]["loss"] != pytest.approx(no_dropout[0]["loss"], rel=1e-4)


def test_callbacks_stop_training_and_change_the_learning_rate() -> None:
    """Keras's EarlyStopping and ReduceLROnPlateau work on the stand-in for the model."""
    spec = RunSpec(hidden_units=8, dropout=0.0, learning_rate=1e-2).normalized()
    x, y = _features(64, seed=6)
    head = _head(spec)
    optimizer = make_optimizer("adam", 1e-2)
    logs = EpochLogs()
    # Validation on one image of one class: val_accuracy cannot improve after epoch 1.
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=2)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", mode="max",
                                                factor=0.5, patience=1)
    head_fit.fit_head(head, optimizer, (x, y), (x[:1], y[:1]), batch_size=16, epochs=20,
                      callbacks=[plateau, stop, logs])
    assert len(logs.epochs) == 3
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(2.5e-3)


def test_heads_it_does_not_train_are_left_to_keras() -> None:
    spec = RunSpec(hidden_units=8).normalized()
    assert head_fit.head_shape(_head(spec)) is not None
    inputs = keras.Input((4,))
    tanh_head = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(
        keras.layers.Dense(3, activation="tanh")(inputs)))
    assert head_fit.head_shape(tanh_head) is None
    assert head_fit.supports(make_optimizer("adam", 1e-3))
    assert not head_fit.supports(keras.optimizers.Adam(1e-3, amsgrad=True))
    assert not head_fit.supports(keras.optimizers.SGD(1e-3, momentum=0.9))  # not Nesterov
    assert not head_fit.supports(keras.optimizers.Adam(1e-3, clipnorm=1.0))
    assert not head_fit.supports(keras.optimizers.Adagrad(1e-3))
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5)
    assert not head_fit.supports(keras.optimizers.Adam(schedule))
    spared = keras.optimizers.AdamW(1e-3)
    spared.exclude_from_weight_decay(var_names=["bias"])
    assert not head_fit.supports(spared)
    constrained = keras.Model(inputs, keras.layers.Dense(
        2, activation="softmax", kernel_constraint=keras.constraints.NonNeg())(inputs))
    assert head_fit.head_shape(constrained) is None
    twice = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(
        keras.layers.Dropout(0.1)(keras.layers.Dropout(0.2)(inputs))))
    assert head_fit.head_shape(twice) is None
