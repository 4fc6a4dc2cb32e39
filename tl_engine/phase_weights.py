"""Switching a two-phase run to its head-phase weights, when fine-tuning made it worse.

The trainer keeps the head-phase model beside the fine-tuned one (`model-head.keras`,
`evaluation-head.json`) when the head phase validated better. Switching needs no
TensorFlow: it renames files and updates the run's summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from . import calibration, runs
from .errors import RunNotReady, TLError
from .runs import RunRecord, RunStatus
from .store import Workspace

HEAD_MODEL = "model-head.keras"
HEAD_EVALUATION = "evaluation-head.json"
FINETUNED_MODEL = "model-finetuned.keras"
FINETUNED_EVALUATION = "evaluation-finetuned.json"


@contextlib.contextmanager
def _run_lock(ws: Workspace, run_id: str) -> Iterator[None]:
    with open(ws.locks_dir / f"run-{run_id}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _keep_copy(source: Path, copy: Path) -> None:
    """`copy` becomes a second name (or a copy) of `source`, appearing in one step."""
    staging = copy.with_name(f".{copy.name}.tmp")
    staging.unlink(missing_ok=True)
    try:
        os.link(source, staging)
    except OSError:  # a file system without hard links
        shutil.copy2(source, staging)
    staging.replace(copy)


def _swap_in(current: Path, replacement: Path, keep_as: Path) -> None:
    """`replacement` becomes `current`; the old `current` stays as `keep_as`.

    `current` is complete at every moment. A second call after an interruption finishes
    the job instead of failing.
    """
    if not replacement.is_file():
        if keep_as.is_file():
            return  # swapped already
        raise TLError(f"{replacement.name} is missing from {replacement.parent}.")
    _keep_copy(current, keep_as)
    replacement.replace(current)


def use_head_phase_weights(ws: Workspace, run_id: str) -> RunRecord:
    """Make a two-phase run's head-phase model its model (predictions, exports, scores).

    The fine-tuned model and its evaluation stay in the run folder as
    `model-finetuned.keras` and `evaluation-finetuned.json`.
    """
    with _run_lock(ws, run_id):
        run = runs.get_run(ws, run_id)
        if run.status != RunStatus.COMPLETED:
            raise RunNotReady(f"Run {run_id} is {run.status}: only a completed run has "
                              "weights to choose from.")
        result = run.result
        if result.weights_from == "head":
            return run
        if not result.head_model_available:
            raise TLError(f"Run {run_id} has no head-phase weights to switch to: only a "
                          "two-phase run whose head phase validated better keeps them.")
        folder = ws.run_dir(run_id)
        _swap_in(folder / "model.keras", folder / HEAD_MODEL, folder / FINETUNED_MODEL)
        _swap_in(folder / "evaluation.json", folder / HEAD_EVALUATION,
                 folder / FINETUNED_EVALUATION)
        # A renamed file keeps its old time: touch it so models cached by time reload.
        os.utime(folder / "model.keras")
        # Exports were made from the fine-tuned model.
        shutil.rmtree(folder / "exports", ignore_errors=True)

        evaluation = runs.evaluation(ws, run_id)
        switched = dataclasses.replace(
            result,
            finetuned_val_accuracy=result.val_accuracy,
            finetuned_best_epoch=result.best_epoch,
            val_accuracy=evaluation["val"]["accuracy"],
            val_top_k_accuracy=evaluation["val"]["top_k_accuracy"],
            test_accuracy=evaluation.get("test", {}).get("accuracy"),
            best_epoch=result.head_best_epoch,
            restored_best=True,
            head_model_available=False,
            weights_from="head",
            **calibration.summary_fields(evaluation),  # the head model's own temperature
        )
        # Laid over the stored summary, so keys this version does not know are kept.
        summary = {**run.summary, **switched.to_dict()}
        runs.update_run(ws, run_id, summary=summary)
        ws.write_json_atomic(folder / "summary.json", summary)
        return runs.get_run(ws, run_id)
