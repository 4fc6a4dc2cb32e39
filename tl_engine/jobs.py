"""Jobs: runs queue in the store and run in a worker process, never in the caller.

One training slot per host (a job uses every visible GPU through MirroredStrategy): the
worker that holds the slot's file lock runs queued jobs one after another, oldest
first. When the queue is empty a spawned worker stays a while ($TL_WORKER_IDLE_S,
holding the slot, polling the queue), so the next job skips importing TensorFlow and
loading weights; then it exits. The lock is released by the OS when a worker dies, so a
run still marked running while nobody holds the lock was interrupted.

A job has a kind (train, ...); the worker hands it to that kind's executor
(job_kinds.py). The status changes themselves are runs.py's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import runs
from .datasets import load_dataset
from .device import reset_precision
from .errors import TLError
from .job_kinds import executor_for, list_job_kinds
from .processes import process_alive
from .registry import get_backbone
from .runs import DEFAULT_KIND, RunRecord, RunStatus
from .runs import INTERRUPTED_ERROR as INTERRUPTED_ERROR  # importable from here, as before
from .spec import RunSpec, cache_key
from .store import Workspace
from .weights import require_imagenet, weights_identity

SLOT_LOCK = "training-slot.lock"
WORKER_STARTUP_GRACE_S = 120.0
WORKER_NICENESS = 10
AUTO_RESUMED_MARKER = "auto-resumed"
WORKER_IDLE_ENV = "TL_WORKER_IDLE_S"
DEFAULT_WORKER_IDLE_S = 120.0
# One tiny query per poll: a job queued for a waiting worker starts within this. The
# seconds after a job are polled more often: the next job (a tweaked setting, a sweep's
# next run) most often comes then, and a run on cached features takes a second.
WORKER_POLL_S = 0.1
QUICK_POLL_S = 0.02
QUICK_FOR_S = 5.0


class RunStalled(TLError):
    """The run's worker holds the slot but has given no sign of life for minutes."""


@dataclass(frozen=True)
class Submission:
    run_id: str
    cached: bool
    status: RunStatus


def _slot_path(ws: Workspace) -> Path:
    return ws.locks_dir / SLOT_LOCK


@contextlib.contextmanager
def _slot(ws: Workspace, wait_s: float = 0.0) -> Iterator[bool]:
    """Hold the training slot (yields True) or learn that somebody else does (False)."""
    handle = open(_slot_path(ws), "a+")  # noqa: SIM115 - held for the whole block
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.2)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def slot_busy(ws: Workspace) -> bool:
    with _slot(ws) as held:
        return not held


def recover_interrupted(ws: Workspace) -> list[str]:
    """Mark runs whose worker died as interrupted (they can be resumed). Cheap: any reader
    of a running run calls it, so a killed worker is noticed within one poll.

    With TL_AUTO_RESUME=1 each such run is queued again once, automatically. A read-only
    workspace is only read: nothing can be marked there."""
    if ws.read_only or not _any_with_status(ws, RunStatus.RUNNING):
        return []
    interrupted = interrupt_orphans(ws)
    if interrupted and os.environ.get("TL_AUTO_RESUME") == "1":
        for run_id in interrupted:
            marker = ws.run_dir(run_id) / AUTO_RESUMED_MARKER
            if not marker.exists():
                ws.write_bytes_atomic(marker, str(time.time()).encode())
                resume_run(ws, run_id)
    return interrupted


def interrupt_orphans(ws: Workspace) -> list[str]:
    """Mark running runs interrupted when no worker holds the training slot; their ids."""
    with _slot(ws) as held:
        return runs.mark_interrupted(ws) if held else []


def _any_with_status(ws: Workspace, status: RunStatus) -> bool:
    return bool(ws.query("SELECT 1 FROM runs WHERE status = ? LIMIT 1", (status,)))


