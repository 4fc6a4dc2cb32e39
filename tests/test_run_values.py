"""A run's result (`RunSummary`) and live progress (`Progress`): typed values stored as the
same JSON as before, read back from summaries that older versions stored."""

from __future__ import annotations

import dataclasses
import json

import pytest

import tl_engine as tle
from tl_engine import runs
from tl_engine.hints import run_hints
from tl_engine.spec import RunSpec

# The keys a trainer has always written, in their order, then those of head-first plans,
# then those `use_head_phase_weights` adds, then temperature scaling's (runs trained since).
BASE_KEYS = ["val_accuracy", "val_top_k_accuracy", "test_accuracy", "epochs_run", "best_epoch",
             "final_val_accuracy", "restored_best", "seconds", "model_path", "classes",
             "n_train", "n_val", "n_test", "features_computed", "features_reused",
             "trainable_params", "frozen_params", "device", "weights_identity"]
HEAD_KEYS = ["head_val_accuracy", "head_best_epoch", "head_model_available"]
SWITCH_KEYS = ["finetuned_val_accuracy", "finetuned_best_epoch", "weights_from"]
CALIBRATION_KEYS = ["temperature", "ece", "ece_calibrated", "ece_split"]

FULL = tle.RunSummary(
    val_accuracy=0.9, val_top_k_accuracy=1.0, test_accuracy=None, epochs_run=6, best_epoch=4,
    final_val_accuracy=0.8, restored_best=True, seconds=12.5, model_path="/w/runs/r1/model.keras",
    classes=("ant", "bee"), n_train=20, n_val=6, n_test=0, features_computed=26,
    features_reused=0, trainable_params=1234, frozen_params=400_000, device="CPU",
    weights_identity="imagenet:abc", head_val_accuracy=None, head_best_epoch=3,
    head_model_available=False)


def _queued(ws, dataset, seed=0):
    spec = RunSpec(backbone="MobileNetV2-0.35", weights="none", image_size=32, seed=seed)
    return tle.submit_run(ws, dataset.project, dataset.id, spec, start_worker=False).run_id


def test_a_summary_round_trips_and_leaves_out_only_the_groups_it_lacks():
    stored = FULL.to_dict()
    assert list(stored) == BASE_KEYS + HEAD_KEYS
    # A run without a test split, or whose head phase kept no epoch, says so with null.
    assert stored["test_accuracy"] is None and stored["head_val_accuracy"] is None
    assert stored["classes"] == ["ant", "bee"]
    assert tle.RunSummary.from_dict(json.loads(json.dumps(stored))) == FULL

    one_phase = dataclasses.replace(FULL, head_val_accuracy=None, head_best_epoch=None,
                                    head_model_available=None)
    assert list(one_phase.to_dict()) == BASE_KEYS
    switched = dataclasses.replace(FULL, finetuned_val_accuracy=0.8, finetuned_best_epoch=6,
                                   weights_from="head")
    assert list(switched.to_dict()) == BASE_KEYS + HEAD_KEYS + SWITCH_KEYS
    assert tle.RunSummary.from_dict(switched.to_dict()) == switched
    assert tle.RunSummary.from_dict({}) == tle.RunSummary()
    calibrated = dataclasses.replace(switched, temperature=1.5, ece=0.1, ece_calibrated=0.05,
                                     ece_split="val")
    assert list(calibrated.to_dict()) == BASE_KEYS + HEAD_KEYS + SWITCH_KEYS + CALIBRATION_KEYS
    assert tle.RunSummary.from_dict(calibrated.to_dict()) == calibrated


