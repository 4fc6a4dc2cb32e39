"""Faults a shared server meets: a worker killed mid-run is noticed by whoever reads the
run, and is reaped, not left as a <defunct> child."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import tl_engine as tle

pytestmark = pytest.mark.slow

LONG_TINY = {"backbone": "MobileNetV2-0.35", "weights": "none", "image_size": 32,
             "batch_size": 4, "learning_rate": 0.01, "epochs": 500}


def _process_state(pid: int) -> str | None:
    """The kernel's state letter for pid (Z: exited, not yet reaped), None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[0]


def _running_with_progress(ws: tle.Workspace, run_id: str, timeout_s: float) -> tle.RunRecord:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = tle.get_run(ws, run_id)
        if run.status == "running" and (run.progress.epoch or 0) >= 1:
            return run
        assert run.is_active, run.error
        time.sleep(0.2)  # polling a separate process's progress in the store
    raise AssertionError(f"run {run_id} did not start training within {timeout_s} s")


@pytest.mark.fault
def test_a_killed_worker_is_noticed_by_a_reader_and_reaped(workspace, tiny_dataset):
    ws = workspace
    run_id = tle.submit_run(ws, "test", tiny_dataset.id, tle.RunSpec(**LONG_TINY)).run_id
    run = _running_with_progress(ws, run_id, timeout_s=180)
    pid = run.worker_pid
    os.kill(pid, signal.SIGKILL)

    killed_at = time.monotonic()
    # A reader waiting for the run learns within seconds that nobody trains it any more.
    stopped = tle.wait_for_run(ws, run_id, timeout_s=10)
    assert stopped.status == "interrupted"
    assert time.monotonic() - killed_at < 10
    assert "resume" in stopped.error.lower()

    # The process that spawned the worker (this one) reaped it: no zombie is left.
    deadline = time.monotonic() + 10
    while _process_state(pid) == "Z" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _process_state(pid) in (None,), f"worker {pid} left as state {_process_state(pid)}"

    # And it can be resumed from where it was.
    resumed = tle.resume_run(ws, run_id)
    assert resumed.status == "queued"
    tle.cancel_run(ws, run_id)
    assert tle.wait_for_run(ws, run_id, timeout_s=180).status in ("cancelled", "interrupted")


@pytest.mark.fault
def test_auto_resume_queues_an_interrupted_run_once(workspace, tiny_dataset, monkeypatch):
    ws = workspace
    monkeypatch.setenv("TL_AUTO_RESUME", "1")
    run_id = tle.submit_run(ws, "test", tiny_dataset.id, tle.RunSpec(**LONG_TINY)).run_id
    first = _running_with_progress(ws, run_id, timeout_s=180)
    os.kill(first.worker_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while tle.get_run(ws, run_id).worker_pid == first.worker_pid and (
            tle.get_run(ws, run_id).status == "running") and time.monotonic() < deadline:
        tle.recover_interrupted(ws)  # what any reader does
        time.sleep(0.2)
    # Interrupted, then queued again by itself, then picked up by a new worker.
    second = _running_with_progress(ws, run_id, timeout_s=180)
    assert second.worker_pid != first.worker_pid
    os.kill(second.worker_pid, signal.SIGKILL)
    # Only once: the second death leaves it interrupted for a person to decide.
    assert tle.wait_for_run(ws, run_id, timeout_s=10).status == "interrupted"


@pytest.mark.fault
def test_a_frozen_worker_is_reported_stalled_instead_of_waited_for(workspace, tiny_dataset,
                                                                   monkeypatch):
    """A worker that still holds the slot but is stopped (SIGSTOP: as frozen as a swapping
    or paused process): whoever waits for its run stops waiting and says what to do."""
    ws = workspace
    monkeypatch.setenv("TL_STALLED_AFTER_S", "3")  # inherited by the worker it spawns
    run_id = tle.submit_run(ws, "test", tiny_dataset.id, tle.RunSpec(**LONG_TINY)).run_id
    pid = _running_with_progress(ws, run_id, timeout_s=180).worker_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        with pytest.raises(tle.RunStalled) as stalled:
            tle.wait_for_run(ws, run_id, poll_s=0.1, timeout_s=60)
        assert time.monotonic() - stopped_at < 30
        assert f"its worker (process {pid}) seems frozen" in str(stalled.value)
        assert f"`kill -9 {pid}` (then `kill -CONT {pid}` if it was stopped)" in str(
            stalled.value)
        assert tle.get_run(ws, run_id).status == "running"  # nothing changed behind it
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)  # a stopped process's threads only end once woken
    deadline = time.monotonic() + 30
    while _process_state(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel ends the process, this one reaps it
    # Killed as the message says: the run is interrupted, ready to resume.
    assert tle.wait_for_run(ws, run_id, timeout_s=10).status == "interrupted"


def test_a_job_that_reports_nothing_for_a_while_still_shows_a_live_worker(
        workspace, tiny_dataset, monkeypatch):
    """The worker's heartbeat thread: a job step with no progress to report (evaluating,
    saving a large model) keeps its run's heartbeat fresh."""
    from tl_engine import job_kinds, runs
    from tl_engine.jobs import submit_job, worker_main

    monkeypatch.setenv("TL_STALLED_AFTER_S", "1")  # a beat every 0.1 s
    seen: list[float | None] = []

    def quiet_job(ws: tle.Workspace, run_id: str) -> runs.RunStatus:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            time.sleep(0.05)  # the job's own work: it reports no progress meanwhile
        run = tle.get_run(ws, run_id)
        seen.append(run.silent_for())
        seen.append(time.time() - run.heartbeat_at)
        runs.finish_run(ws, run_id, runs.RunStatus.COMPLETED, summary={"kind": "quiet"})
        return runs.RunStatus.COMPLETED

    monkeypatch.setitem(job_kinds._EXECUTORS, "quiet", quiet_job)
    run_id = submit_job(workspace, "test", tiny_dataset.id, tle.RunSpec(**LONG_TINY),
                        kind="quiet", start_worker=False).run_id
    assert worker_main(workspace) == 1
    assert tle.get_run(workspace, run_id).status == "completed"
    silent, since_beat = seen
    assert silent is None and since_beat < 0.5
