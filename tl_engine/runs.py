"""Run records in the store: reading them, and the few state changes a run goes through.

A run is one job in the queue; `kind` says what the worker does with it (train, and later
probe, sweep, explain). Every change of a run's status is one function below, each one
transaction that checks the status it starts from, so the worker, the pages and the CLI
can race without a run ever taking a step its status does not allow:

    queued --claim_next_run--> running --finish_run--> completed | failed | cancelled
    queued --request_cancel--> cancelled      running --request_cancel--> (cancel asked)
    running --mark_interrupted--> interrupted (its worker died)
    interrupted | failed | cancelled --requeue_run--> queued
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import NotFound, RunNotReady, TLError
from .processes import process_alive
from .progress import DONE, Progress
from .spec import RunSpec, canonical_json
from .store import Workspace
from .summary import RunSummary

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
RUN_FILE_FORMAT = 1
# The runs columns a run folder keeps in run.json: enough to rebuild its index row.
RUN_FILE_FIELDS = ("id", "project", "dataset_id", "kind", "cache_key", "status",
                   "started_by", "created_at", "started_at", "finished_at", "error",
                   "earlier_seconds")
DEFAULT_KIND = "train"
INTERRUPTED_ERROR = "The worker process stopped before the run finished; resume it."


class RunStatus(enum.StrEnum):
    """Where a run is. A `str`: stored in SQLite and JSON as its plain value, and equal to it."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)
FINISHED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INTERRUPTED)
STATUSES = ACTIVE + FINISHED
# Where a worker's own end of a run may leave it; interrupted is set only for dead workers.
END_STATES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
RESUMABLE = (RunStatus.INTERRUPTED, RunStatus.FAILED, RunStatus.CANCELLED)


# No heartbeat for this long ($TL_STALLED_AFTER_S) from a worker that still holds the slot:
# its process is frozen (stopped, swapping, its machine paused). Whoever waits for the run
# stops waiting. While a job runs, its worker refreshes the heartbeat every tenth of that
# (at most 30 s), whatever the job is doing (see jobs.run_job).
STALLED_AFTER_ENV = "TL_STALLED_AFTER_S"
DEFAULT_STALLED_AFTER_S = 300.0


def stalled_after_seconds() -> float:
    try:
        value = float(os.environ.get(STALLED_AFTER_ENV, DEFAULT_STALLED_AFTER_S))
    except ValueError:
        return DEFAULT_STALLED_AFTER_S
    return value if value > 0 else DEFAULT_STALLED_AFTER_S


def heartbeat_seconds() -> float:
    return min(30.0, stalled_after_seconds() / 10)


@dataclass(frozen=True)
class RunRecord:
    id: str
    project: str
    dataset_id: str
    spec: RunSpec
    cache_key: str
    status: RunStatus
    started_by: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None
    worker_pid: int | None
    progress: Progress = field(default_factory=Progress)
    # The summary as its job stored it, a JSON object: every kind of job writes its own.
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    cancel_requested: bool = False
    kind: str = DEFAULT_KIND
    earlier_seconds: float = 0.0  # what its attempts before a resume trained

    @property
    def result(self) -> RunSummary:
        """The summary as a training run's result; empty (all None) until the run has one."""
        return RunSummary.from_dict(self.summary)

    @property
    def val_accuracy(self) -> float | None:
        return self.result.val_accuracy

    @property
    def epochs_run(self) -> int:
        return int(self.result.epochs_run or 0)

    @property
    def seconds(self) -> float | None:
        return self.result.seconds

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE

    def silent_for(self, now: float | None = None) -> float | None:
        """Seconds since a running run's last heartbeat when that is stalled_after_seconds()
        or more and its worker is still alive (frozen), else None. A worker that died is
        not frozen: whoever takes the slot next marks its run interrupted."""
        if self.status != RunStatus.RUNNING or self.heartbeat_at is None:
            return None
        silent = (time.time() if now is None else now) - self.heartbeat_at
        if silent < stalled_after_seconds():
            return None
        return silent if self.worker_pid is None or process_alive(self.worker_pid) else None

    def stalled_message(self, silent_s: float) -> str:
        worker = f"its worker (process {self.worker_pid})" if self.worker_pid else "its worker"
        stop = (f"end it with `kill -9 {self.worker_pid}` (then `kill -CONT {self.worker_pid}` "
                "if it was stopped)") if self.worker_pid else "end the worker process"
        return (f"Run {self.id} has shown no sign of life for {format_silence(silent_s)}: {worker} "
                f"seems frozen (stopped, or out of memory and swapping). It is still running "
                f"as far as anyone can tell: {stop}, and the run becomes interrupted, ready to "
                "resume.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.id,
            "project": self.project,
            "dataset_id": self.dataset_id,
            "kind": self.kind,
            "status": self.status,
            "spec": self.spec.to_dict(),
            "started_by": self.started_by,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": self.progress.to_dict(),
            "summary": self.summary,
            "error": self.error,
        }