def submit_run(
    ws: Workspace,
    project: str,
    dataset_id: str,
    spec: RunSpec,
    force: bool = False,
    started_by: str | None = None,
    start_worker: bool = True,
) -> Submission:
    """Queue a training run and return at once. Identical work returns the stored run
    (cached=True)."""
    return submit_job(ws, project, dataset_id, spec, kind=DEFAULT_KIND, force=force,
                      started_by=started_by, start_worker=start_worker)


def submit_job(
    ws: Workspace,
    project: str,
    dataset_id: str,
    spec: RunSpec,
    kind: str = DEFAULT_KIND,
    force: bool = False,
    started_by: str | None = None,
    start_worker: bool = True,
) -> Submission:
    """Queue a job of a registered kind (see job_kinds.py) and return at once. Identical
    work of the same kind returns the stored run (cached=True when it completed)."""
    if executor_for(kind) is None:
        raise TLError(f"There is no job kind {kind!r}: the kinds are "
                      f"{', '.join(list_job_kinds())}.")
    spec = spec.normalized()
    dataset = load_dataset(ws, dataset_id)
    if dataset.project != project:
        raise TLError(f"Dataset {dataset_id} belongs to project {dataset.project!r}.")
    entry = get_backbone(spec.backbone)
    identity = weights_identity(entry, spec.weights, spec.seed)
    if spec.weights == "imagenet":
        require_imagenet(entry)  # fail now, in the caller, not minutes later in the worker
    key = cache_key(spec, identity, dataset.content_hash)
    recover_interrupted(ws)
    # Checked before the queue's transaction: reading a large model file must not hold
    # the index's write lock, which workers' progress writes wait on.
    damaged = {run for run in runs.completed_with_key(ws, project, key)
               if _model_damaged(ws, run)} if kind == DEFAULT_KIND and not force else set()
    run_id, status, added = runs.queue_run(
        ws, project, dataset_id, spec, key, kind=kind, started_by=started_by,
        reuse=not force, passed_over=damaged)
    if not added:  # an equal run completed or is on its way
        return Submission(run_id, status == RunStatus.COMPLETED, status)
    if start_worker:
        ensure_worker(ws)
    return Submission(run_id, False, status)


def _model_damaged(ws: Workspace, run_id: str) -> bool:
    """Whether a completed training run's model file is missing or damaged: such a run
    cannot stand in for the run asked for, which is trained again instead."""
    from .model_file import checked_model_path

    try:
        checked_model_path(ws, run_id)
    except TLError:
        return True
    return False


def cancel_run(ws: Workspace, run_id: str) -> RunStatus:
    """Queued runs are cancelled at once; a running one stops within a batch or two."""
    return runs.request_cancel(ws, run_id)


def resume_run(ws: Workspace, run_id: str, start_worker: bool = True) -> Submission:
    """Queue an interrupted (or failed, or cancelled) run again; it continues from its
    last checkpoint where one exists."""
    recover_interrupted(ws)
    run = runs.get_run(ws, run_id)
    if run.status in runs.RESUMABLE and run.kind == DEFAULT_KIND:
        _drop_epochs_to_train_again(ws, run)
    runs.requeue_run(ws, run_id)
    if start_worker:
        ensure_worker(ws)
    return Submission(run_id, False, RunStatus.QUEUED)


def _drop_epochs_to_train_again(ws: Workspace, run: RunRecord) -> None:
    """The stopped attempt's epochs of the phase that starts again from its first epoch
    (it left no backup to resume from) go now, while no worker holds the run, rather than
    when the worker reaches that phase: until then the charts would show epochs that are
    about to be trained again. The same rule as the trainer's (`RunTrainer._callbacks`)."""
    from .phases import backup_path, phases, read_resume_state

    try:
        plan = phases(run.spec)
        state = read_resume_state(ws.run_dir(run.id), plan, runs.run_metrics(ws, run.id),
                                  keep_best=run.spec.keep_weights == "best")
    except (TLError, OSError, ValueError):
        return  # the trainer meets the same problem and reports it; the charts can wait
    if state.next_index() >= len(plan):
        return
    if backup_path(ws.run_dir(run.id), plan[state.next_index()].name).exists():
        return  # the phase resumes from its backup: its epochs so far stay
    runs.clear_metrics_after(ws, run.id, state.epoch_offset())


