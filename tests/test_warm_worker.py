"""A worker that waits for the next job: it runs jobs queued while it waits, exits after its
idle period, can be started ahead of any job, and dies without leaving anything running.
Starting weights are read once per process without leaking a run's training."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import PROJECT_ROOT, kill_worker

import tl_engine as tle
from tl_engine import familiarity, job_kinds, runs
from tl_engine.jobs import ensure_worker, slot_busy, submit_job, worker_main
from tl_engine.processes import process_alive
from tl_engine.runs import RunStatus
from tl_engine.spec import RunSpec

TINY = dict(backbone="MobileNetV2-0.35", weights="none", image_size=32, batch_size=8,
            epochs=1)


def _complete(ws, run_id: str) -> RunStatus:
    runs.finish_run(ws, run_id, RunStatus.COMPLETED, summary={"kind": "echo"})
    return RunStatus.COMPLETED


@pytest.fixture
def echo_kind(monkeypatch):
    monkeypatch.setitem(job_kinds._EXECUTORS, "echo", _complete)
    return "echo"


def _queue_echo(ws, dataset, seed: int, start_worker: bool = False) -> str:
    return submit_job(ws, dataset.project, dataset.id, RunSpec(**TINY, seed=seed),
                      kind="echo", start_worker=start_worker).run_id


def _until(predicate, timeout_s: float = 180.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)  # polling another thread's or process's progress
    raise AssertionError("condition not reached in time")


def test_a_waiting_worker_runs_a_job_queued_while_it_waits(workspace, tiny_dataset, echo_kind):
    first = _queue_echo(workspace, tiny_dataset, seed=1)
    queued_later: list[str] = []
    spawned: list[bool] = []

    def queue_after_the_first() -> None:
        _until(lambda: runs.get_run(workspace, first).status == RunStatus.COMPLETED)
        # The worker waits, holding the slot: a submit queues the job and spawns nobody.
        queued_later.append(_queue_echo(workspace, tiny_dataset, seed=2, start_worker=True))
        spawned.append(ensure_worker(workspace))

    helper = threading.Thread(target=queue_after_the_first)
    helper.start()
    done = worker_main(workspace, idle_s=8.0)
    helper.join()
    assert done == 2
    assert spawned == [False] and not (workspace.locks_dir / "worker.pid").exists()
    second = runs.get_run(workspace, queued_later[0])
    assert second.status == RunStatus.COMPLETED and second.worker_pid == os.getpid()
    assert not slot_busy(workspace)  # released once the idle period passed


def test_a_worker_with_nothing_to_do_warms_up_once_and_exits(workspace, tiny_dataset,
                                                             echo_kind):
    warmed: list[int] = []
    assert worker_main(workspace, idle_s=0.3, warm_up=lambda: warmed.append(1)) == 0
    assert warmed == [1] and not slot_busy(workspace)
    # With a job waiting at start, the job is what the worker does first: no warm-up.
    run_id = _queue_echo(workspace, tiny_dataset, seed=3)
    assert worker_main(workspace, idle_s=0.0, warm_up=lambda: warmed.append(2)) == 1
    assert warmed == [1] and runs.get_run(workspace, run_id).status == RunStatus.COMPLETED


def test_worker_idle_period_comes_from_the_environment(workspace, monkeypatch):
    monkeypatch.setenv("TL_WORKER_IDLE_S", "2.5")
    assert tle.jobs.worker_idle_seconds() == 2.5
    monkeypatch.setenv("TL_WORKER_IDLE_S", "soon")
    assert tle.jobs.worker_idle_seconds() == tle.jobs.DEFAULT_WORKER_IDLE_S
    # Workers that do not wait are not started ahead: one would exit at once.
    monkeypatch.setenv("TL_WORKER_IDLE_S", "0")
    assert tle.prewarm_worker(workspace) is None
    assert not slot_busy(workspace) and not (workspace.locks_dir / "worker.pid").exists()


@pytest.mark.slow
def test_a_prewarmed_worker_runs_the_jobs_that_follow_and_dies_cleanly(
        workspace, tiny_dataset, monkeypatch):
    monkeypatch.setenv("TL_WORKER_IDLE_S", "120")
    pid = tle.prewarm_worker(workspace)
    assert pid is not None
    try:
        assert tle.prewarm_worker(workspace) is None  # one is alive: nothing more starts
        spec = RunSpec(**{**TINY, "learning_rate": 0.01})
        first = tle.submit_run(workspace, "test", tiny_dataset.id, spec)
        done = tle.wait_for_run(workspace, first.run_id, timeout_s=300)
        assert done.status == "completed", done.error
        assert done.worker_pid == pid
        # The worker stays, holding the slot: the next job is its own, nobody is spawned.
        assert slot_busy(workspace)
        second = tle.submit_run(workspace, "test", tiny_dataset.id,
                                RunSpec(**{**TINY, "hidden_units": 8}))
        assert not (workspace.locks_dir / "worker.pid").exists()
        done = tle.wait_for_run(workspace, second.run_id, timeout_s=300)
        assert done.status == "completed", done.error
        assert done.worker_pid == pid
        assert "Traceback" not in (workspace.logs_dir / "worker.log").read_text()
    finally:
        kill_worker(pid)
    # Killed while waiting: nothing was running, so nothing is interrupted or left running.
    assert tle.recover_interrupted(workspace) == []
    assert not [r for r in runs.list_runs(workspace) if r.status == "running"]
    assert not slot_busy(workspace)


@pytest.mark.slow
def test_a_spawned_worker_exits_after_its_idle_period(workspace, monkeypatch):
    monkeypatch.setenv("TL_WORKER_IDLE_S", "1")
    pid = tle.prewarm_worker(workspace)
    assert pid is not None
    try:
        # It warms up (TensorFlow, the default backbone), waits a second, and is gone.
        _until(lambda: not process_alive(pid), timeout_s=300)
    finally:
        if process_alive(pid):
            kill_worker(pid)
    assert not slot_busy(workspace)
    assert "Traceback" not in (workspace.logs_dir / "worker.log").read_text()


@pytest.mark.slow
def test_a_fine_tuned_run_does_not_leak_into_a_later_run_of_the_same_process(
        workspace, tiny_dataset, tiny_data_dir, tmp_path, keras_home):
    """Partial fine-tuning, then a frozen run, in this process (the starting weights are
    cached after the first); the frozen run equals one trained in a fresh process."""
    common = dict(backbone="MobileNetV2-0.35", weights="imagenet", image_size=32,
                  batch_size=8, learning_rate=0.01)
    tuned = RunSpec(**common, strategy="partial", unfreeze=2, unfreeze_unit="blocks",
                    epochs=2)
    tle.submit_run(workspace, "test", tiny_dataset.id, tuned, start_worker=False)
    worker_main(workspace)
    frozen = tle.submit_run(workspace, "test", tiny_dataset.id, RunSpec(**common, epochs=2),
                            start_worker=False)
    worker_main(workspace)
    here = runs.get_run(workspace, frozen.run_id)
    assert here.status == "completed", here.error
    # Another head on the same backbone: its fingerprint is the one kept in this process.
    other = tle.submit_run(workspace, "test", tiny_dataset.id,
                           RunSpec(**common, epochs=2, hidden_units=8), start_worker=False)
    worker_main(workspace)
    assert runs.get_run(workspace, other.run_id).status == "completed"

    fresh_ws = tmp_path / "fresh-ws"
    command = [sys.executable, "-m", "tl_engine", "train", "--data", str(tiny_data_dir),
               "--project", "test", "--backbone", "MobileNetV2-0.35", "--weights", "imagenet",
               "--image-size", "32", "--epochs", "2", "--batch-size", "8",
               "--learning-rate", "0.01", "--workspace", str(fresh_ws), "--json"]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    fresh_path = json.loads(result.stdout.strip().splitlines()[-1])["model_path"]

    mine = keras.saving.load_model(runs.model_path(workspace, here.id), compile=False)
    fresh = keras.saving.load_model(fresh_path, compile=False)
    for ours, theirs in zip(mine.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(mine.predict(pixels, verbose=0),
                               fresh.predict(pixels, verbose=0), atol=1e-5)
    # What prediction checks a model against: the same in every run, computed or kept.
    fresh_print = familiarity.load_profile(Path(fresh_path).parent).fingerprint
    for run_id in (here.id, other.run_id):
        kept = familiarity.load_profile(workspace.run_dir(run_id)).fingerprint
        np.testing.assert_allclose(kept, fresh_print, rtol=1e-5, atol=1e-5)


def test_a_kept_backbone_is_reused_reset_to_its_starting_weights_and_saves_alike(
        keras_home, tmp_path):
    """A worker builds a backbone once for runs of the same backbone, weights, size and
    seed: the next run gets it back with its starting weights and its head starts exactly
    as after a new build; another seed builds anew."""
    from tl_engine.device import clear_keras_session
    from tl_engine.modeling import build_classifier

    spec = RunSpec(backbone="MobileNetV2-0.35", weights="imagenet", image_size=32,
                   seed=3).normalized()

    def build(seed: int, keep: bool, weights: str = "imagenet"):
        clear_keras_session()  # as a worker does after each job
        keras.utils.set_random_seed(seed)
        return build_classifier(dataclasses.replace(spec, weights=weights), 4, keep=keep)

    new = build(3, keep=False)
    first = build(3, keep=True)
    # A fine-tuning run changes convolution weights and BatchNormalization statistics.
    for variable in first.backbone.weights[:6]:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    first.backbone.layers[-3].trainable = True
    again = build(3, keep=True)
    assert again.backbone is first.backbone and again.feature_model is first.feature_model
    assert not any(layer.trainable for layer in again.backbone.layers)
    for name, model in (("backbone", "backbone"), ("head", "head")):
        for ours, theirs in zip(getattr(again, model).get_weights(),
                                getattr(new, model).get_weights(), strict=True):
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
    assert build(4, keep=True).backbone is not first.backbone
    # Random starting weights are drawn anew for every run: never kept.
    scratch = build(3, keep=True, weights="none")
    assert build(3, keep=True, weights="none").backbone is not scratch.backbone

    # Saved, the classifier on a reused backbone is the one a new build gives.
    path = tmp_path / "model.keras"
    again.model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in new.model.layers]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0),
                               new.model.predict(pixels, verbose=0), atol=1e-6)