def test_a_summary_stored_by_an_older_version_reads_with_defaults(workspace, tiny_dataset):
    # Before top-k, test splits, best-epoch restore, devices and weight identities; with a
    # key this version no longer writes.
    old = {"val_accuracy": 0.75, "epochs_run": 4, "seconds": 30.0,
           "model_path": "/old/model.keras", "classes": ["red", "green", "blue"],
           "n_train": 24, "n_val": 6, "features_computed": 30, "features_reused": 0,
           "strategy": "frozen"}
    run_id = _queued(workspace, tiny_dataset)
    runs.update_run(workspace, run_id, status="completed", summary=old)

    run = runs.get_run(workspace, run_id)
    # Kept as stored, but for the model's path: where the run's folder holds it now.
    assert run.summary == {**old, "model_path": str(workspace.run_dir(run_id) / "model.keras")}
    result = run.result
    assert (result.val_accuracy, result.epochs_run, result.classes) == (
        0.75, 4, ("red", "green", "blue"))
    assert result.restored_best is None and result.best_epoch is None
    assert result.test_accuracy is None and result.head_model_available is None
    assert not hasattr(result, "strategy")
    assert (run.val_accuracy, run.epochs_run, run.seconds) == (0.75, 4, 30.0)
    # The readers fall back as before: no restore recorded reads as restored, the last
    # epoch's figure stands in for the missing final accuracy.
    metrics = [{"epoch": e, "phase": "head", "accuracy": 0.8, "val_accuracy": v}
               for e, v in [(1, 0.75), (2, 0.6), (3, 0.6), (4, 0.6)]]
    [peak] = [h for h in run_hints(run, metrics) if "peaked" in h.text]
    assert "epoch 1 of 4" in peak.text and "holds that epoch's weights" in peak.text

    # A queued run has no summary yet: an empty result, not an error.
    fresh = runs.get_run(workspace, _queued(workspace, tiny_dataset, seed=1))
    assert fresh.summary == {} and fresh.result == tle.RunSummary()
    assert (fresh.val_accuracy, fresh.epochs_run, fresh.seconds) == (None, 0, None)


def test_progress_of_each_kind_round_trips_through_the_store(workspace, tiny_dataset):
    run_id = _queued(workspace, tiny_dataset)
    assert runs.get_run(workspace, run_id).progress == tle.Progress()
    assert tle.Progress().to_dict() == {}

    training = tle.Progress(phase="head", phase_title="Training the head", epoch=2, epochs=5,
                            step=3, steps=4, fraction=0.35, eta_s=None, eta_scope="phase",
                            images_per_s=None, elapsed_s=4.0, logs={"loss": 0.5})
    features = tle.Progress(phase="features", step=1, steps=2, pass_name="training images",
                            pass_index=1, passes=2, images_done=8, images_total=16,
                            images_per_s=40.0, eta_s=0.6, fraction=0.25, elapsed_s=1.0)
    for progress in (training, features):
        assert not runs.heartbeat(workspace, run_id, progress)
        stored = json.loads(workspace.query("SELECT progress_json FROM runs WHERE id = ?",
                                            (run_id,))[0]["progress_json"])
        assert stored == progress.to_dict()
        assert None not in stored.values()  # what a kind does not report is left out
        assert runs.get_run(workspace, run_id).progress == progress
    assert set(training.to_dict()) == {"phase", "phase_title", "epoch", "epochs", "step",
                                       "steps", "fraction", "eta_scope", "elapsed_s", "logs"}
    assert tle.Progress.from_dict({**features.to_dict(), "from_a_newer_worker": 1}) == features


def test_a_trained_runs_stored_summary_is_the_json_it_always_was(trained_workspace):
    ws, dataset, run = trained_workspace
    stored = ws.query("SELECT summary_json FROM runs WHERE id = ?", (run.id,))[0]["summary_json"]
    summary = json.loads(stored)
    assert list(summary) == BASE_KEYS + CALIBRATION_KEYS  # a one-phase plan: no head keys
    assert json.dumps(tle.RunSummary.from_dict(summary).to_dict()) == stored  # byte for byte
    assert run.result == tle.RunSummary.from_dict(summary)
    assert run.result.classes == tuple(dataset.classes)
    assert run.result.n_train + run.result.n_val + run.result.n_test == len(dataset.records)
    folder = ws.run_dir(run.id)
    assert json.loads((folder / "summary.json").read_text()) == summary
    assert json.loads((folder / runs.RUN_FILE).read_text())["summary"] == summary
    assert run.progress == tle.Progress(phase="done", fraction=1.0)


@pytest.mark.parametrize("name", ["RunSummary", "Progress"])
def test_the_values_are_public(name):
    assert name in tle.__all__ and getattr(tle, name).__module__.startswith("tl_engine.")
