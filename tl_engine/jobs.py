"""Jobs: runs queue in the store and train in a worker process, never in the caller.

One training slot per host (a job uses every visible GPU through MirroredStrategy): the
worker that holds the slot's file lock trains queued runs one after another, oldest
first, and exits when the queue is empty. The lock is released by the OS when a worker
dies, so a run still marked "running" while nobody holds the lock was interrupted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import runs
from .datasets import load_dataset
from .errors import TLError
from .registry import get_backbone
from .runs import RunRecord
from .spec import RunSpec, cache_key, canonical_json
from .store import Workspace
from .weights import require_imagenet, weights_identity

SLOT_LOCK = "training-slot.lock"
WORKER_STARTUP_GRACE_S = 120.0
WORKER_NICENESS = 10
AUTO_RESUMED_MARKER = "auto-resumed"
INTERRUPTED_ERROR = "The worker process stopped before the run finished; resume it."


@dataclass(frozen=True)
class Submission:
    run_id: str
    cached: bool
    status: str


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
    if ws.read_only or not ws.query("SELECT 1 FROM runs WHERE status = 'running' LIMIT 1"):
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
    """Mark 'running' runs interrupted when no worker holds the training slot; their ids."""
    with _slot(ws) as held:
        return _mark_orphans_interrupted(ws) if held else []


def _mark_orphans_interrupted(ws: Workspace) -> list[str]:
    """Only call with the slot held: then every 'running' run belongs to a dead worker."""
    with ws.transaction() as db:
        rows = db.execute("SELECT id FROM runs WHERE status = 'running'").fetchall()
        db.execute(
            "UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? "
            "WHERE status = 'running'",
            (time.time(), INTERRUPTED_ERROR),
        )
        for row in rows:
            runs.write_run_file(ws, db, row["id"])
    return [row["id"] for row in rows]


def submit_run(
    ws: Workspace,
    project: str,
    dataset_id: str,
    spec: RunSpec,
    force: bool = False,
    started_by: str | None = None,
    start_worker: bool = True,
) -> Submission:
    """Queue a run and return at once. Identical work returns the stored run (cached=True)."""
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
    with ws.transaction() as db:
        if not force:
            same = db.execute(
                "SELECT id, status FROM runs WHERE cache_key = ? AND project = ? "
                "AND status IN ('completed', 'queued', 'running') "
                "ORDER BY status = 'completed' DESC, created_at DESC LIMIT 1",
                (key, project),
            ).fetchone()
            if same:
                return Submission(same["id"], same["status"] == "completed", same["status"])
        run_id = "r" + uuid.uuid4().hex[:10]
        db.execute(
            "INSERT INTO runs (id, project, dataset_id, spec_json, cache_key, status, "
            "started_by, created_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
            (run_id, project, dataset_id, canonical_json(spec.to_dict()), key, started_by,
             time.time()),
        )
        runs.write_run_file(ws, db, run_id)
    if start_worker:
        ensure_worker(ws)
    return Submission(run_id, False, "queued")


def cancel_run(ws: Workspace, run_id: str) -> str:
    """Queued runs are cancelled at once; a running one stops within a batch or two."""
    runs.get_run(ws, run_id)  # a clear NotFound for a wrong id
    with ws.transaction() as db:  # read and change in one step: the worker may claim it now
        db.execute(
            "UPDATE runs SET status = 'cancelled', finished_at = ? "
            "WHERE id = ? AND status = 'queued'",
            (time.time(), run_id),
        )
        db.execute(
            "UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
            (run_id,),
        )
        runs.write_run_file(ws, db, run_id)
    return runs.get_run(ws, run_id).status


def resume_run(ws: Workspace, run_id: str, start_worker: bool = True) -> Submission:
    """Queue an interrupted (or failed, or cancelled) run again; it continues from its
    last checkpoint where one exists."""
    recover_interrupted(ws)
    run = runs.get_run(ws, run_id)
    if run.status not in ("interrupted", "failed", "cancelled"):
        raise TLError(f"Run {run_id} is {run.status}: only a stopped run can be resumed.")
    runs.update_run(ws, run_id, status="queued", error=None, finished_at=None,
                    cancel_requested=0, created_at=time.time())
    if start_worker:
        ensure_worker(ws)
    return Submission(run_id, False, "queued")


def ensure_worker(ws: Workspace) -> bool:
    """Start a worker when runs are queued and no worker holds the slot."""
    recover_interrupted(ws)
    if not ws.query("SELECT 1 FROM runs WHERE status = 'queued' LIMIT 1"):
        return False
    if slot_busy(ws) or _spawned_worker_alive(ws):
        return False
    spawn_worker(ws)
    return True


def _spawned_worker_alive(ws: Workspace) -> bool:
    """A worker we started may still be importing TensorFlow before it takes the slot."""
    pid_file = ws.locks_dir / "worker.pid"
    try:
        pid = int(pid_file.read_text())
        if time.time() - pid_file.stat().st_mtime > WORKER_STARTUP_GRACE_S:
            return False  # a stale file (say, from before a restart): the pid means nothing
    except (OSError, ValueError):
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child and has exited
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def spawn_worker(ws: Workspace) -> int:
    """A detached process: closing the browser tab or restarting the app does not stop it."""
    log = open(ws.logs_dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child
    env = dict(os.environ, TL_WORKSPACE=str(ws.root), PYTHONUNBUFFERED="1")
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


def _claim_next(ws: Workspace) -> str | None:
    with ws.transaction() as db:
        row = db.execute(
            "SELECT id FROM runs WHERE status = 'queued' ORDER BY created_at LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        db.execute(
            "UPDATE runs SET status = 'running', started_at = ?, heartbeat_at = ?, "
            "worker_pid = ?, cancel_requested = 0 WHERE id = ?",
            (time.time(), time.time(), os.getpid(), row["id"]),
        )
        runs.write_run_file(ws, db, row["id"])
        return row["id"]


def worker_main(ws: Workspace) -> int:
    """Train queued runs until none is left. Returns how many it trained."""
    from .training import execute_run

    trained = 0
    while True:
        with _slot(ws, wait_s=5.0) as held:
            if not held:
                return trained
            _forget_spawn_record(ws)
            _mark_orphans_interrupted(ws)
            while (run_id := _claim_next(ws)) is not None:
                execute_run(ws, run_id)
                trained += 1
        # A run queued just as we released the slot might have found it busy: look again.
        if not ws.query("SELECT 1 FROM runs WHERE status = 'queued' LIMIT 1"):
            return trained


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
    """Block until the run leaves queued/running (polling the store)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        run = runs.get_run(ws, run_id)
        if on_update:
            on_update(run)
        if not run.is_active:
            return run
        if run.status == "queued":
            ensure_worker(ws)  # cheap when a worker already holds the slot
        elif recover_interrupted(ws):
            continue  # its worker died: read the run again, now interrupted
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"Run {run_id} still {run.status} after {timeout_s} s.")
        time.sleep(poll_s)
