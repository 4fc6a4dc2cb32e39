"""Which weights a run keeps, progress that reads well, and hints where a default hurts."""

from __future__ import annotations

import functools
import json
import random
import time
from typing import Any

import keras
import numpy as np
import pytest
from conftest import TINY_CLASSES, kill_worker, train_tiny_run, write_color_classes

import tl_engine as tle
from tl_engine import cli, runs
from tl_engine.callbacks import PROGRESS_INTERVAL_S, PredictProgress, StoreProgress, weights_tag
from tl_engine.datasets import ingest_folder, split_records
from tl_engine.errors import SpecError, TLError
from tl_engine.hints import Hint, run_hints, spec_hints
from tl_engine.jobs import recover_interrupted, resume_run, submit_run, worker_main
from tl_engine.progress import EtaEstimator, FeaturePass, FeaturePassProgress
from tl_engine.runs import RunRecord
from tl_engine.spec import RunSpec

PRETRAINED = dict(weights="imagenet", image_size=32, learning_rate=0.01)


def _queued_run(ws, dataset) -> str:
    spec = RunSpec(backbone="MobileNetV2-0.35", weights="none", image_size=32)
    return submit_run(ws, dataset.project, dataset.id, spec, start_worker=False).run_id


# --- the ETA of a training phase -----------------------------------------------------


def _simulate_phase(epochs: int = 6, steps: int = 20, step_s: float = 0.1, pause_s: float = 1.5):
    """Step times with noise, a slow validation after each epoch, one-off costs at the start
    (tracing the train and test functions). Returns (clock, eta, true seconds left) readings
    after each step, and the epoch each reading belongs to."""
    rng = random.Random(3)
    eta = EtaEstimator(steps, pause_guess_steps=4 / 3)
    clock, readings = 0.0, []
    for epoch in range(epochs):
        if epoch:
            pause = pause_s + (2.0 if epoch == 1 else 0.0)
            eta.epoch_pause(pause)
            clock += pause
        for step in range(steps):
            took = step_s * rng.uniform(0.9, 1.1) + (3.0 if epoch == step == 0 else 0.0)
            eta.steps_done(1, took)
            clock += took
            done = epoch * steps + step + 1
            readings.append((epoch, clock, eta.seconds_left(epochs * steps - done, epochs - epoch)))
    end = clock + pause_s
    return [(epoch, at, left, end - at) for epoch, at, left in readings]


def test_eta_is_known_after_two_steps_and_moves_with_the_clock_across_epochs():
    readings = _simulate_phase()
    # The first step carries the tracing (3 s against 0.1 s): no estimate from it alone.
    assert readings[0][2] is None
    assert readings[1][2] is not None
    settled = [r for r in readings if r[0] >= 2]  # after the first pause was measured twice
    for (_, at_before, left_before, _), (_, at, left, _) in zip(settled, settled[1:], strict=False):
        # Between two readings the ETA drops by about the time that passed, even across the
        # 1.5 s validation at an epoch's end: no jump of more than a quarter second.
        assert abs((left_before - left) - (at - at_before)) < 0.25
    for _, _, left, truth in settled:
        assert abs(left - truth) <= 0.1 * truth + 0.2


def test_eta_spreads_validation_over_the_steps():
    eta = EtaEstimator(steps_per_epoch=10)
    for _ in range(30):
        eta.steps_done(1, 0.2)
    eta.epoch_pause(5.0)
    eta.epoch_pause(4.0)  # the second measurement replaces the first (tracing)
    assert eta.step_seconds == pytest.approx(0.2)
    assert eta.seconds_per_step == pytest.approx(0.2 + 0.4)
    assert eta.seconds_left(15, 2) == pytest.approx(15 * 0.2 + 2 * 4.0)


