"""The job queue on a real SQLite workspace: every status change through runs.py's own
functions, jobs of several kinds in one worker, and workspaces made before jobs had a kind.
No training here: the worker runs small executors registered by the tests."""

from __future__ import annotations

import json
import sqlite3

import pytest

import tl_engine as tle
from tl_engine import job_kinds, runs
from tl_engine.errors import TLError
from tl_engine.jobs import INTERRUPTED_ERROR, interrupt_orphans, submit_job, worker_main
from tl_engine.progress import Progress
from tl_engine.runs import RunStatus
from tl_engine.spec import RunSpec
from tl_engine.store import Workspace

TINY = RunSpec(backbone="MobileNetV2-0.35", weights="none", image_size=32, batch_size=8,
               epochs=1)


def _queue(ws: Workspace, dataset, seed: int = 0, kind: str = "train") -> str:
    spec = RunSpec(**{**TINY.to_dict(), "seed": seed})
    return submit_job(ws, dataset.project, dataset.id, spec, kind=kind,
                      start_worker=False).run_id


def _run_file(ws: Workspace, run_id: str) -> dict:
    return json.loads((ws.run_dir(run_id) / runs.RUN_FILE).read_text())


def _complete(ws: Workspace, run_id: str) -> RunStatus:
    """An executor with nothing to do but end its run."""
    runs.finish_run(ws, run_id, RunStatus.COMPLETED, summary={"kind": "echo"})
    return RunStatus.COMPLETED


def _raise(ws: Workspace, run_id: str) -> RunStatus:
    raise RuntimeError("the probe had no features")


@pytest.fixture
def echo_kind(monkeypatch):
    """A job kind "echo" registered for this test only."""
    monkeypatch.setitem(job_kinds._EXECUTORS, "echo", _complete)
    return "echo"


def test_status_is_a_string_enum_stored_as_its_plain_value(workspace, tiny_dataset):
    run_id = _queue(workspace, tiny_dataset)
    run = runs.get_run(workspace, run_id)
    assert run.status is RunStatus.QUEUED and run.status == "queued"
    assert run.kind == "train" and run.to_dict()["kind"] == "train"
    row = workspace.query("SELECT status, typeof(status) AS t FROM runs WHERE id = ?",
                          (run_id,))[0]
    assert (row["status"], row["t"]) == ("queued", "text")
    assert json.dumps(run.to_dict()["status"]) == '"queued"'
    assert _run_file(workspace, run_id)["status"] == "queued"
    assert tle.RunStatus is RunStatus


def test_cancel_a_queued_run_ends_it_at_once(workspace, tiny_dataset):
    run_id = _queue(workspace, tiny_dataset)
    assert runs.request_cancel(workspace, run_id) is RunStatus.CANCELLED
    run = runs.get_run(workspace, run_id)
    assert run.status == "cancelled" and run.finished_at is not None
    assert not run.cancel_requested
    assert _run_file(workspace, run_id)["status"] == "cancelled"
    # A finished run is left as it is.
    assert tle.cancel_run(workspace, run_id) == "cancelled"


def test_cancel_a_running_run_asks_its_worker(workspace, tiny_dataset):
    run_id = _queue(workspace, tiny_dataset)
    assert runs.claim_next_run(workspace, worker_pid=4242) == run_id
    claimed = runs.get_run(workspace, run_id)
    assert claimed.status == "running" and claimed.worker_pid == 4242
    assert claimed.started_at is not None and _run_file(workspace, run_id)["status"] == "running"

    assert runs.request_cancel(workspace, run_id) is RunStatus.RUNNING
    run = runs.get_run(workspace, run_id)
    assert run.status == "running" and run.cancel_requested and run.finished_at is None
    assert runs.heartbeat(workspace, run_id, tle.Progress(phase="head"))  # the worker reads it
    runs.finish_run(workspace, run_id, RunStatus.CANCELLED)
    assert runs.get_run(workspace, run_id).status == "cancelled"


def test_claim_takes_the_oldest_queued_run(workspace, tiny_dataset):
    first, second = _queue(workspace, tiny_dataset, seed=1), _queue(workspace, tiny_dataset, 2)
    assert runs.claim_next_run(workspace) == first
    assert runs.claim_next_run(workspace) == second
    assert runs.claim_next_run(workspace) is None