def _record(ws: Workspace, row: Any) -> RunRecord:
    summary = json.loads(row["summary_json"] or "{}")
    if summary.get("model_path"):  # where it is now: the workspace may have moved since
        summary["model_path"] = str(ws.run_dir(row["id"]) / Path(summary["model_path"]).name)
    return RunRecord(
        id=row["id"],
        project=row["project"],
        dataset_id=row["dataset_id"],
        spec=RunSpec.from_dict(json.loads(row["spec_json"])),
        cache_key=row["cache_key"],
        status=RunStatus(row["status"]),
        started_by=row["started_by"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        heartbeat_at=row["heartbeat_at"],
        worker_pid=row["worker_pid"],
        progress=Progress.from_dict(json.loads(row["progress_json"] or "{}")),
        summary=summary,
        error=row["error"],
        cancel_requested=bool(row["cancel_requested"]),
        # A read-only workspace's index may predate the column; its runs all trained.
        kind=row["kind"] if "kind" in row.keys() else DEFAULT_KIND,
        earlier_seconds=float(row["earlier_seconds"] or 0.0)
        if "earlier_seconds" in row.keys() else 0.0,
    )


def get_run(ws: Workspace, run_id: str) -> RunRecord:
    rows = ws.query("SELECT * FROM runs WHERE id = ?", (run_id,))
    if not rows:
        raise NotFound(f"Run {run_id!r} is not in workspace {ws.root}: list runs with `runs`.")
    return _record(ws, rows[0])


def list_runs(ws: Workspace, project: str | None = None,
              kind: str | None = DEFAULT_KIND) -> list[RunRecord]:
    """Runs newest first; training runs unless `kind` names another (None: every kind).
    Pages list models to compare and predict with: other jobs (label issues, ...) are not."""
    if project is None:
        rows = ws.query("SELECT * FROM runs ORDER BY created_at DESC")
    else:
        rows = ws.query("SELECT * FROM runs WHERE project = ? ORDER BY created_at DESC", (project,))
    # Filtered here, not in SQL: a read-only workspace's index may lack the kind column.
    return [r for r in (_record(ws, row) for row in rows) if kind is None or r.kind == kind]


def run_metrics(ws: Workspace, run_id: str) -> list[dict[str, Any]]:
    """Per-epoch metrics, oldest first: epoch, phase and Keras's logs for that epoch."""
    rows = ws.query(
        "SELECT epoch, phase, values_json FROM metrics WHERE run_id = ? ORDER BY epoch",
        (run_id,),
    )
    return [
        {"epoch": r["epoch"], "phase": r["phase"], **json.loads(r["values_json"])} for r in rows
    ]


@dataclass(frozen=True)
class TrainedSoFar:
    """How far a run without a result (cancelled, interrupted, failed, running) got."""

    epochs: int | None  # the last epoch with metrics
    last_val_accuracy: float | None
    seconds: float | None  # its attempts so far, the current one until its last sign of life


def trained_so_far(ws: Workspace, run: RunRecord) -> TrainedSoFar:
    metrics = run_metrics(ws, run.id)
    epochs = max((m["epoch"] for m in metrics), default=None)
    last_val = next((m["val_accuracy"] for m in reversed(metrics)
                     if m.get("val_accuracy") is not None), None)
    attempt = attempt_seconds(run.status, run.started_at, run.heartbeat_at,
                              run.finished_at)
    if attempt is None:  # queued again after it ran
        return TrainedSoFar(epochs, last_val, run.earlier_seconds or None)
    return TrainedSoFar(epochs, last_val, run.earlier_seconds + attempt)


def attempt_seconds(status: str, started_at: float | None, heartbeat_at: float | None,
                    finished_at: float | None) -> float | None:
    """How long a run's latest attempt trained; None when it has not started one."""
    if status == RunStatus.INTERRUPTED:
        # Its end is when the dead worker was noticed, maybe hours later: its last sign
        # of life is when it stopped.
        end = heartbeat_at or finished_at
    elif status == RunStatus.QUEUED:
        return None
    else:
        end = finished_at or heartbeat_at or time.time()
    if started_at is None or end is None or end < started_at:
        return None
    return end - started_at


def queue_position(ws: Workspace, run_id: str) -> int | None:
    """1 when the run is next in line, None when it is not queued."""
    run = get_run(ws, run_id)
    if run.status != RunStatus.QUEUED:
        return None
    ahead = ws.query(
        "SELECT COUNT(*) AS n FROM runs WHERE status = ? AND created_at < ?",
        (RunStatus.QUEUED, run.created_at),
    )[0]["n"]
    return int(ahead) + 1


def running_run(ws: Workspace) -> RunRecord | None:
    rows = ws.query("SELECT * FROM runs WHERE status = ? ORDER BY started_at LIMIT 1",
                    (RunStatus.RUNNING,))
    return _record(ws, rows[0]) if rows else None


def active_runs(ws: Workspace, project: str, kind: str | None = DEFAULT_KIND) -> list[RunRecord]:
    """The project's queued and running runs (of `kind`; None: every kind), oldest first:
    what a live page polls."""
    rows = ws.query(
        "SELECT * FROM runs WHERE project = ? AND status IN (?, ?) ORDER BY created_at",
        (project, *ACTIVE),
    )
    return [r for r in (_record(ws, row) for row in rows) if kind is None or r.kind == kind]


def evaluation(ws: Workspace, run_id: str) -> dict[str, Any]:
    """The stored evaluation of a completed run (accuracy, per class, confusion, mistakes)."""
    run = get_run(ws, run_id)
    path = ws.run_dir(run_id) / "evaluation.json"
    if run.status != RunStatus.COMPLETED or not path.is_file():
        raise RunNotReady(f"Run {run_id} is {run.status}: it has no evaluation yet.")
    return json.loads(path.read_text())


def model_path(ws: Workspace, run_id: str) -> Path:
    run = get_run(ws, run_id)
    path = ws.run_dir(run_id) / "model.keras"
    if run.status != RunStatus.COMPLETED or not path.is_file():
        raise RunNotReady(
            f"Run {run_id} is {run.status}: only a completed run has a model to use."
        )
    return path


def labels(ws: Workspace, run_id: str) -> list[str]:
    return list(json.loads((ws.run_dir(run_id) / "labels.json").read_text()))


def delete_run(ws: Workspace, run_id: str) -> None:
    """Remove a finished run, its metrics and files. Active runs must be cancelled first."""
    run = get_run(ws, run_id)
    if run.is_active:
        raise TLError(f"Run {run_id} is {run.status}: cancel it before deleting it.")
    with ws.transaction() as db:
        # Checked again inside the transaction: a resume may have queued it meanwhile.
        deleted = db.execute("DELETE FROM runs WHERE id = ? AND status NOT IN (?, ?)",
                             (run_id, *ACTIVE)).rowcount
        if not deleted:
            raise TLError(f"Run {run_id} was resumed just now: cancel it before deleting it.")
        # Before the commit: a folder left by a crash below can never be restored as a run.
        (ws.run_dir(run_id) / RUN_FILE).unlink(missing_ok=True)
    shutil.rmtree(ws.run_dir(run_id), ignore_errors=True)


# --- status changes: the only places a run's status is written -----------------------
def queue_run(
    ws: Workspace,
    project: str,
    dataset_id: str,
    spec: RunSpec,
    key: str,
    *,
    kind: str = DEFAULT_KIND,
    started_by: str | None = None,
    reuse: bool = True,
    passed_over: Collection[str] = (),
) -> tuple[str, RunStatus, bool]:
    """A new queued run, or with `reuse` the project's run of the same kind and cache key
    that completed or is on its way (completed first, then the newest; completed runs in
    `passed_over` cannot serve): its id, its status and whether it was added now."""
    with ws.transaction() as db:  # look and add in one step: two equal submits add one run
        if reuse:
            for same in db.execute(
                "SELECT id, status FROM runs WHERE cache_key = ? AND project = ? AND kind = ? "
                "AND status IN (?, ?, ?) ORDER BY status = ? DESC, created_at DESC",
                (key, project, kind, RunStatus.COMPLETED, *ACTIVE, RunStatus.COMPLETED),
            ).fetchall():
                status = RunStatus(same["status"])
                if status == RunStatus.COMPLETED and same["id"] in passed_over:
                    continue
                return same["id"], status, False
        run_id = "r" + uuid.uuid4().hex[:10]
        db.execute(
            "INSERT INTO runs (id, project, dataset_id, kind, spec_json, cache_key, status, "
            "started_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, project, dataset_id, kind, canonical_json(spec.to_dict()), key,
             RunStatus.QUEUED, started_by, time.time()),
        )
        write_run_file(ws, db, run_id)
    return run_id, RunStatus.QUEUED, True


