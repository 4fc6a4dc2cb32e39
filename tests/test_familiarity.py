"""Familiarity of predicted images: the profile's arithmetic on known distributions, the
profile a trained run stores, prediction with and without it (runs of older versions), a
profile that does not belong to the model, and the CLI's JSON rows."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import PROJECT_ROOT, train_tiny_run

import tl_engine as tle
from tl_engine import familiarity
from tl_engine.model_file import load_run_model
from tl_engine.predict import Predictor


def clusters(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 40-dimensional positive features (like pooled ReLU outputs), around
    the same two centres whatever the seed."""
    centres = np.abs(np.random.default_rng(0).normal(0, 1, (2, 40))) + 1.0
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    rows = centres[labels] + rng.normal(0, 0.3, (n, 40))
    if shift:  # elsewhere: other channels light up
        rows = np.roll(rows, 20, axis=1) * rng.uniform(0.2, 2.0, 40) + shift
    return np.abs(rows), labels


# --- the profile's arithmetic -------------------------------------------------------------


def test_validation_calibrates_the_threshold_and_far_images_are_flagged():
    train, labels = clusters(300, seed=1)
    val, _ = clusters(400, seed=2)
    profile = familiarity.fit_profile(train, labels, val[:200], np.ones(40))
    assert profile.calibrated_on == "held-out training images and validation images"
    assert len(profile.reference) == 500
    fresh_familiarity, fresh_flagged = profile.score(val[200:])
    far, _ = clusters(200, seed=3, shift=1.0)
    far_familiarity, far_flagged = profile.score(far)
    assert 0.0 <= fresh_flagged.mean() <= 0.15  # about 1 in 20 at the 95th percentile
    assert far_flagged.mean() >= 0.95
    assert ((fresh_familiarity >= 0) & (fresh_familiarity <= 1)).all()
    assert 0.3 <= np.median(fresh_familiarity) <= 0.7  # a typical image sits mid-way
    assert np.median(far_familiarity) < 0.01
    # Familiarity falls as the distance grows, past the farthest reference image too.
    distances = np.linspace(0, 3 * profile.reference[-1], 200)
    values = profile.familiarity_of(distances)
    assert values[0] == 1.0 and values[-1] < 1e-3
    assert (np.diff(values) <= 1e-12).all()
    # The threshold in familiarity terms: what the flag means on the 0-1 scale.
    assert (fresh_familiarity[fresh_flagged] < profile.threshold_familiarity + 1e-9).all()
    assert profile.threshold_familiarity == pytest.approx(0.05)
    assert profile.familiarity_of([profile.threshold])[0] == pytest.approx(0.05)
    # With 500 calibration distances that is their 95th percentile.
    assert profile.threshold == pytest.approx(np.percentile(profile.reference, 95), rel=0.02)


def test_few_validation_images_borrow_held_out_training_images_to_calibrate():
    train, labels = clusters(30, seed=7)
    val, _ = clusters(6, seed=8)
    profile = familiarity.fit_profile(train, labels, val, np.ones(40))
    # Each training image measured against a profile fitted without it (5 folds) joins
    # the 6 validation images: the 95th percentile is then an estimate, not a guess.
    assert len(profile.reference) == 36
    fresh, _ = clusters(300, seed=9)
    assert profile.score(fresh)[1].mean() <= 0.15
    far, _ = clusters(100, seed=3, shift=1.0)
    assert profile.score(far)[1].mean() >= 0.95


def test_without_validation_images_it_calibrates_on_the_training_images():
    train, labels = clusters(60, seed=4)
    profile = familiarity.fit_profile(train, labels, np.zeros((0, 40)), np.ones(40))
    assert profile.calibrated_on == "held-out training images"
    assert len(profile.reference) == 60
    # Fewer training images than dimensions: the covariance stays usable.
    few, few_labels = clusters(8, seed=5)
    small = familiarity.fit_profile(few, few_labels, few, np.ones(40))
    assert np.isfinite(small.distances(few)).all()


def test_a_profile_is_saved_atomically_and_read_back(workspace):
    train, labels = clusters(80, seed=6)
    profile = familiarity.fit_profile(train, labels, train[:20], np.arange(40.0))
    folder = workspace.run_dir("r_demo")
    familiarity.save_profile(workspace, folder, profile)
    assert sorted(p.name for p in folder.iterdir()) == ["familiarity.json", "familiarity.npz"]
    again = familiarity.load_profile(folder)
    np.testing.assert_allclose(again.distances(train), profile.distances(train))
    assert again.threshold == profile.threshold and again.n_train == 80
    summary = json.loads((folder / "familiarity.json").read_text())
    assert summary["percentile"] == 95.0 and summary["n_reference"] == 100
    assert summary["threshold_familiarity"] == pytest.approx(profile.threshold_familiarity)
    # A run of an older version has no file; a damaged one is ignored, not fatal.
    assert familiarity.load_profile(workspace.run_dir("r_old")) is None
    (folder / "familiarity.npz").write_bytes(b"cut short")
    assert familiarity.load_profile(folder) is None


