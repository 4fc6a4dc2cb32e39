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