def test_feature_passes_share_one_bar_and_skip_cached_passes():
    passes = FeaturePassProgress([FeaturePass("training images", 40),
                                  FeaturePass("validation images", 0),
                                  FeaturePass("test images", 20)])
    passes.start("training images")
    passes.batch_done(10, 1.0)  # first batch: a rate at once
    first = passes.snapshot()
    assert (first.pass_name, first.pass_index, first.passes) == ("training images", 1, 2)
    assert first.phase == "features"
    assert first.images_done == 10 and first.images_total == 40
    assert first.fraction == pytest.approx(10 / 60)
    assert first.eta_s == pytest.approx(50 * 0.1) and first.images_per_s == pytest.approx(10)
    for _ in range(3):
        passes.batch_done(10, 0.5)
    passes.start("test images")
    passes.batch_done(10, 0.5)
    later = passes.snapshot()
    assert (later.pass_name, later.pass_index) == ("test images", 2)
    assert later.fraction == pytest.approx(50 / 60)  # does not restart at the new pass
    assert later.eta_s == pytest.approx(10 * 0.05)


# --- the callbacks with a real model and a real workspace ----------------------------


class _ReadProgressAfterFirstBatch(keras.callbacks.Callback):
    def __init__(self, ws, run_id):
        super().__init__()
        self.ws, self.run_id, self.seen = ws, run_id, None

    def on_predict_batch_end(self, batch, logs=None):
        if batch == 0:
            self.seen = runs.get_run(self.ws, self.run_id).progress


def test_predict_progress_names_passes_and_has_an_eta_from_the_first_batch(
        workspace, tiny_dataset):
    run_id = _queued_run(workspace, tiny_dataset)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    passes = FeaturePassProgress([FeaturePass("training images", 20),
                                  FeaturePass("validation images", 0),
                                  FeaturePass("test images", 10)])
    reader = _ReadProgressAfterFirstBatch(workspace, run_id)
    report = functools.partial(runs.heartbeat, workspace, run_id)
    model.predict(np.zeros((20, 4)), batch_size=4, verbose=0, callbacks=[
        PredictProgress(report, passes, "training images", 4, time.time()), reader])
    assert reader.seen.phase == "features" and reader.seen.eta_s is not None
    assert reader.seen.images_done == 4 and reader.seen.pass_name == "training images"
    done = runs.get_run(workspace, run_id).progress
    assert (done.pass_index, done.passes, done.images_done, done.images_total) == (1, 2, 20, 20)
    assert done.fraction == pytest.approx(20 / 30) and done.eta_s > 0
    assert done.images_per_s > 0 and done.step == done.steps == 5
    assert done.epoch is None and done.logs is None  # training's fields are not stored

    model.predict(np.zeros((10, 4)), batch_size=4, verbose=0, callbacks=[
        PredictProgress(report, passes, "test images", 4, time.time())])
    last = runs.get_run(workspace, run_id).progress
    assert (last.pass_name, last.pass_index, last.fraction, last.eta_s) == (
        "test images", 2, 1.0, 0.0)


class _ReadProgressAtEpochEnd(keras.callbacks.Callback):
    def __init__(self, ws, run_id):
        super().__init__()
        self.ws, self.run_id, self.seen = ws, run_id, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(runs.get_run(self.ws, self.run_id).progress)


def test_later_stages_on_cached_activations_are_estimated_by_their_top(workspace,
                                                                        tiny_dataset):
    from tl_engine.phases import phases
    from tl_engine.training import RunTrainer

    spec = RunSpec(backbone="MobileNetV2-0.35", strategy="gradual", unfreeze=4,
                   unfreeze_unit="blocks", head_epochs=2, epochs_per_stage=1, epochs=3)
    run_id = submit_run(workspace, tiny_dataset.project, tiny_dataset.id, spec,
                        start_worker=False).run_id
    trainer = RunTrainer(workspace, run_id)
    trainer._forward_s_per_image = 0.01  # as this run's feature pass measured it
    plan = phases(spec.normalized())
    stages = plan[1:]
    assert all(stage.cached_activations for stage in stages)
    estimate = trainer._later_seconds(stages, steps=3)(EtaEstimator(3), False)
    n_train, n_val = len(trainer.splits.train), len(trainer.splits.val)
    # Each stage: one pass of the bottom to cache its activations, then epochs on the top
    # (its share of MobileNetV2's 19 blocks), far from whole-model epochs on pixels.
    expected = sum((n_train + n_val) * 0.01 + stage.epochs * (3 * n_train + n_val) * 0.01
                   * stage.trainable_top / 19 for stage in stages)
    whole_model = sum(stage.epochs * (3 * n_train + n_val) * 0.01 for stage in stages)
    assert estimate == pytest.approx(expected)
    assert estimate < whole_model / 2


