"""Training runs end to end: the store, the feature cache, the queue, cancel and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import PROJECT_ROOT

from tl_engine import runs
from tl_engine.cli import main as cli_main
from tl_engine.features import FeatureCache, feature_key
from tl_engine.jobs import (
    cancel_run,
    recover_interrupted,
    resume_run,
    submit_run,
    wait_for_run,
    worker_main,
)
from tl_engine.processes import process_alive
from tl_engine.spec import RunSpec
from tl_engine.store import Workspace

TINY = dict(backbone="MobileNetV2-0.35", weights="none", image_size=32, batch_size=8,
            learning_rate=0.01)


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test(workspace):
    """A detached worker left behind by a failing test would load the CPU for the rest of
    the suite: stop every worker this test's workspace saw (never this process)."""
    yield
    for run in runs.list_runs(workspace):
        if run.worker_pid and run.worker_pid != os.getpid() and process_alive(run.worker_pid):
            os.kill(run.worker_pid, signal.SIGKILL)


def _train_here(ws, dataset, **settings):
    """Queue and train in this process (the worker's own code path, without the spawn)."""
    spec = RunSpec(**{**TINY, **settings})
    submission = submit_run(ws, dataset.project, dataset.id, spec, start_worker=False)
    worker_main(ws)
    return submission, runs.get_run(ws, submission.run_id)


def test_frozen_run_stores_metrics_model_and_evaluation(workspace, tiny_dataset):
    submission, run = _train_here(workspace, tiny_dataset, epochs=3)
    assert not submission.cached
    assert run.status == "completed", run.error
    metrics = runs.run_metrics(workspace, run.id)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "top_k"} <= set(metrics[0])
    evaluation = runs.evaluation(workspace, run.id)["val"]
    assert evaluation["classes"] == ["blue", "green", "red"]
    assert np.asarray(evaluation["confusion_matrix"]).sum() == run.summary["n_val"]
    assert set(evaluation["per_class"]) == {"blue", "green", "red"}
    assert run.summary["features_computed"] == 30 and run.summary["features_reused"] == 0
    assert run.summary["trainable_params"] < run.summary["frozen_params"]

    # The saved complete model predicts what the head predicts on the cached features.
    model = keras.saving.load_model(runs.model_path(workspace, run.id), compile=False)
    records = sorted(tiny_dataset.records, key=lambda r: r.hash)[:6]
    from tl_engine.pipeline import image_dataset

    pixels = np.concatenate(list(image_dataset(
        [str(workspace.image_path(r.hash)) for r in records], None, 32, 8).as_numpy_iterator()))
    key = feature_key("MobileNetV2-0.35", "none:seed=42", 32)
    cached = FeatureCache(workspace).lookup(key, [r.hash for r in records])
    assert not cached.missing
    head = model.get_layer("head")
    np.testing.assert_allclose(
        model.predict(pixels, verbose=0),
        head.predict(np.stack([cached.vectors[r.hash] for r in records]), verbose=0),
        atol=1e-5,
    )


def test_identical_spec_is_cached_and_other_heads_reuse_features(workspace, tiny_dataset):
    first, run = _train_here(workspace, tiny_dataset, epochs=2)
    again = submit_run(workspace, "test", tiny_dataset.id, RunSpec(**TINY, epochs=2),
                       start_worker=False)
    assert again.cached and again.run_id == first.run_id
    _, other_head = _train_here(workspace, tiny_dataset, epochs=2, hidden_units=16)
    assert other_head.id != run.id
    assert other_head.summary["features_computed"] == 0
    assert other_head.summary["features_reused"] == 30
    # Same seed, same data, same spec: the same metrics when trained again.
    forced = submit_run(workspace, "test", tiny_dataset.id, RunSpec(**TINY, epochs=2),
                        force=True, start_worker=False)
    worker_main(workspace)
    assert forced.run_id != first.run_id
    timing = {"seconds", "phase"}
    repeat = [{k: v for k, v in m.items() if k not in timing}
              for m in runs.run_metrics(workspace, forced.run_id)]
    original = [{k: v for k, v in m.items() if k not in timing}
                for m in runs.run_metrics(workspace, first.run_id)]
    assert repeat == original


@pytest.mark.parametrize(
    "settings",
    [
        dict(strategy="two-phase", unfreeze=2, unfreeze_unit="blocks", epochs=1, head_epochs=1,
             augment=("flip", "rotation", "zoom", "contrast", "translation")),
        dict(strategy="partial", unfreeze=10, epochs=1, class_weights=True, label_smoothing=0.1,
             early_stopping=2, reduce_lr=True, optimizer="sgd", test_split=0.2),
        dict(strategy="full", epochs=1, optimizer="adamw"),
    ],
)
def test_fine_tuning_strategies_train_end_to_end(workspace, tiny_dataset, settings):
    _, run = _train_here(workspace, tiny_dataset, **settings)
    assert run.status == "completed", run.error
    metrics = runs.run_metrics(workspace, run.id)
    if settings["strategy"] == "two-phase":
        assert [m["phase"] for m in metrics] == ["head", "fine-tune"]
        assert run.summary["features_computed"] == 0  # augmentation: no cached features
    assert run.summary["trainable_params"] > 0
    if settings.get("test_split"):
        assert runs.evaluation(workspace, run.id)["test"]["n_images"] == run.summary["n_test"] > 0


