"""What the worker does with each kind of job: one executor per kind.

Every job waits in the same queue and runs in the same worker, with the same progress,
cancel and interrupt handling (see jobs.py); a kind only adds the function that does its
work. An executor takes the workspace and the id of a run the worker has claimed (status
running), does the work, ends the run with `runs.finish_run` and returns that end state.
Its own failures it stores as a failed run rather than raising, as `execute_run` does;
whatever it still raises, the worker stores as a failed run too.
"""

from __future__ import annotations

from collections.abc import Callable

from .runs import DEFAULT_KIND, RunStatus
from .store import Workspace

Executor = Callable[[Workspace, str], RunStatus]

_EXECUTORS: dict[str, Executor] = {}


def register_job_kind(kind: str, executor: Executor) -> None:
    """Make `kind` a job the queue accepts and the worker runs with `executor`. Register in
    this module, beside "train", importing the work lazily: the app, the CLI and the worker
    process (which imports tl_engine afresh) then all know the same kinds, and importing
    tl_engine still does not import TensorFlow."""
    if not kind or kind != kind.strip():
        raise ValueError(f"job kind {kind!r} must be a non-empty name without spaces")
    _EXECUTORS[kind] = executor


def list_job_kinds() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(_EXECUTORS)


def executor_for(kind: str) -> Executor | None:
    return _EXECUTORS.get(kind)


def warm_up_worker() -> None:
    """What a worker started ahead of any job does first: import TensorFlow and load the
    default backbone, the fixed costs the first job would otherwise wait for."""
    from .training import warm_up  # TensorFlow is imported by the worker only

    warm_up()


def _train(ws: Workspace, run_id: str) -> RunStatus:
    from .training import execute_run  # TensorFlow is imported by the worker only

    return RunStatus(execute_run(ws, run_id))


register_job_kind(DEFAULT_KIND, _train)


def _label_issues(ws: Workspace, run_id: str) -> RunStatus:
    from .label_issues import execute_label_issues

    return execute_label_issues(ws, run_id)


register_job_kind("label-issues", _label_issues)
def _probe(ws: Workspace, run_id: str) -> RunStatus:
    from .probe import execute_probe  # TensorFlow is imported by the worker only

    return execute_probe(ws, run_id)


register_job_kind("probe", _probe)


def _lr_find(ws: Workspace, run_id: str) -> RunStatus:
    from .lr_find import execute_lr_find  # TensorFlow is imported by the worker only

    return execute_lr_find(ws, run_id)


register_job_kind("lr-find", _lr_find)