def test_a_test_split_too_small_to_make_is_said(workspace, tmp_path):
    from tl_engine.training import RunTrainer

    small = ingest_folder(workspace, write_color_classes(tmp_path / "small", TINY_CLASSES,
                                                         per_class=2), project="small")
    spec = RunSpec(backbone="MobileNetV2-0.35", weights="none", image_size=32, test_split=0.3)
    run_id = submit_run(workspace, "small", small.id, spec, start_worker=False).run_id
    trainer = RunTrainer(workspace, run_id)
    assert trainer.splits.test == []
    assert trainer.notes == ["No test images: a test split of 30% was asked for, but no "
                             "class has enough images to spare one (a class needs 3 or more)."]


def _small_classifier(optimizer: Any = "adam") -> tuple[Any, np.ndarray, np.ndarray]:
    """A compiled one-layer model and 40 examples of 3 classes for it: callbacks' test bed."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer, "categorical_crossentropy", metrics=["accuracy"])
    return model, np.random.default_rng(0).normal(size=(40, 4)), np.eye(3)[np.arange(40) % 3]


def test_training_progress_counts_later_phases_and_reports_images_per_second(
        workspace, tiny_dataset):
    run_id = _queued_run(workspace, tiny_dataset)
    model, x, y = _small_classifier()
    reader = _ReadProgressAtEpochEnd(workspace, run_id)
    progress = StoreProgress(workspace, run_id, "head", 0, 3, 5, time.time(),
                             images_per_step=8, later_seconds=lambda eta: 1000.0)
    model.fit(x, y, batch_size=8, epochs=3, validation_data=(x, y), verbose=0,
              callbacks=[progress, reader])
    assert len(reader.seen) == 3
    for seen in reader.seen:
        assert {"phase", "epoch", "epochs", "step", "steps", "fraction", "eta_s", "elapsed_s",
                "logs", "images_per_s"} <= set(seen.to_dict())
        assert seen.eta_s >= 1000.0 and seen.eta_scope == "run"
        assert seen.images_per_s > 0 and seen.pass_name is None
    assert [s.fraction for s in reader.seen] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [m["epoch"] for m in runs.run_metrics(workspace, run_id)] == [1, 2, 3]


# --- which weights a run keeps -------------------------------------------------------


def test_keep_weights_is_validated_and_exported():
    assert tle.KEEP_WEIGHTS == ("best", "last")
    assert RunSpec().keep_weights == "best"
    assert RunSpec(keep_weights="last").normalized().keep_weights == "last"
    with pytest.raises(SpecError, match="keep_weights"):
        RunSpec(keep_weights="first").normalized()


def _head_kernel(ws, run_id):
    model = keras.saving.load_model(runs.model_path(ws, run_id), compile=False)
    return model.get_layer("head").get_weights()[0]


def test_best_and_last_epoch_weights_with_feature_passes_for_test_images(
        workspace, tiny_dataset, keras_home):
    best = train_tiny_run(workspace, tiny_dataset, **PRETRAINED, epochs=6, test_split=0.2)
    assert best.status == "completed", best.error
    metrics = runs.run_metrics(workspace, best.id)
    values = [m["val_accuracy"] for m in metrics]
    summary = best.summary
    # The first epoch with the best val accuracy; its weights were restored.
    assert summary["best_epoch"] == 1 + values.index(max(values))
    assert summary["epochs_run"] == 6 and summary["best_epoch"] < 6 and summary["restored_best"]
    assert summary["final_val_accuracy"] == pytest.approx(values[-1])
    assert summary["val_accuracy"] == pytest.approx(values[summary["best_epoch"] - 1], abs=1e-6)
    best_file = workspace.run_dir(best.id) / "best-head.weights.h5"
    assert weights_tag(best_file)[0] == summary["best_epoch"]
    # The saved model (written while the head trained, see early_save.py) holds them.
    saved_head = keras.saving.load_model(runs.model_path(workspace, best.id),
                                         compile=False).get_layer("head")
    kept = keras.models.clone_model(saved_head)
    kept.load_weights(str(best_file))
    for saved, wanted in zip(saved_head.get_weights(), kept.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, wanted)
    # Training, validation and test images went through one feature phase, all cached.
    assert summary["features_computed"] == 30 and summary["n_test"] > 0
    assert summary["test_accuracy"] is not None

    last = train_tiny_run(workspace, tiny_dataset, **PRETRAINED, epochs=6, test_split=0.2,
                          keep_weights="last")
    assert last.summary["features_reused"] == 30
    assert last.summary["best_epoch"] == 6 and last.summary["restored_best"] is False
    assert [m["val_accuracy"] for m in runs.run_metrics(workspace, last.id)] == values
    assert last.summary["val_accuracy"] == pytest.approx(values[-1], abs=1e-6)
    # Same seed, same epochs: the two models differ only by which epoch they kept.
    assert not np.allclose(_head_kernel(workspace, best.id), _head_kernel(workspace, last.id))


def test_resume_after_a_killed_worker_keeps_the_best_epoch_right(workspace, tiny_dataset):
    spec = RunSpec(backbone="MobileNetV2-0.35", weights="none", image_size=32, batch_size=8,
                   learning_rate=0.01, strategy="full", epochs=8, seed=5)
    run_id = submit_run(workspace, "test", tiny_dataset.id, spec).run_id
    deadline = time.monotonic() + 240
    while len(runs.run_metrics(workspace, run_id)) < 3:
        assert time.monotonic() < deadline, "no epochs recorded in time"
        time.sleep(0.2)
    kill_worker(runs.get_run(workspace, run_id).worker_pid)
    assert run_id in recover_interrupted(workspace)
    # What a worker killed mid-write leaves: staging files, never read, gone after resume.
    torn = [workspace.run_dir(run_id) / ".best-fine-tune.tmp.weights.h5",
            workspace.run_dir(run_id) / ".tmp-abc.json"]
    for file in torn:
        file.write_bytes(b"torn")
    resume_run(workspace, run_id, start_worker=False)
    worker_main(workspace)
    run = runs.get_run(workspace, run_id)
    assert run.status == "completed", run.error
    metrics = runs.run_metrics(workspace, run_id)
    assert [m["epoch"] for m in metrics] == list(range(1, 9))
    values = [m["val_accuracy"] for m in metrics]
    best_epoch = run.summary["best_epoch"]
    assert weights_tag(workspace.run_dir(run_id) / "best-fine-tune.weights.h5")[0] == best_epoch
    assert not any(file.exists() for file in torn)
    assert values[best_epoch - 1] == max(values)
    assert run.summary["val_accuracy"] == pytest.approx(values[best_epoch - 1], abs=1e-6)
    assert run.summary["final_val_accuracy"] == pytest.approx(values[-1])
    assert run.summary["restored_best"] == (best_epoch < 8)


def test_cli_keep_last_and_json_keys(tiny_data_dir, tmp_path, capsys):
    code = cli.main(["train", "--data", str(tiny_data_dir), "--weights", "none",
                     "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--keep", "last",
                     "--workspace", str(tmp_path / "ws"), "--no-progress", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and result["status"] == "completed", result
    assert result["best_epoch"] == result["epochs_run"] == 2
    assert isinstance(result["final_val_accuracy"], float)
    assert {"run_id", "val_accuracy", "seconds", "model_path"} <= set(result)
    run = runs.get_run(tle.Workspace(tmp_path / "ws"), result["run_id"])
    assert run.spec.keep_weights == "last"


# --- a given split with a test split carved out of its training part -------------------


def test_given_split_gets_a_seeded_stratified_test_split_from_train(workspace, hymenoptera):
    dataset = ingest_folder(workspace, hymenoptera, project="bugs")
    parts = split_records(dataset, val_split=0.3, test_split=0.1, seed=1)
    assert len(parts["val"]) == 153 and {r.split for r in parts["val"]} == {"val"}
    assert {r.split for r in parts["test"]} == {"train"}
    test_labels = [r.label for r in parts["test"]]
    assert (test_labels.count("ants"), test_labels.count("bees")) == (12, 12)
    assert len(parts["train"]) == 245 - 24
    assert not {r.hash for r in parts["test"]} & {r.hash for r in parts["train"]}
    assert split_records(dataset, val_split=0.3, test_split=0.1, seed=1) == parts
    assert split_records(dataset, val_split=0.3, test_split=0.1, seed=2)["test"] != parts["test"]
    assert split_records(dataset, test_split=0.0)["test"] == []


def test_a_given_test_folder_is_kept_and_test_split_ignored(workspace, tmp_path):
    for split, per_class in (("train", 8), ("val", 3), ("test", 2)):
        write_color_classes(tmp_path / "src" / split, TINY_CLASSES, per_class=per_class,
                            seed=len(split))
    dataset = ingest_folder(workspace, tmp_path / "src")
    parts = split_records(dataset, val_split=0.2, test_split=0.3)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [24, 9, 6]
    assert {r.split for r in parts["test"]} == {"test"}


def test_training_on_a_given_split_reports_on_the_carved_test_split(workspace, hymenoptera):
    dataset = ingest_folder(workspace, hymenoptera, project="bugs")
    run = train_tiny_run(workspace, dataset, epochs=1, batch_size=32, test_split=0.1)
    assert run.status == "completed", run.error
    assert (run.summary["n_train"], run.summary["n_val"], run.summary["n_test"]) == (221, 153, 24)
    evaluation = runs.evaluation(workspace, run.id)
    assert evaluation["test"]["n_images"] == 24
    assert run.summary["test_accuracy"] == evaluation["test"]["accuracy"]


# --- two-phase: the head-phase weights stay available --------------------------------


def test_worse_fine_tuning_keeps_head_weights_and_switching_to_them(
        workspace, tiny_dataset, keras_home):
    # A fine-tune rate of 1.0 wrecks what the head phase learned.
    run = train_tiny_run(workspace, tiny_dataset, **PRETRAINED, strategy="two-phase",
                         unfreeze=20, head_epochs=3, epochs=2, fine_tune_lr_factor=100.0)
    assert run.status == "completed", run.error
    summary, folder = run.summary, workspace.run_dir(run.id)
    head_metrics = [m for m in runs.run_metrics(workspace, run.id) if m["phase"] == "head"]
    assert summary["head_val_accuracy"] > summary["val_accuracy"]
    assert summary["head_best_epoch"] in [m["epoch"] for m in head_metrics]
    assert summary["head_model_available"] is True and summary["best_epoch"] == 4
    # The stored JSON as before, what the fine-tune phase did with cached activations,
    # and the calibration.
    assert list(summary)[-10:] == ["weights_identity", "head_val_accuracy", "head_best_epoch",
                                   "head_model_available", "activations_computed",
                                   "activations_reused", "temperature", "ece",
                                   "ece_calibrated", "ece_split"]
    head_evaluation = json.loads((folder / "evaluation-head.json").read_text())
    assert set(head_evaluation) == set(runs.evaluation(workspace, run.id))
    assert head_evaluation["val"]["accuracy"] == summary["head_val_accuracy"]
    assert (folder / "model-head.keras").is_file()
    hints = run_hints(run, runs.run_metrics(workspace, run.id))
    assert any(h.text.startswith("Fine-tuning made it worse") and "head-phase weights" in h.text
               for h in hints)

    fine_tuned_val = summary["val_accuracy"]
    images = [str(workspace.image_path(r.hash)) for r in tiny_dataset.records]
    before = tle.predict_images(workspace, run.id, images)
    switched = tle.use_head_phase_weights(workspace, run.id)
    assert switched.summary["weights_from"] == "head"
    assert switched.summary["val_accuracy"] == summary["head_val_accuracy"]
    assert switched.summary["best_epoch"] == summary["head_best_epoch"]
    assert switched.summary["finetuned_val_accuracy"] == fine_tuned_val
    assert switched.summary["head_model_available"] is False
    # The head model's own temperature, fitted when it was kept: prediction applies it.
    assert switched.summary["temperature"] == head_evaluation["calibration"]["temperature"]
    assert tle.load_predictor(workspace, run.id).temperature == switched.summary["temperature"]
    assert json.loads((folder / "summary.json").read_text()) == switched.summary
    assert list(switched.summary) == [*summary, "finetuned_val_accuracy", "finetuned_best_epoch",
                                      "weights_from"]
    assert switched.result.weights_from == "head" and switched.result.best_epoch == \
        summary["head_best_epoch"]
    assert runs.evaluation(workspace, run.id) == head_evaluation
    assert (folder / "model-finetuned.keras").is_file()
    assert (folder / "evaluation-finetuned.json").is_file()
    assert not (folder / "model-head.keras").exists()
    after = tle.predict_images(workspace, run.id, images)
    assert [p.top for p in after] != [p.top for p in before]  # the model in use changed
    assert tle.use_head_phase_weights(workspace, run.id).summary == switched.summary


def test_switching_needs_head_weights(trained_workspace):
    ws, _, run = trained_workspace
    with pytest.raises(TLError, match="no head-phase weights"):
        tle.use_head_phase_weights(ws, run.id)


# --- hints ---------------------------------------------------------------------------


def test_spec_hints_warn_about_harsh_fine_tuning_and_frozen_random_weights():
    assert spec_hints(RunSpec()) == []
    partial = spec_hints(RunSpec(strategy="partial", unfreeze=10, learning_rate=1e-3))
    assert [h.level for h in partial] == ["warning"]
    assert "learning rate 1e-3" in partial[0].text and "Try 1e-4" in partial[0].text
    assert spec_hints(RunSpec(strategy="partial", unfreeze=10, learning_rate=1e-4)) == []
    harsh = spec_hints(RunSpec(strategy="two-phase", unfreeze=2, fine_tune_lr_factor=1.0))
    assert len(harsh) == 1 and "factor 1" in harsh[0].text
    assert spec_hints(RunSpec(strategy="two-phase", unfreeze=2, fine_tune_lr_factor=0.1)) == []
    random_frozen = spec_hints(RunSpec(weights="none"))
    assert len(random_frozen) == 1 and "random weights" in random_frozen[0].text
    assert spec_hints(RunSpec(weights="none", strategy="full")) == []
    assert isinstance(random_frozen[0], Hint) and tle.spec_hints is spec_hints


def _record(spec: RunSpec, summary: dict) -> RunRecord:
    return RunRecord(id="r1", project="p", dataset_id="d1", spec=spec, cache_key="k",
                     status="completed", started_by=None, created_at=0.0, started_at=0.0,
                     finished_at=1.0, heartbeat_at=None, worker_pid=None, summary=summary)


def test_run_hints_early_peak_and_over_fitting():
    metrics = [{"epoch": e, "phase": "head", "accuracy": a, "val_accuracy": v}
               for e, a, v in [(1, 0.6, 0.7), (2, 0.8, 0.82), (3, 0.9, 0.8), (4, 0.95, 0.79),
                               (5, 0.97, 0.8), (6, 0.99, 0.78), (7, 1.0, 0.8), (8, 1.0, 0.8)]]
    summary = {"epochs_run": 8, "best_epoch": 2, "restored_best": True,
               "final_val_accuracy": 0.8}
    hints = run_hints(_record(RunSpec(), summary), metrics)
    texts = " ".join(h.text for h in hints)
    assert "peaked at epoch 2 of 8" in texts and "Early stopping" in texts
    assert "Training accuracy 100.0 % against 80.0 %" in texts
    assert not any("Fine-tuning made it worse" in h.text for h in hints)
    # Early stopping already on: no advice to turn it on.
    quiet = run_hints(_record(RunSpec(early_stopping=3), summary), metrics[:3])
    assert quiet == []


def test_a_later_phases_bar_continues_where_the_earlier_phases_left_it(workspace, tiny_dataset):
    """Fine-tuning after 2 head epochs, 3 of 5 planned: the bar goes on from 2/5 rather
    than starting again at zero."""
    run_id = _queued_run(workspace, tiny_dataset)
    model, x, y = _small_classifier()
    reader = _ReadProgressAtEpochEnd(workspace, run_id)
    progress = StoreProgress(workspace, run_id, "fine-tune", 2, 3, 5, time.time(),
                             planned=(2, 5))
    model.fit(x, y, batch_size=8, initial_epoch=2, epochs=5, verbose=0,
              callbacks=[progress, reader])
    assert [s.fraction for s in reader.seen] == pytest.approx([3 / 5, 4 / 5, 1.0])
    assert [(s.epoch, s.epochs) for s in reader.seen] == [(1, 3), (2, 3), (3, 3)]


def test_stored_epoch_figures_read_as_the_counts_they_are(workspace, tiny_dataset):
    """Keras's float32 accuracy of k of 40 images is stored as the decimal k / 40, the
    figure a run's count-based val_accuracy has, not 0.67500001192..."""
    run_id = _queued_run(workspace, tiny_dataset)
    model, x, y = _small_classifier(keras.optimizers.Adam(0.003))
    progress = StoreProgress(workspace, run_id, "head", 0, 4, 5, time.time())
    model.fit(x, y, batch_size=8, epochs=4, validation_data=(x, y), verbose=0,
              callbacks=[progress])
    stored = runs.run_metrics(workspace, run_id)
    assert len(stored) == 4
    for epoch in stored:
        for name in ("accuracy", "val_accuracy"):
            assert epoch[name] == round(epoch[name] * 40) / 40
        assert epoch["learning_rate"] == 0.003