def completed_with_key(ws: Workspace, project: str, key: str, kind: str = DEFAULT_KIND,
                       ) -> list[str]:
    """The ids of the project's completed runs of this kind and cache key."""
    rows = ws.query("SELECT id FROM runs WHERE cache_key = ? AND project = ? AND kind = ? "
                    "AND status = ?", (key, project, kind, RunStatus.COMPLETED))
    return [row["id"] for row in rows]


def claim_next_run(ws: Workspace, worker_pid: int | None = None) -> str | None:
    """queued -> running for the oldest queued run, on behalf of `worker_pid` (this
    process by default); its id, or None when nothing is queued."""
    with ws.transaction() as db:
        row = db.execute(
            "SELECT id FROM runs WHERE status = ? ORDER BY created_at LIMIT 1",
            (RunStatus.QUEUED,),
        ).fetchone()
        if row is None:
            return None
        db.execute(
            "UPDATE runs SET status = ?, started_at = ?, heartbeat_at = ?, "
            "worker_pid = ?, cancel_requested = 0 WHERE id = ?",
            (RunStatus.RUNNING, time.time(), time.time(),
             os.getpid() if worker_pid is None else worker_pid, row["id"]),
        )
        write_run_file(ws, db, row["id"])
        return row["id"]


def request_cancel(ws: Workspace, run_id: str) -> RunStatus:
    """queued -> cancelled at once; a running run gets a cancel request that its worker
    acts on within a batch or two (see `heartbeat`). Other runs are left as they are.
    Returns the run's status afterwards."""
    get_run(ws, run_id)  # a clear NotFound for a wrong id
    with ws.transaction() as db:  # read and change in one step: the worker may claim it now
        db.execute(
            "UPDATE runs SET status = ?, finished_at = ? WHERE id = ? AND status = ?",
            (RunStatus.CANCELLED, time.time(), run_id, RunStatus.QUEUED),
        )
        db.execute(
            "UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status = ?",
            (run_id, RunStatus.RUNNING),
        )
        write_run_file(ws, db, run_id)
    return get_run(ws, run_id).status