def ensure_worker(ws: Workspace) -> bool:
    """Start a worker when runs are queued and no worker holds the slot."""
    recover_interrupted(ws)
    if not _any_with_status(ws, RunStatus.QUEUED):
        return False
    if slot_busy(ws) or _spawned_worker_alive(ws):
        return False
    spawn_worker(ws)
    return True


def worker_idle_seconds() -> float:
    """How long a spawned worker waits for the next job once the queue is empty
    ($TL_WORKER_IDLE_S, default 120 s; 0 exits at once)."""
    value = os.environ.get(WORKER_IDLE_ENV, "").strip()
    try:
        return max(0.0, float(value)) if value else DEFAULT_WORKER_IDLE_S
    except ValueError:
        return DEFAULT_WORKER_IDLE_S


def prewarm_worker(ws: Workspace) -> int | None:
    """Start a worker ahead of any job, so that TensorFlow is imported and the default
    backbone loaded while the user is still choosing settings; it then waits for a job
    as a worker does after its last one. Returns the new worker's pid, or None when none
    was started: on a read-only workspace, while a worker is alive, or when workers do not
    wait ($TL_WORKER_IDLE_S=0: a warmed worker would exit at once)."""
    if ws.read_only or worker_idle_seconds() <= 0:
        return None
    if slot_busy(ws) or _spawned_worker_alive(ws):
        return None
    return spawn_worker(ws)


def _spawned_worker_alive(ws: Workspace) -> bool:
    """A worker we started may still be importing TensorFlow before it takes the slot."""
    pid_file = ws.locks_dir / "worker.pid"
    try:
        pid = int(pid_file.read_text())
        if time.time() - pid_file.stat().st_mtime > WORKER_STARTUP_GRACE_S:
            return False  # a stale file (say, from before a restart): the pid means nothing
    except (OSError, ValueError):
        return False
    return process_alive(pid)


def spawn_worker(ws: Workspace) -> int:
    """A detached process: closing the browser tab or restarting the app does not stop it."""
    log = open(ws.logs_dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child
    env = dict(os.environ, TL_WORKSPACE=str(ws.root), PYTHONUNBUFFERED="1")
    # NumPy's BLAS threads spin against TensorFlow's for the same cores: a familiarity
    # profile took 3-17 s with two of them beside TensorFlow, 0.5 s with one.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    project_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project_root, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "tl_engine", "--workspace", str(ws.root), "worker"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=env, cwd=str(ws.root),
    )
    log.close()
    # Whoever spawned the worker reaps it when it ends, so no <defunct> process is left
    # behind a long-lived server.
    threading.Thread(target=process.wait, name=f"reap-worker-{process.pid}",
                     daemon=True).start()
    ws.write_bytes_atomic(ws.locks_dir / "worker.pid", str(process.pid).encode())
    return process.pid