def _wait_until(predicate, timeout_s=180.0, poll_s=0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError("condition not reached in time")


def test_cli_ctrl_c_leaves_the_run_training_and_cancel_says_what_it_did(tiny_data_dir,
                                                                         tmp_path):
    ws = tmp_path / "cli-ws"
    command = [sys.executable, "-m", "tl_engine", "train", "--data", str(tiny_data_dir),
               "--backbone", "MobileNetV2-0.35", "--weights", "none", "--image-size", "32",
               "--batch-size", "8", "--strategy", "full", "--epochs", "400",
               "--workspace", str(ws), "--json", "--no-progress"]
    waiting = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    store = None

    def training() -> bool:
        nonlocal store
        if store is None and (ws / "index.sqlite").is_file():
            store = Workspace(ws)
        active = store and [r for r in runs.list_runs(store) if r.status == "running"]
        return bool(active) and bool(runs.run_metrics(store, active[0].id))

    try:
        try:
            _wait_until(training)
            waiting.send_signal(signal.SIGINT)
            out, err = waiting.communicate(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
        _ctrl_c_and_cancel(command, waiting, out, err, store, ws)
    finally:  # whatever failed, no worker goes on training for the rest of the session
        for run in runs.list_runs(store) if store is not None else []:
            cancel_run(store, run.id)


def _ctrl_c_and_cancel(command, waiting, out, err, store, ws):
    import json

    # Ctrl-C stops the waiting, not the run: the command names it and how to stop it.
    assert waiting.returncode == 130, err
    left = json.loads(out.strip().splitlines()[-1])
    run_id = left["run_id"]
    assert left["status"] == "running"
    assert f"python -m tl_engine cancel --run {run_id} --workspace {ws.resolve()}" in err
    assert runs.get_run(store, run_id).status == "running"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tl_engine", *args, "--workspace",
                               str(ws)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=120)

    cancelled = cli("cancel", "--run", run_id)
    assert cancelled.returncode == 0
    assert cancelled.stdout.strip() == (f"run {run_id}: cancel requested; it stops within a "
                                        "batch or two")
    final = wait_for_run(store, run_id, timeout_s=120)
    assert final.status == "cancelled"
    again = cli("cancel", "--run", run_id)
    assert again.returncode == 1
    assert again.stdout.strip() == f"run {run_id} is already cancelled: nothing to cancel"
    # The same settings again: a new run, which `train --json` reports with the epochs it
    # trained when it ends cancelled.
    rerun = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_until(lambda: any(r.status == "running" and r.id != run_id
                                and runs.run_metrics(store, r.id)
                                for r in runs.list_runs(store)))
        second = next(r for r in runs.list_runs(store) if r.status == "running")
        cancel_run(store, second.id)
        out, err = rerun.communicate(timeout=120)
    finally:
        if rerun.poll() is None:
            rerun.kill()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["run_id"] == second.id and result["status"] == "cancelled"
    assert result["epochs_run"] == max(m["epoch"] for m in runs.run_metrics(store, second.id))
    assert result["epochs_run"] >= 1


def test_worker_process_queue_cancel_interrupt_and_resume(workspace, tiny_dataset, capsys):
    """A real detached worker: runs queue behind each other, cancel stops one, a killed
    worker leaves an interrupted run that resumes from its checkpoint."""
    long_spec = RunSpec(**{**TINY, "strategy": "full", "epochs": 400})
    first = submit_run(workspace, "test", tiny_dataset.id, long_spec)
    second = submit_run(workspace, "test", tiny_dataset.id, RunSpec(**TINY, epochs=400,
                                                                          strategy="full",
                                                                          seed=7))
    assert runs.queue_position(workspace, second.run_id) in (1, 2)
    running = _wait_until(lambda: runs.get_run(workspace, first.run_id).status == "running")
    assert running
    assert runs.queue_position(workspace, second.run_id) == 1
    # Progress arrives while the epoch is running.
    _wait_until(lambda: runs.get_run(workspace, first.run_id).progress.epoch)
    assert cancel_run(workspace, second.run_id) == "cancelled"
    cancel_run(workspace, first.run_id)
    final = wait_for_run(workspace, first.run_id, timeout_s=120)
    assert final.status == "cancelled"

    # Kill the worker in the middle of a run: the next start marks it interrupted.
    third = submit_run(workspace, "test", tiny_dataset.id,
                       RunSpec(**{**TINY, "strategy": "full", "epochs": 12, "seed": 3}))
    _wait_until(lambda: len(runs.run_metrics(workspace, third.run_id)) >= 1)
    pid = runs.get_run(workspace, third.run_id).worker_pid
    os.kill(pid, signal.SIGKILL)
    _wait_until(lambda: not process_alive(pid))
    assert third.run_id in recover_interrupted(Workspace(workspace.root))
    assert runs.get_run(workspace, third.run_id).status == "interrupted"
    done_before = len(runs.run_metrics(workspace, third.run_id))
    capsys.readouterr()
    assert cli_main(["--workspace", str(workspace.root), "runs"]) == 0
    listed = next(line for line in capsys.readouterr().out.splitlines()
                  if line.startswith(third.run_id))
    assert "interrupted" in listed and f"{done_before} of 12" in listed
    first_attempt = runs.trained_so_far(workspace, runs.get_run(workspace, third.run_id)).seconds
    assert first_attempt and first_attempt > 0
    resume_run(workspace, third.run_id)
    resumed = wait_for_run(workspace, third.run_id, timeout_s=300)
    assert resumed.status == "completed", resumed.error
    epochs = [m["epoch"] for m in runs.run_metrics(workspace, third.run_id)]
    assert epochs == list(range(1, 13))  # continuous: no epoch lost or repeated
    assert 1 <= done_before < 12 and resumed.epochs_run == 12
    # Its time counts both attempts.
    assert resumed.earlier_seconds == pytest.approx(first_attempt)
    # The last attempt's own account starts once its worker has loaded: within its claim.
    last_attempt = resumed.finished_at - resumed.started_at
    assert first_attempt < resumed.seconds <= first_attempt + last_attempt


def test_resuming_a_phase_without_a_backup_drops_its_epochs_at_once(workspace, tiny_dataset):
    """A frozen run killed in its head phase (epochs on cached features keep no backup)
    trains that phase again from its first epoch: the stopped attempt's epochs leave the
    charts when Resume is pressed, not seconds later when a worker reaches the phase."""
    run_id = submit_run(workspace, "test", tiny_dataset.id,
                        RunSpec(**{**TINY, "epochs": 400, "seed": 5})).run_id
    _wait_until(lambda: len(runs.run_metrics(workspace, run_id)) >= 2)
    pid = runs.get_run(workspace, run_id).worker_pid
    os.kill(pid, signal.SIGKILL)
    _wait_until(lambda: not process_alive(pid))
    assert run_id in recover_interrupted(Workspace(workspace.root))
    assert len(runs.run_metrics(workspace, run_id)) >= 2
    resume_run(workspace, run_id, start_worker=False)
    assert runs.run_metrics(workspace, run_id) == []
    worker_main(workspace)
    resumed = runs.get_run(workspace, run_id)
    assert resumed.status == "completed", resumed.error
    assert [m["epoch"] for m in runs.run_metrics(workspace, run_id)] == list(range(1, 401))


def test_cli_train_runs_in_worker_and_returns_json(tiny_data_dir, tmp_path):
    ws = tmp_path / "cli-ws"
    command = [sys.executable, "-m", "tl_engine", "train", "--data", str(tiny_data_dir),
               "--backbone", "MobileNetV2-0.35", "--weights", "none", "--image-size", "32",
               "--epochs", "2", "--batch-size", "8", "--workspace", str(ws), "--json"]
    first = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    import json

    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed" and result["cached"] is False
    assert result["epochs_run"] == 2 and os.path.isfile(result["model_path"])
    assert {"run_id", "val_accuracy", "seconds"} <= set(result)
    assert "%" in first.stderr  # the progress bar
    second = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    again = json.loads(second.stdout.strip().splitlines()[-1])
    assert again["cached"] is True and again["run_id"] == result["run_id"]
    listing = subprocess.run(
        [sys.executable, "-m", "tl_engine", "runs", "--workspace", str(ws), "--json"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert [r["run_id"] for r in json.loads(listing.stdout)] == [result["run_id"]]


def test_cli_resume_wait_exits_1_when_the_run_fails_again(workspace, tiny_dataset):
    spec = RunSpec(**TINY, epochs=1)
    run_id = submit_run(workspace, tiny_dataset.project, tiny_dataset.id, spec,
                        start_worker=False).run_id
    assert runs.claim_next_run(workspace) == run_id
    runs.finish_run(workspace, run_id, runs.RunStatus.FAILED, error="first attempt failed")
    # Its dataset's manifest is damaged since: the resumed attempt fails too.
    (workspace.dataset_dir(tiny_dataset.id) / "manifest.json").write_text("{")
    resumed = subprocess.run(
        [sys.executable, "-m", "tl_engine", "resume", "--run", run_id, "--wait",
         "--workspace", str(workspace.root)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 1, resumed.stderr
    assert resumed.stdout.strip() == "failed"
    assert "damaged manifest" in resumed.stderr and "Traceback" not in resumed.stderr