def mark_interrupted(ws: Workspace) -> list[str]:
    """running -> interrupted for every running run; their ids. Only for a caller that
    holds the training slot (jobs.py): then every running run belongs to a dead worker."""
    with ws.transaction() as db:
        rows = db.execute("SELECT id FROM runs WHERE status = ?",
                          (RunStatus.RUNNING,)).fetchall()
        db.execute(
            "UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE status = ?",
            (RunStatus.INTERRUPTED, time.time(), INTERRUPTED_ERROR, RunStatus.RUNNING),
        )
        for row in rows:
            write_run_file(ws, db, row["id"])
    return [row["id"] for row in rows]


def requeue_run(ws: Workspace, run_id: str) -> None:
    """interrupted, failed or cancelled -> queued, at the back of the queue and with its
    error, cancel request and progress cleared. Raises TLError for a run in any other status."""
    get_run(ws, run_id)  # a clear NotFound for a wrong id
    with ws.transaction() as db:
        row = db.execute("SELECT status, started_at, heartbeat_at, finished_at, "
                         "earlier_seconds FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None or row["status"] not in RESUMABLE:
            status = row["status"] if row else "deleted"
            raise TLError(f"Run {run_id} is {status}: only a stopped run can be resumed.")
        stopped = attempt_seconds(row["status"], row["started_at"], row["heartbeat_at"],
                                  row["finished_at"]) or 0.0
        db.execute(
            # The progress of the stopped attempt goes too: the next one reports its own.
            # Its time is kept: the run's seconds count every attempt.
            # Its start goes too: until a worker claims it, no attempt of it is under way
            # (a cancel while it waits must not count the stopped attempt's time again).
            "UPDATE runs SET status = ?, error = NULL, finished_at = NULL, "
            "cancel_requested = 0, progress_json = '{}', created_at = ?, "
            "earlier_seconds = ?, started_at = NULL, heartbeat_at = NULL WHERE id = ?",
            (RunStatus.QUEUED, time.time(), (row["earlier_seconds"] or 0.0) + stopped,
             run_id),
        )
        write_run_file(ws, db, run_id)


def finish_run(
    ws: Workspace,
    run_id: str,
    status: RunStatus,
    *,
    summary: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """The worker's end of a claimed run: completed (with its summary; progress then reads
    done), failed (with its error) or cancelled."""
    if status not in END_STATES:
        raise ValueError(f"a run cannot finish as {status!r}")
    columns: dict[str, Any] = {"status": status, "finished_at": time.time()}
    if error is not None:
        columns["error"] = error
    if summary is not None:
        columns["summary"] = summary
    if status == RunStatus.COMPLETED:
        columns["progress"] = Progress(phase=DONE, fraction=1.0).to_dict()
    update_run(ws, run_id, **columns)


# --- other changes used by jobs and training -----------------------------------------
def update_run(ws: Workspace, run_id: str, **columns: Any) -> None:
    for name in ("progress", "summary"):
        if name in columns:
            columns[f"{name}_json"] = json.dumps(columns.pop(name))
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with ws.transaction() as db:
        db.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*columns.values(), run_id))
        write_run_file(ws, db, run_id)