def test_a_running_run_without_a_worker_is_interrupted_and_requeued(workspace, tiny_dataset):
    run_id = _queue(workspace, tiny_dataset)
    runs.claim_next_run(workspace, worker_pid=4242)  # a worker that then died
    runs.heartbeat(workspace, run_id,
                   Progress(phase="head", epoch=3, epochs=12, logs={"loss": 1.7}))
    runs.request_cancel(workspace, run_id)
    assert interrupt_orphans(workspace) == [run_id]  # nobody holds the training slot
    run = runs.get_run(workspace, run_id)
    assert run.status == "interrupted" and run.error == INTERRUPTED_ERROR
    assert run.finished_at is not None
    assert _run_file(workspace, run_id)["status"] == "interrupted"

    runs.requeue_run(workspace, run_id)
    run = runs.get_run(workspace, run_id)
    assert run.status == "queued" and run.error is None and run.finished_at is None
    assert not run.cancel_requested
    # The stopped attempt's epoch, loss and ETA are not shown as the resumed one's.
    assert run.progress == Progress()
    assert _run_file(workspace, run_id)["status"] == "queued"
    assert runs.queue_position(workspace, run_id) == 1


@pytest.mark.parametrize("status", ["queued", "running", "completed"])
def test_only_a_stopped_run_is_requeued(workspace, tiny_dataset, status):
    run_id = _queue(workspace, tiny_dataset)
    if status != "queued":
        runs.claim_next_run(workspace)
    if status == "completed":
        runs.finish_run(workspace, run_id, RunStatus.COMPLETED, summary={})
    with pytest.raises(TLError, match=f"is {status}: only a stopped run can be resumed"):
        runs.requeue_run(workspace, run_id)
    assert runs.get_run(workspace, run_id).status == status


def test_finishing_sets_end_states_only(workspace, tiny_dataset):
    run_id = _queue(workspace, tiny_dataset)
    runs.claim_next_run(workspace)
    with pytest.raises(ValueError):
        runs.finish_run(workspace, run_id, RunStatus.INTERRUPTED)
    runs.finish_run(workspace, run_id, RunStatus.FAILED, error="ValueError: bad")
    run = runs.get_run(workspace, run_id)
    assert (run.status, run.error) == ("failed", "ValueError: bad")
    assert _run_file(workspace, run_id)["error"] == "ValueError: bad"


def test_jobs_of_another_kind_share_the_queue_but_not_the_cache(workspace, tiny_dataset,
                                                                echo_kind):
    train_id = _queue(workspace, tiny_dataset)
    echo = submit_job(workspace, "test", tiny_dataset.id, TINY, kind=echo_kind,
                      start_worker=False)
    assert echo.run_id != train_id and not echo.cached and echo.status == "queued"
    assert runs.get_run(workspace, echo.run_id).kind == "echo"
    assert _run_file(workspace, echo.run_id)["kind"] == "echo"
    assert runs.queue_position(workspace, echo.run_id) == 2
    again = submit_job(workspace, "test", tiny_dataset.id, TINY, kind=echo_kind,
                       start_worker=False)
    assert again.run_id == echo.run_id
    with pytest.raises(TLError, match="no job kind 'nonsense'"):
        submit_job(workspace, "test", tiny_dataset.id, TINY, kind="nonsense",
                   start_worker=False)