# --- a trained run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import TINY_CLASSES, write_color_classes

    root = tmp_path_factory.mktemp("familiar")
    ws = tle.Workspace(root / "ws")
    data = write_color_classes(root / "data", TINY_CLASSES, per_class=10)
    dataset = tle.ingest_folder(ws, data, project="demo")
    run = train_tiny_run(ws, dataset)
    assert run.status == "completed", run.error
    return ws, dataset, run


def test_a_trained_run_stores_its_profile_and_predictions_carry_familiarity(tiny_run):
    ws, dataset, run = tiny_run
    folder = ws.run_dir(run.id)
    summary = familiarity.read_summary(folder)
    assert summary["n_train"] == run.summary["n_train"]
    assert summary["calibrated_on"].endswith("validation images")
    assert summary["n_reference"] == run.summary["n_train"] + run.summary["n_val"]
    paths = [ws.image_path(r.hash) for r in dataset.records[:4]]
    predictions = tle.predict_images(ws, run.id, [*paths, ("junk.jpg", b"not a picture")])
    for prediction in predictions[:4]:
        assert 0.0 <= prediction.familiarity <= 1.0
        assert isinstance(prediction.unfamiliar, bool)
        assert prediction.to_dict()["familiarity"] == prediction.familiarity
    assert predictions[4].error and predictions[4].familiarity is None
    assert predictions[4].unfamiliar is False


def test_a_profile_of_another_model_gives_no_familiarity(tiny_run):
    ws, dataset, run = tiny_run
    model = load_run_model(ws, run.id)
    profile = familiarity.load_profile(ws.run_dir(run.id))
    labels = tle.runs.labels(ws, run.id)
    matching = Predictor(model, labels, run.spec.image_size, run.id, profile)
    assert matching.profile is not None
    other = dataclasses.replace(profile, fingerprint=profile.fingerprint * 1.5 + 1.0)
    predictor = Predictor(model, labels, run.spec.image_size, run.id, other)
    assert predictor.profile is None
    (prediction,) = predictor.predict([ws.image_path(dataset.records[0].hash)])
    assert prediction.label is not None and prediction.familiarity is None
    assert prediction.unfamiliar is False


def test_cli_predict_json_rows_carry_familiarity_also_for_runs_without_a_profile(tiny_run,
                                                                              tmp_path):
    ws, dataset, run = tiny_run
    image = str(ws.image_path(dataset.records[0].hash))

    def predict_json() -> list[dict]:
        result = subprocess.run(
            [sys.executable, "-m", "tl_engine", "predict", "--run", run.id, image, "--json",
             "--workspace", str(ws.root)],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    (row,) = predict_json()
    assert {"image", "label", "confidence", "top", "probabilities", "familiarity",
            "unfamiliar"} <= set(row)
    assert 0.0 <= row["familiarity"] <= 1.0 and isinstance(row["unfamiliar"], bool)

    # A run trained before profiles existed: predicted as before, never flagged.
    profile_file = ws.run_dir(run.id) / familiarity.PROFILE_FILE
    kept = tmp_path / "kept.npz"
    profile_file.replace(kept)
    try:
        (old,) = predict_json()
    finally:
        kept.replace(profile_file)
    assert old["label"] == row["label"]
    assert old["familiarity"] is None and old["unfamiliar"] is False


def test_a_fine_tuned_run_profiles_its_own_features_not_the_cached_ones(tiny_run):
    ws, dataset, _ = tiny_run
    run = train_tiny_run(ws, dataset, strategy="full", epochs=1)
    assert run.status == "completed", run.error
    predictor = tle.load_predictor(ws, run.id)
    assert predictor.profile is not None  # made from the fine-tuned model's features
    (prediction,) = predictor.predict([ws.image_path(dataset.records[0].hash)])
    assert 0.0 <= prediction.familiarity <= 1.0


def test_runs_on_the_same_cached_features_share_one_profile(tiny_run):
    """Another head on the same frozen features reads the profile the first run fitted: the
    same arrays, one entry in the workspace's profile store, and predictions still flagged."""
    ws, dataset, run = tiny_run
    other = train_tiny_run(ws, dataset, hidden_units=16)
    assert other.status == "completed", other.error
    first = familiarity.load_profile(ws.run_dir(run.id))
    second = familiarity.load_profile(ws.run_dir(other.id))
    for field in dataclasses.fields(first):
        np.testing.assert_array_equal(getattr(first, field.name), getattr(second, field.name))
    assert len(list((ws.features_db_path.parent / "profiles").iterdir())) == 1
    (prediction,) = tle.predict_images(ws, other.id, [ws.image_path(dataset.records[0].hash)])
    assert 0.0 <= prediction.familiarity <= 1.0
