"""Keras callbacks of a training run: live progress and cancel checks through the store,
the best epoch's weights kept in a tagged file, and validation on arrays in memory."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from . import runs
from .progress import EtaEstimator, FeaturePassProgress, Progress
from .store import Workspace

PROGRESS_INTERVAL_S = 1.5


class ValidationOnArrays(keras.callbacks.Callback):
    """Keras's validation of a model on inputs held in memory (a head on cached features):
    each epoch, the model's own `test_step` over the batches, with the metrics reset before
    and read after, in one graph traced once, and its metrics added to the epoch's logs as
    `val_<name>`, as `fit` would add them.

    On features an epoch takes milliseconds, and `fit`'s own validation costs more than the
    epoch: a new iterator and its multi-step loop every epoch, and a graph of its own to
    trace. Put it first among the callbacks: those after it read the logs it completes.
    One replica only (a strategy's variables are updated inside its `run`).
    """

    def __init__(self, inputs: np.ndarray, targets: np.ndarray, batch_size: int) -> None:
        super().__init__()
        import tensorflow as tf

        self._batches = [(tf.constant(inputs[i:i + batch_size]),
                          tf.constant(targets[i:i + batch_size]))
                         for i in range(0, len(inputs), batch_size)]
        self._validate: Any = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._batches:
            return
        import tensorflow as tf

        model = self.model
        if self._validate is None:
            def validate(batches: list[tuple[Any, Any]]) -> dict[str, Any]:
                # As `evaluate` does; the epoch's training figures are in the logs already.
                # One graph for all of it: eager resets and reads cost more than the steps.
                model.reset_metrics()
                for batch in batches:
                    model.test_step(batch)
                return model.get_metrics_result()

            self._validate = tf.function(validate)
        results = self._validate(self._batches)
        if logs is not None:
            logs.update({f"val_{name}": float(value) for name, value in results.items()})


def float32_value(value: Any) -> float:
    """A float32 figure (Keras's metrics, its learning rate) as the shortest decimal that
    is the same float32: an accuracy of 133 of 200 images reads 0.665, as the run's own
    count-based val_accuracy does, not 0.6650000214576721."""
    return float(str(np.float32(value)))


class StoreProgress(keras.callbacks.Callback):
    """Writes live progress (every ~1.5 s and per epoch) and per-epoch metrics to the store,
    and turns a cancel request into `stop_training`.

    The ETA comes from an `EtaEstimator` that lives for the whole phase; `later_seconds`,
    when given, estimates the phases after this one from it (None: not known yet).
    """

    def __init__(self, ws: Workspace, run_id: str, phase: str, epoch_offset: int,
                 total_epochs: int, steps_per_epoch: int, started: float,
                 images_per_step: float = 0.0, pause_guess_steps: float = 0.0,
                 later_seconds: Callable[[EtaEstimator], float | None] | None = None,
                 title: str = "", planned: tuple[int, int] | None = None,
                 hold_epochs: bool = False) -> None:
        """`planned`: the epochs the run's plan has before this phase, and in all; the
        bar then spans the whole run rather than starting again at each phase.
        `hold_epochs`: store epochs that end less than PROGRESS_INTERVAL_S after the last
        write together with the next ones (at the latest when training ends), not one
        transaction each: for a phase not resumed from its epochs (a head on features,
        whose epochs take milliseconds), as a killed run trains it again anyway."""
        super().__init__()
        self.hold_epochs = hold_epochs
        self._held: list[tuple[int, str, dict, float]] = []
        self._last_flush = time.monotonic()
        self.ws, self.run_id, self.phase, self.title = ws, run_id, phase, title or phase
        self.epoch_offset, self.total_epochs = epoch_offset, total_epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.started = started
        self.images_per_step = images_per_step
        self.later_seconds = later_seconds
        self.planned = planned or (0, total_epochs)
        self.eta = EtaEstimator(self.steps_per_epoch, pause_guess_steps)
        self.cancelled = False
        self._last_write = 0.0
        self._epoch = 0
        self._step = 0  # steps of the current epoch done
        # Durations on the monotonic clock: a wall-clock step (NTP) must not make a step
        # look instant or negative. `started` is wall-clock, as the run's own start.
        self._epoch_started = time.monotonic()
        self._mark = time.monotonic()
        self._pause_from: float | None = None

    def _progress(self, step: int, logs: dict[str, Any] | None) -> Progress:
        done = self._epoch * self.steps_per_epoch + step
        total = self.total_epochs * self.steps_per_epoch
        eta = self.eta.seconds_left(total - done, self.total_epochs - self._epoch)
        later = self.later_seconds(self.eta) if self.later_seconds else 0.0
        step_s = self.eta.step_seconds
        before, planned_total = self.planned
        in_phase = done / total if total else 0.0
        fraction = (before + in_phase * self.total_epochs) / planned_total if planned_total else 0.0
        return Progress(
            phase=self.phase,
            phase_title=self.title,
            epoch=self._epoch + 1,
            epochs=self.total_epochs,
            step=step,
            steps=self.steps_per_epoch,
            fraction=min(1.0, fraction),
            eta_s=eta + later if eta is not None and later is not None else eta,
            eta_scope="run" if later is not None else "phase",
            images_per_s=self.images_per_step / step_s
            if step_s and self.images_per_step else None,
            elapsed_s=time.time() - self.started,
            logs={k: float32_value(v) for k, v in (logs or {}).items() if np.isscalar(v)},
        )

    def _write(self, step: int, logs: dict[str, Any] | None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < PROGRESS_INTERVAL_S:
            return
        self._last_write = now
        if runs.heartbeat(self.ws, self.run_id, self._progress(step, logs)):
            self.cancelled = True
            self.model.stop_training = True

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        if self._pause_from is not None:
            self.eta.epoch_pause(now - self._pause_from)
            self._pause_from = None
        self._epoch = epoch - self.epoch_offset
        self._step = 0
        self._epoch_started = self._mark = now
        # The epoch before ended with a write: this one comes in its turn (epochs on
        # features take milliseconds).
        self._write(0, logs)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # With steps_per_execution, `batch` is the last step of a chunk of several (Keras
        # may count past the epoch's end on its last chunk).
        now = time.monotonic()
        step = min(batch + 1, self.steps_per_epoch)
        self.eta.steps_done(max(1, step - self._step), now - self._mark)
        self._mark, self._step = now, step
        self._write(step, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # The pause (validation, checkpoints) runs from the last step to the next epoch.
        self._pause_from = self._mark
        values = {k: float32_value(v) for k, v in (logs or {}).items() if np.isscalar(v)}
        lr = getattr(self.model.optimizer, "learning_rate", None)
        if lr is not None:
            values["learning_rate"] = float32_value(np.asarray(lr))
        values["seconds"] = time.monotonic() - self._epoch_started
        self._held.append((epoch + 1, self.phase, values, time.time()))
        now = time.monotonic()
        if self.hold_epochs and now - self._last_flush < PROGRESS_INTERVAL_S:
            return
        self._flush(self._progress(self.steps_per_epoch, logs))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.flush(logs)

    def flush(self, logs: dict[str, Any] | None = None) -> None:
        """Store the epochs held back, if any (training ended, or stopped by an error)."""
        if self._held:
            self._flush(self._progress(self.steps_per_epoch, logs))

    def _flush(self, progress: Progress) -> None:
        """The epochs recorded since the last flush, and the progress, in one write."""
        self._last_write = self._last_flush = time.monotonic()
        held, self._held = self._held, []
        if runs.record_epochs(self.ws, self.run_id, held, progress):
            self.cancelled = True
            self.model.stop_training = True


class PredictProgress(keras.callbacks.Callback):
    """Progress and cancel checks while the frozen backbone computes one feature pass.

    `report` stores the progress and says whether a cancel was asked for. `passes` is
    shared by every pass of the run, so the bar and the ETA cover all of them.
    """

    def __init__(self, report: Callable[[Progress], bool], passes: FeaturePassProgress,
                 pass_name: str, batch_size: int, started: float) -> None:
        super().__init__()
        self.report = report
        self.passes, self.pass_name = passes, pass_name
        self.batch_size = max(1, batch_size)
        self.started = started
        self._last = 0.0
        self._mark = time.monotonic()  # durations: the monotonic clock
        self.cancelled = False

    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.passes.start(self.pass_name)
        self._mark = time.monotonic()

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        images = self.passes.passes[self.passes.index].images
        in_batch = max(0, min(self.batch_size, images - batch * self.batch_size))
        self.passes.batch_done(in_batch, now - self._mark)
        self._mark = now
        total_steps = -(-images // self.batch_size)
        # The first batch is written at once: from then on there is a rate, hence an ETA.
        if batch > 0 and now - self._last < PROGRESS_INTERVAL_S and batch + 1 < total_steps:
            return
        self._last = now
        progress = dataclasses.replace(self.passes.snapshot(), step=batch + 1,
                                       steps=total_steps,
                                       elapsed_s=time.time() - self.started)
        if self.report(progress):
            self.cancelled = True
            self.model.stop_predicting = True


class KeepBestWeights(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best validation accuracy so far.

    Each save goes to a temporary file, is tagged with its epoch, then renamed: a killed
    worker never leaves a torn file, and a resumed run knows which epoch it holds.
    `in_memory` (for a phase that is not resumed) keeps the best weights in memory and,
    when training ends, writes them once and leaves them in the model (`restored`).
    """

    def __init__(self, path: Path, best_so_far: float | None, in_memory: bool = False) -> None:
        super().__init__()
        self.path = path
        self.best = best_so_far
        self.in_memory = in_memory
        self._held: tuple[list[Any], int] | None = None
        self.restored = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get("val_accuracy")
        if value is None:
            return
        if self.best is None or float(value) > self.best:
            self.best = float(value)
            if self.in_memory:
                self._held = (self.model.get_weights(), epoch + 1)
            else:
                save_tagged_weights(self.model, self.path, epoch + 1, self.best)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._held is None:
            return
        weights, epoch = self._held
        self.model.set_weights(weights)
        self.restored = True
        save_tagged_weights(self.model, self.path, epoch, self.best)


def save_tagged_weights(model: Any, path: Path, epoch: int, val_accuracy: float | None) -> None:
    """Weights plus the (global, 1-based) epoch they are from, written atomically."""
    tmp = path.with_name(f".{path.name.removesuffix('.weights.h5')}.tmp.weights.h5")
    model.save_weights(str(tmp))
    with h5py.File(tmp, "a") as handle:
        handle.attrs["epoch"] = int(epoch)
        if val_accuracy is not None:
            handle.attrs["val_accuracy"] = float(val_accuracy)
    tmp.replace(path)


def weights_tag(path: Path) -> tuple[int, float | None] | None:
    """(epoch, val_accuracy) that `save_tagged_weights` stored with the file, if any."""
    if not path.is_file():
        return None
    with h5py.File(path, "r") as handle:
        if "epoch" not in handle.attrs:
            return None
        value = handle.attrs.get("val_accuracy")
        return int(handle.attrs["epoch"]), float(value) if value is not None else None


def discard_torn_first_backup(backup_dir: Path) -> None:
    """Keras's BackupAndRestore falls back to its previous copy when the latest one is torn,
    but after a phase's first epoch there is no previous copy: a worker killed while
    writing it would leave a run that can never resume. Such a backup is discarded, so
    the phase starts again at its first epoch."""
    latest = backup_dir / "latest.weights.h5"
    if not latest.is_file() or Path(f"{latest}.bkp").is_file():
        return
    try:
        with h5py.File(latest, "r"):
            return
    except OSError:
        import shutil

        shutil.rmtree(backup_dir, ignore_errors=True)