def test_a_job_of_an_unknown_kind_fails_and_the_worker_goes_on(workspace, tiny_dataset,
                                                               monkeypatch, echo_kind):
    # Queued by an app that knew the kind "retired"; this worker does not.
    monkeypatch.setitem(job_kinds._EXECUTORS, "retired", _complete)
    retired = submit_job(workspace, "test", tiny_dataset.id, TINY, kind="retired",
                         start_worker=False).run_id
    monkeypatch.delitem(job_kinds._EXECUTORS, "retired")
    monkeypatch.setitem(job_kinds._EXECUTORS, "broken", _raise)
    broken = submit_job(workspace, "test", tiny_dataset.id, TINY, kind="broken",
                        start_worker=False).run_id
    echo = submit_job(workspace, "test", tiny_dataset.id, TINY, kind=echo_kind,
                      start_worker=False).run_id

    assert worker_main(workspace) == 3
    failed = runs.get_run(workspace, retired)
    assert failed.status == "failed" and failed.finished_at is not None
    assert "cannot run a job of kind 'retired'" in failed.error
    crashed = runs.get_run(workspace, broken)
    assert crashed.status == "failed"
    assert crashed.error == "RuntimeError: the probe had no features"
    assert "the probe had no features" in (workspace.run_dir(broken) / "error.log").read_text()
    done = runs.get_run(workspace, echo)
    assert done.status == "completed" and done.summary == {"kind": "echo"}
    assert done.progress == tle.Progress(phase="done", fraction=1.0)
    assert json.loads(workspace.query("SELECT progress_json FROM runs WHERE id = ?", (echo,))[0][
        "progress_json"]) == {"phase": "done", "fraction": 1.0}


def test_a_workspace_from_before_job_kinds_opens_and_keeps_working(workspace, tiny_dataset):
    old_id = _queue(workspace, tiny_dataset, seed=1)
    db = sqlite3.connect(workspace.db_path)
    db.execute("ALTER TABLE runs DROP COLUMN kind")  # the runs table as it was made then
    db.commit()
    db.close()

    ws = Workspace(workspace.root)
    columns = {row["name"] for row in ws.query("PRAGMA table_info(runs)")}
    assert "kind" in columns
    run = runs.get_run(ws, old_id)
    assert run.kind == "train" and run.status == "queued"
    new_id = _queue(ws, tiny_dataset, seed=2)
    assert [r.id for r in runs.list_runs(ws)] == [new_id, old_id]
    assert runs.request_cancel(ws, old_id) == "cancelled"
    # Opening it again adds nothing twice.
    assert {row["name"] for row in Workspace(ws.root).query("PRAGMA table_info(runs)")} == \
        columns


def test_deleting_a_dataset_takes_its_finished_analyses_but_not_its_models(
        workspace, tiny_dataset, echo_kind):
    from tl_engine.datasets import delete_dataset
    from tl_engine.errors import DatasetError
    from tl_engine.jobs import worker_main

    echo = submit_job(workspace, "test", tiny_dataset.id, TINY, kind=echo_kind,
                      start_worker=False).run_id
    with pytest.raises(DatasetError, match=echo):  # still queued: the dataset stays
        delete_dataset(workspace, tiny_dataset.id)
    while runs.get_run(workspace, echo).status != RunStatus.COMPLETED:
        worker_main(workspace)
    workspace.run_dir(echo).mkdir(parents=True, exist_ok=True)
    delete_dataset(workspace, tiny_dataset.id)
    assert not workspace.query("SELECT id FROM runs WHERE id = ?", (echo,))
    assert not workspace.run_dir(echo).exists()


def test_a_resumed_runs_earlier_time_is_counted_once(workspace, tiny_dataset):
    """Killed after 30 s of training, resumed, cancelled while it waits, resumed again:
    its earlier attempts trained 30 s, not 30 s plus the wait."""
    run_id = submit_job(workspace, "test", tiny_dataset.id, TINY, start_worker=False).run_id
    assert runs.claim_next_run(workspace) == run_id
    started = runs.get_run(workspace, run_id).started_at
    with workspace.transaction() as db:  # its worker's last sign of life, 30 s in
        db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (started + 30, run_id))
    assert runs.mark_interrupted(workspace) == [run_id]
    assert runs.trained_so_far(workspace, runs.get_run(workspace, run_id)).seconds == \
        pytest.approx(30)
    runs.requeue_run(workspace, run_id)
    waiting = runs.get_run(workspace, run_id)
    assert waiting.earlier_seconds == pytest.approx(30) and waiting.started_at is None
    assert runs.request_cancel(workspace, run_id) == RunStatus.CANCELLED
    cancelled = runs.get_run(workspace, run_id)
    assert runs.trained_so_far(workspace, cancelled).seconds == pytest.approx(30)
    runs.requeue_run(workspace, run_id)
    assert runs.get_run(workspace, run_id).earlier_seconds == pytest.approx(30)
