"""Fine-tuning on cached activations: the classifier cut at the freeze boundary trains the
same weights as the complete model does, and runs use it where they can."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from tl_engine import familiarity, runs
from tl_engine.activations import activation_cache, cut_classifier
from tl_engine.datasets import split_records
from tl_engine.freeze import apply_freeze, layer_rate_factors, plan_freeze
from tl_engine.jobs import submit_run, worker_main
from tl_engine.model_file import load_run_model
from tl_engine.modeling import build_classifier
from tl_engine.optimizers import make_optimizer
from tl_engine.pipeline import image_dataset
from tl_engine.predict import load_predictor
from tl_engine.spec import RunSpec

SPEC = RunSpec(backbone="MobileNetV2-0.35", weights="imagenet", image_size=96, dropout=0.0,
               strategy="partial", unfreeze=2, unfreeze_unit="blocks").normalized()


def _classifier(spec: RunSpec, trainable_top: int, unit: str):
    keras.utils.set_random_seed(7)
    clf = build_classifier(spec, 3)
    freeze = plan_freeze(clf.entry, clf.backbone, trainable_top, unit, 3, 0)
    apply_freeze(clf.backbone, freeze)
    return clf, freeze


def _batch(n: int = 8):
    rng = np.random.default_rng(1)
    pixels = rng.uniform(0, 255, (n, 96, 96, 3)).astype("float32")
    return pixels, np.eye(3, dtype="float32")[rng.integers(0, 3, n)]


def _bn_statistics(clf):
    return [w.numpy().copy() for layer in clf.backbone.layers
            if isinstance(layer, keras.layers.BatchNormalization)
            for w in layer.non_trainable_weights]


def _pair(trainable_top: int, unit: str):
    """The complete model and a cut one, from the same starting weights, compiled alike
    with discriminative rates (the optimizer's factors are keyed by shared variables)."""
    def compiled(model, clf, plan):
        rates = layer_rate_factors(plan, 0.5)
        factors = {id(v): f for layer in clf.backbone.layers
                   if (f := rates.get(layer.name)) is not None
                   for v in layer.trainable_weights}
        model.compile(optimizer=make_optimizer("sgd", 0.05, factors),
                      loss="categorical_crossentropy")

    plain, freeze = _classifier(SPEC, trainable_top, unit)
    cut_from, cut_freeze = _classifier(SPEC, trainable_top, unit)
    cut = cut_classifier(cut_from, cut_freeze, pretrained=True)
    compiled(plain.model, plain, freeze)
    compiled(cut.top, cut_from, cut_freeze)
    return plain, cut_from, cut


def _activations(cut, pixels, float16: bool):
    found = cut.bottom.predict(pixels, verbose=0)
    found = found if isinstance(found, list) else [found]
    return [np.asarray(a, np.float16).astype(np.float32) if float16 else a for a in found]


@pytest.mark.parametrize("trainable_top,unit,crossing", [
    (2, "blocks", 1),
    (13, "layers", 2),  # starts inside block 15: its input reaches its add past the cut
])
def test_training_the_top_on_cached_activations_trains_the_complete_model_alike(
        keras_home, trainable_top, unit, crossing):
    pixels, labels = _batch()
    plain, cut_from, cut = _pair(trainable_top, unit)
    assert len(cut.boundary) == crossing
    np.testing.assert_allclose(cut.top.predict(_activations(cut, pixels, False), verbose=0),
                               cut_from.model.predict(pixels, verbose=0), atol=1e-6)
    # The top's variables are the complete model's: training one trains the other.
    assert [id(v) for v in cut.top.trainable_weights] == \
        [id(v) for v in cut_from.model.trainable_weights]
    assert any(w.path.startswith("block_16") for w in cut_from.model.trainable_weights)
    statistics = _bn_statistics(cut_from)
    exact = _activations(cut, pixels, False)
    for _ in range(3):
        plain.model.train_on_batch(pixels, labels)
        cut.top.train_on_batch(exact, labels)
    for a, b in zip(plain.model.trainable_weights, cut_from.model.trainable_weights,
                    strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5)
    # Pretrained BatchNormalization stays in inference mode in the top.
    for kept, now in zip(statistics, _bn_statistics(cut_from), strict=True):
        np.testing.assert_array_equal(kept, now)

    # On the activations as cached (float16): the same step within float16's precision.
    plain, cut_from, cut = _pair(trainable_top, unit)
    cached = _activations(cut, pixels, True)
    np.testing.assert_allclose(cut.top.predict(cached, verbose=0),
                               cut_from.model.predict(pixels, verbose=0), atol=2e-3)
    before = [w.numpy().copy() for w in plain.model.trainable_weights]
    plain.model.train_on_batch(pixels, labels)
    cut.top.train_on_batch(cached, labels)
    for start, a, b in zip(before, plain.model.trainable_weights,
                           cut_from.model.trainable_weights, strict=True):
        step_plain, step_cut = a.numpy() - start, b.numpy() - start
        assert np.abs(step_plain).max() > 0
        np.testing.assert_allclose(step_cut, step_plain, atol=0.05 * np.abs(step_plain).max())
        assert np.linalg.norm(step_cut - step_plain) <= 0.01 * np.linalg.norm(step_plain)


def test_the_heads_dropout_still_trains_in_the_top(keras_home):
    clf, freeze = _classifier(dataclasses.replace(SPEC, dropout=0.5), 2, "blocks")
    cut = cut_classifier(clf, freeze, pretrained=True)
    pixels, _ = _batch(4)
    activations = cut.bottom(pixels)
    activations = activations if isinstance(activations, list) else [activations]
    inference = np.asarray(cut.top(activations, training=False))
    assert np.array_equal(inference, np.asarray(cut.top(activations, training=False)))
    assert not np.allclose(inference, np.asarray(cut.top(activations, training=True)))


TINY = dict(backbone="MobileNetV2-0.35", weights="imagenet", image_size=32, batch_size=8,
            learning_rate=0.001, strategy="partial", unfreeze=2, unfreeze_unit="blocks",
            epochs=3)


def _train_here(ws, dataset, **settings):
    submission = submit_run(ws, dataset.project, dataset.id, RunSpec(**{**TINY, **settings}),
                            start_worker=False)
    worker_main(ws)
    run = runs.get_run(ws, submission.run_id)
    assert run.status == "completed", run.error
    return run


def test_a_partial_run_trains_on_cached_activations_and_saves_the_complete_model(
        workspace, tiny_dataset, keras_home):
    run = _train_here(workspace, tiny_dataset)
    result = run.result
    assert (result.activations_computed, result.activations_reused) == (
        result.n_train + result.n_val, 0)
    assert result.notes == ()
    assert activation_cache(workspace).count() == result.n_train + result.n_val
    # The evaluation ran the saved, complete model on pixels; the epoch it kept was scored
    # on cached activations: the same model, so the same accuracy.
    kept = next(m for m in runs.run_metrics(workspace, run.id) if m["epoch"] == result.best_epoch)
    assert result.val_accuracy == pytest.approx(kept["val_accuracy"])

    # The model the app loads predicts what the evaluation recorded (calibrated by the
    # run's temperature: p ∝ p_raw ** (1 / T)).
    temperature = result.temperature or 1.0
    evaluation = runs.evaluation(workspace, run.id)["val"]["predictions"]
    pixels = np.concatenate(list(image_dataset(
        [str(workspace.image_path(p["hash"])) for p in evaluation], None, 32, 8)
        .as_numpy_iterator()))
    probabilities = load_predictor(workspace, run.id).probabilities(pixels)
    for row, stored in zip(probabilities, evaluation, strict=True):
        assert int(np.argmax(row)) == stored["predicted"]
        raw = np.array([stored["probabilities"][name] for name in tiny_dataset.classes])
        calibrated = raw ** (1 / temperature) / (raw ** (1 / temperature)).sum()
        np.testing.assert_allclose(row, calibrated, atol=1e-4)

    # Its familiarity profile comes from the trained top run on the cached activations:
    # what the saved model's own features of the images give, to float16 rounding.
    splits = split_records(tiny_dataset, run.spec.val_split, run.spec.test_split,
                           run.spec.seed)
    scoring = familiarity.features_and_probabilities_model(load_run_model(workspace, run.id))

    def features(records: list) -> np.ndarray:
        pixels = image_dataset([str(workspace.image_path(r.hash)) for r in records], None,
                               run.spec.image_size, 8)
        return np.asarray(scoring.predict(pixels, verbose=0)[1])

    labels = np.array([tiny_dataset.classes.index(r.label) for r in splits["train"]])
    stored = familiarity.load_profile(workspace.run_dir(run.id))
    on_pixels = familiarity.fit_profile(features(splits["train"]), labels,
                                        features(splits["val"]), stored.fingerprint)
    np.testing.assert_allclose(stored.means, on_pixels.means, atol=2e-3)
    assert stored.threshold == pytest.approx(on_pixels.threshold, rel=0.05)

    # Another head and learning rate over the same frozen bottom: nothing to compute.
    other = _train_here(workspace, tiny_dataset, hidden_units=16, learning_rate=0.003).result
    assert (other.activations_computed, other.activations_reused) == (
        0, result.n_train + result.n_val)
    # A deeper cut is another boundary: its own activations.
    deeper = _train_here(workspace, tiny_dataset, unfreeze=3, epochs=1).result
    assert deeper.activations_computed == result.n_train + result.n_val


@pytest.mark.parametrize("settings, why", [
    ({"augment": ("flip",)}, "augmentation"),
    # Random weights give activations of ~1e-8 at the boundary: float16 would lose them.
    ({"weights": "none"}, "random starting weights"),
])
def test_the_run_trains_on_pixels_and_says_why(workspace, tiny_dataset, keras_home,
                                               settings, why):
    result = _train_here(workspace, tiny_dataset, epochs=1, **settings).result
    assert result.activations_computed is None
    assert activation_cache(workspace).count() == 0
    assert len(result.notes) == 1 and why in result.notes[0]
    assert result.notes[0].startswith("Fine-tuning")


def test_a_torn_first_backup_is_discarded_and_an_intact_one_kept(tmp_path):
    # Epochs on cached activations are short: a killed worker often dies while Keras writes
    # a phase's first backup, which has no earlier copy to fall back to.
    import h5py

    from tl_engine.callbacks import discard_torn_first_backup

    backup = tmp_path / "backup" / "stage-1"
    backup.mkdir(parents=True)
    (backup / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    discard_torn_first_backup(backup)
    assert not backup.exists()
    backup.mkdir()
    h5py.File(backup / "latest.weights.h5", "w").close()
    discard_torn_first_backup(backup)
    assert (backup / "latest.weights.h5").is_file()