class _StoredEpochsAtEpochEnd(keras.callbacks.Callback):
    def __init__(self, ws, run_id):
        super().__init__()
        self.ws, self.run_id, self.seen = ws, run_id, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(len(runs.run_metrics(self.ws, self.run_id)))


def test_fast_epochs_of_a_phase_not_resumed_are_stored_together(workspace, tiny_dataset):
    """Epochs of milliseconds (a head on features) go to the store in one transaction
    once training ends, or once PROGRESS_INTERVAL_S has passed: every one of them, each
    with its own time; a cancel asked for meanwhile is seen then."""
    run_id = _queued_run(workspace, tiny_dataset)
    model, x, y = _small_classifier()
    stored = _StoredEpochsAtEpochEnd(workspace, run_id)
    progress = StoreProgress(workspace, run_id, "head", 0, 4, 5, time.time(),
                             hold_epochs=True)
    started = time.time()
    model.fit(x, y, batch_size=8, epochs=4, validation_data=(x, y), verbose=0,
              callbacks=[progress, stored])
    metrics = runs.run_metrics(workspace, run_id)
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    if time.time() - started < PROGRESS_INTERVAL_S:  # a slow machine flushes midway
        assert stored.seen == [0, 0, 0, 0]
    assert all(m["val_accuracy"] is not None and m["seconds"] > 0 for m in metrics)
    assert runs.get_run(workspace, run_id).progress.epoch == 4

    assert runs.claim_next_run(workspace) == run_id
    runs.request_cancel(workspace, run_id)
    again = StoreProgress(workspace, run_id, "head", 0, 2, 5, time.time(), hold_epochs=True)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[again])
    assert again.cancelled