def format_silence(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def touch_heartbeat(ws: Workspace, run_id: str) -> None:
    """Sign of life of a running run's worker, without new progress."""
    with ws.transaction() as db:
        db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ? AND status = ?",
                   (time.time(), run_id, RunStatus.RUNNING))


def heartbeat(ws: Workspace, run_id: str, progress: Progress | dict[str, Any]) -> bool:
    """Store progress; return whether a cancel was requested."""
    if isinstance(progress, dict):
        progress = Progress.from_dict(progress)
    with ws.transaction() as db:
        return _store_progress(db, run_id, progress)


def _store_progress(db: sqlite3.Connection, run_id: str, progress: Progress) -> bool:
    """The run's progress and heartbeat, in the caller's transaction; whether a cancel was
    requested."""
    db.execute("UPDATE runs SET progress_json = ?, heartbeat_at = ? WHERE id = ?",
               (json.dumps(progress.to_dict()), time.time(), run_id))
    row = db.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
    return bool(row and row["cancel_requested"])


def record_epoch(ws: Workspace, run_id: str, epoch: int, phase: str, values: dict,
                 progress: Progress | None = None) -> bool:
    """Store an epoch's figures, with the progress at its end when given (one transaction:
    a run on features records an epoch every few milliseconds); whether a cancel was
    requested."""
    return record_epochs(ws, run_id, [(epoch, phase, values, time.time())], progress)


def record_epochs(ws: Workspace, run_id: str,
                  epochs: Sequence[tuple[int, str, dict, float]],
                  progress: Progress | None = None) -> bool:
    """Store several epochs' figures, each (epoch, phase, values, recorded_at), and the
    progress after them, in one transaction; whether a cancel was requested."""
    with ws.transaction() as db:
        db.executemany(
            "INSERT OR REPLACE INTO metrics (run_id, epoch, phase, values_json, recorded_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(run_id, epoch, phase, json.dumps(values), recorded_at)
             for epoch, phase, values, recorded_at in epochs],
        )
        write_metrics_file(ws, db, run_id)
        return progress is not None and _store_progress(db, run_id, progress)


def clear_metrics_after(ws: Workspace, run_id: str, epoch: int) -> None:
    with ws.transaction() as db:
        db.execute("DELETE FROM metrics WHERE run_id = ? AND epoch > ?", (run_id, epoch))
        write_metrics_file(ws, db, run_id)


# --- the run folder's own record, from which doctor rebuilds a lost index ------------
# Both files are written inside the transaction that changed the row, so writers queue
# on SQLite's lock and a file is never older than a committed change.
def write_run_file(ws: Workspace, db: sqlite3.Connection, run_id: str) -> None:
    """runs/<id>/run.json: the run's row (spec, summary and progress as JSON values)."""
    row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        return
    record: dict[str, Any] = {"format": RUN_FILE_FORMAT}
    record.update({name: row[name] for name in RUN_FILE_FIELDS})
    record["spec"] = json.loads(row["spec_json"])
    record["summary"] = json.loads(row["summary_json"] or "{}")
    record["progress"] = json.loads(row["progress_json"] or "{}")
    ws.write_json_atomic(ws.run_dir(run_id) / RUN_FILE, record)


def write_metrics_file(ws: Workspace, db: sqlite3.Connection, run_id: str) -> None:
    """runs/<id>/metrics.jsonl: one JSON object per epoch, oldest first, rewritten whole
    (atomically) so that a resumed phase's dropped epochs leave it too."""
    rows = db.execute(
        "SELECT epoch, phase, values_json, recorded_at FROM metrics WHERE run_id = ? "
        "ORDER BY epoch",
        (run_id,),
    ).fetchall()
    lines = [
        json.dumps({"epoch": r["epoch"], "phase": r["phase"],
                    "values": json.loads(r["values_json"]), "recorded_at": r["recorded_at"]},
                   sort_keys=True)
        for r in rows
    ]
    ws.write_bytes_atomic(ws.run_dir(run_id) / METRICS_FILE,
                          "".join(line + "\n" for line in lines).encode())