def run_job(ws: Workspace, run_id: str) -> RunStatus:
    """Run one claimed job with its kind's executor, to its end state. Never raises: a job
    of a kind this worker does not know, or whose executor raised, is stored as failed."""
    kind = runs.get_run(ws, run_id).kind
    executor = executor_for(kind)
    if executor is None:
        runs.finish_run(ws, run_id, RunStatus.FAILED, error=(
            f"This worker cannot run a job of kind {kind!r}: it runs "
            f"{', '.join(list_job_kinds())}. Delete the run, or run it with the version of the "
            "app that queued it."))
        return RunStatus.FAILED
    try:
        with _signs_of_life(ws, run_id):
            return executor(ws, run_id)
    except Exception as exc:  # a failed job is a stored state, not a crashed worker
        ws.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        (ws.run_dir(run_id) / "error.log").write_text(traceback.format_exc())
        runs.finish_run(ws, run_id, RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        return RunStatus.FAILED
    finally:
        reset_precision()


@contextlib.contextmanager
def _signs_of_life(ws: Workspace, run_id: str) -> Iterator[None]:
    """The run's heartbeat, refreshed from a thread while its job runs: a step that
    reports no progress for minutes (a long evaluation, saving a large model) still shows
    a live worker, and only a frozen process falls silent (see RunRecord.silent_for)."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(runs.heartbeat_seconds()):
            with contextlib.suppress(TLError, OSError):  # the next beat tries again
                runs.touch_heartbeat(ws, run_id)

    thread = threading.Thread(target=beat, name="tl-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def worker_main(ws: Workspace, idle_s: float = 0.0,
                warm_up: Callable[[], None] | None = None) -> int:
    """Run queued jobs until none is left and none came for `idle_s` seconds. Returns how
    many it ran. `warm_up`, when given, runs once if the queue is empty when the worker
    starts (a prewarmed worker), while it holds the slot."""
    done = 0
    while True:
        with _slot(ws, wait_s=5.0) as held:
            if not held:
                return done
            _forget_spawn_record(ws)
            runs.mark_interrupted(ws)  # the slot is ours: every running run is an orphan
            if warm_up is not None and not _any_with_status(ws, RunStatus.QUEUED):
                warm_up()
            warm_up = None
            while True:
                while (run_id := runs.claim_next_run(ws)) is not None:
                    run_job(ws, run_id)
                    done += 1
                if not _job_queued_within(ws, idle_s):
                    break
        # A run queued just as we released the slot might have found it busy: look again.
        if not _any_with_status(ws, RunStatus.QUEUED):
            return done


def _job_queued_within(ws: Workspace, idle_s: float) -> bool:
    """Whether a job is queued within `idle_s` seconds. The caller holds the slot, so
    `ensure_worker` spawns nobody meanwhile and readers still see a live worker."""
    started = time.monotonic()
    deadline = started + idle_s
    while time.monotonic() < deadline:
        if _any_with_status(ws, RunStatus.QUEUED):
            return True
        time.sleep(min(_poll_seconds(started, WORKER_POLL_S),
                       max(0.0, deadline - time.monotonic())))
    return False


def _forget_spawn_record(ws: Workspace) -> None:
    """Once this worker holds the slot, the lock speaks for it; a leftover pid file would
    only stop the next spawn while this worker is already on its way out."""
    pid_file = ws.locks_dir / "worker.pid"
    with contextlib.suppress(OSError, ValueError):
        if int(pid_file.read_text()) == os.getpid():
            pid_file.unlink()


def wait_for_run(
    ws: Workspace,
    run_id: str,
    on_update: Callable[[RunRecord], None] | None = None,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> RunRecord:
    """Block until the run leaves queued/running (polling the store). Raises RunStalled
    when its worker, still alive, has been silent for runs.stalled_after_seconds()."""
    started = time.monotonic()
    deadline = None if timeout_s is None else started + timeout_s
    while True:
        run = runs.get_run(ws, run_id)
        if on_update:
            on_update(run)
        if not run.is_active:
            return run
        if run.status == RunStatus.QUEUED:
            ensure_worker(ws)  # cheap when a worker already holds the slot
        elif recover_interrupted(ws):
            continue  # its worker died: read the run again, now interrupted
        elif (silent := run.silent_for()) is not None:
            raise RunStalled(run.stalled_message(silent))
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"Run {run_id} still {run.status} after {timeout_s} s.")
        # A run served by a warm worker takes about a second.
        time.sleep(_poll_seconds(started, poll_s))


def _poll_seconds(since: float, usual_s: float) -> float:
    """The wait before the next look at the store: QUICK_POLL_S in the first
    QUICK_FOR_S seconds after `since` (monotonic), `usual_s` after."""
    if time.monotonic() - since < QUICK_FOR_S:
        return min(usual_s, QUICK_POLL_S)
    return usual_s
