"""EarlySave writes the file `model.save` would write once the head's training ends."""

from __future__ import annotations

import threading
from pathlib import Path

import keras
import numpy as np

from tl_engine.early_save import EarlySave
from tl_engine.model_file import save_keras_model
from tl_engine.modeling import build_head


def _classifier() -> tuple[keras.Model, keras.Model]:
    """A frozen 'backbone' and a head, nested as the engine nests them."""
    keras.utils.set_random_seed(4)
    pixels = keras.Input((16,))
    trunk = keras.Sequential([keras.layers.Dense(24, activation="relu"),
                              keras.layers.Dense(12, activation="relu")], name="trunk")
    trunk.trainable = False
    head = build_head(12, 3, 8, 0.2)
    return keras.Model(pixels, head(trunk(pixels))), head


def _dense(head: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]


def test_the_file_holds_the_head_weights_given_before_finish(tmp_path: Path) -> None:
    model, head = _classifier()
    early = EarlySave(model, _dense(head), tmp_path / "early.keras")
    # Meanwhile the head trains, and its best weights are saved on their own: not held.
    final = [w + np.float32(0.5) for w in head.get_weights()]
    head.set_weights(final)
    head.save_weights(str(tmp_path / "best.weights.h5"))
    path = early.finish()

    save_keras_model(model, tmp_path / "plain.keras")
    early_model = keras.saving.load_model(str(path))
    plain_model = keras.saving.load_model(str(tmp_path / "plain.keras"))
    for mine, plain in zip(early_model.get_weights(), plain_model.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, plain)
    loaded_head = early_model.layers[-1]
    for mine, wanted in zip(loaded_head.get_weights(), final, strict=True):
        np.testing.assert_array_equal(mine, wanted)
    x = np.random.default_rng(1).standard_normal((5, 16)).astype("float32")
    np.testing.assert_allclose(early_model(x), model(x), rtol=1e-6)
    # The layers save as before once it is done.
    assert all("save_own_variables" not in vars(layer) for layer in _dense(head))


def test_an_abandoned_save_leaves_no_file_and_no_thread(tmp_path: Path) -> None:
    model, head = _classifier()
    before = threading.active_count()
    early = EarlySave(model, _dense(head), tmp_path / "early.keras")
    early.abandon()
    assert not (tmp_path / "early.keras").exists()
    assert threading.active_count() == before
    assert all("save_own_variables" not in vars(layer) for layer in _dense(head))
