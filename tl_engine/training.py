"""Training one run, inside a worker process: Model.fit with Keras callbacks.

Progress, per-epoch metrics, checkpoints and the final model all go to the store, so a
page, a second browser or the CLI can follow and reuse them. Resuming an interrupted
run continues from Keras's BackupAndRestore state of the phase it was in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf

from . import runs
from .datasets import Dataset, ImageRecord, load_dataset, split_records
from .device import configure, distribution_strategy
from .features import FeatureCache, feature_key, features_for
from .freeze import apply_freeze, plan_freeze
from .modeling import Classifier, build_classifier
from .pipeline import image_dataset
from .registry import get_backbone
from .scoring import evaluate_predictions, top_k_for
from .spec import RunSpec
from .store import Workspace
from .weights import weights_identity

PROGRESS_INTERVAL_S = 1.5


class RunCancelled(Exception):
    pass


@dataclass
class Splits:
    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]


class StoreProgress(keras.callbacks.Callback):
    """Writes live progress (every ~1.5 s and per epoch) and per-epoch metrics to the store,
    and turns a cancel request into `stop_training`."""

    def __init__(self, ws: Workspace, run_id: str, phase: str, epoch_offset: int,
                 total_epochs: int, steps_per_epoch: int, started: float) -> None:
        super().__init__()
        self.ws, self.run_id, self.phase = ws, run_id, phase
        self.epoch_offset, self.total_epochs = epoch_offset, total_epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.started = started
        self.cancelled = False
        self._last_write = 0.0
        self._epoch = 0
        self._epoch_started = time.time()
        self._steps_done_at_start: int | None = None
        self._phase_started = time.time()

    def _progress(self, step: int, logs: dict[str, Any] | None) -> dict[str, Any]:
        done = self._epoch * self.steps_per_epoch + step
        total = self.total_epochs * self.steps_per_epoch
        if self._steps_done_at_start is None:
            self._steps_done_at_start = done
        elapsed = time.time() - self._phase_started
        fresh = done - self._steps_done_at_start
        eta = elapsed / fresh * (total - done) if fresh > 0 else None
        return {
            "phase": self.phase,
            "epoch": self._epoch + 1,
            "epochs": self.total_epochs,
            "step": step,
            "steps": self.steps_per_epoch,
            "fraction": min(1.0, done / total) if total else 0.0,
            "eta_s": eta,
            "elapsed_s": time.time() - self.started,
            "logs": {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)},
        }

    def _write(self, step: int, logs: dict[str, Any] | None, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_write < PROGRESS_INTERVAL_S:
            return
        self._last_write = now
        if runs.heartbeat(self.ws, self.run_id, self._progress(step, logs)):
            self.cancelled = True
            self.model.stop_training = True

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch - self.epoch_offset
        self._epoch_started = time.time()
        self._write(0, logs, force=True)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._write(batch + 1, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        values = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)}
        lr = getattr(self.model.optimizer, "learning_rate", None)
        if lr is not None:
            values["learning_rate"] = float(np.asarray(lr))
        values["seconds"] = time.time() - self._epoch_started
        runs.record_epoch(self.ws, self.run_id, epoch + 1, self.phase, values)
        self._write(self.steps_per_epoch, logs, force=True)


class PredictProgress(keras.callbacks.Callback):
    """Progress and cancel checks while the frozen backbone computes features."""

    def __init__(self, ws: Workspace, run_id: str, total_steps: int, started: float) -> None:
        super().__init__()
        self.ws, self.run_id = ws, run_id
        self.total_steps = max(1, total_steps)
        self.started = started
        self._last = 0.0
        self.cancelled = False

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.time()
        if now - self._last < PROGRESS_INTERVAL_S and batch + 1 < self.total_steps:
            return
        self._last = now
        progress = {
            "phase": "features",
            "step": batch + 1,
            "steps": self.total_steps,
            "fraction": (batch + 1) / self.total_steps,
            "elapsed_s": now - self.started,
        }
        if runs.heartbeat(self.ws, self.run_id, progress):
            self.cancelled = True
            self.model.stop_predicting = True


def _one_hot(records: list[ImageRecord], index: dict[str, int]) -> np.ndarray:
    return np.eye(len(index), dtype=np.float32)[[index[r.label] for r in records]]


def _class_weights(records: list[ImageRecord], index: dict[str, int]) -> dict[int, float]:
    counts = np.bincount([index[r.label] for r in records], minlength=len(index))
    total = counts.sum()
    return {i: float(total / (len(index) * c)) if c else 0.0 for i, c in enumerate(counts)}


def _optimizer(name: str, learning_rate: float) -> Any:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    return keras.optimizers.Adam(learning_rate)


def _compile(model: Any, spec: RunSpec, n_classes: int, learning_rate: float) -> None:
    k = top_k_for(n_classes)
    model.compile(
        optimizer=_optimizer(spec.optimizer, learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=spec.label_smoothing),
        metrics=["accuracy", keras.metrics.TopKCategoricalAccuracy(k, name="top_k")],
    )


def _discard_if_unreadable(weights_file: Path) -> None:
    if not weights_file.is_file():
        return
    try:
        with h5py.File(weights_file, "r"):
            pass
    except OSError:
        weights_file.unlink()


class RunTrainer:
    """Everything one run needs, loaded once; `train()` does the phases in order."""

    def __init__(self, ws: Workspace, run_id: str) -> None:
        self.ws = ws
        self.run = runs.get_run(ws, run_id)
        self.spec = self.run.spec
        self.dir = ws.run_dir(run_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dataset: Dataset = load_dataset(ws, self.run.dataset_id)
        self.classes = list(self.dataset.classes)
        self.index = {name: i for i, name in enumerate(self.classes)}
        split = split_records(self.dataset, self.spec.val_split, self.spec.test_split,
                              self.spec.seed)
        self.splits = Splits(split["train"], split["val"], split.get("test", []))
        self.started = time.time()
        self.summary: dict[str, Any] = dict(self.run.summary)
        self.features_computed = 0
        self.features_reused = 0

    # --- helpers -----------------------------------------------------------------
    def _paths(self, records: list[ImageRecord]) -> list[str]:
        return [str(self.ws.image_path(r.hash)) for r in records]

    def _pixels(self, records: list[ImageRecord], shuffle: bool, labels: bool = True) -> Any:
        spec = self.spec
        return image_dataset(
            self._paths(records),
            _one_hot(records, self.index) if labels else None,
            spec.image_size,
            spec.batch_size,
            shuffle_seed=spec.seed if shuffle else None,
            augment=spec.augment if shuffle else (),
            augment_seed=spec.seed,
        )

    def _features(self, clf: Classifier, records: list[ImageRecord]) -> np.ndarray:
        spec = self.spec
        key = feature_key(spec.backbone, self._weights_id, spec.image_size)
        by_hash = {r.hash: r for r in records}

        def compute(missing: list[str]) -> np.ndarray:
            chosen = [by_hash[h] for h in missing]
            steps = -(-len(chosen) // spec.batch_size)
            progress = PredictProgress(self.ws, self.run.id, steps, self.started)
            out = clf.feature_model.predict(
                self._pixels(chosen, shuffle=False, labels=False),
                callbacks=[progress],
                verbose=0,
            )
            if progress.cancelled:
                raise RunCancelled()
            return np.asarray(out, dtype=np.float32)

        result = features_for(FeatureCache(self.ws), key, [r.hash for r in records], compute)
        self.features_computed += result.computed
        self.features_reused += result.reused
        return result.matrix

    def _callbacks(self, phase: str, epoch_offset: int, epochs: int, steps: int,
                   best_path: Path) -> tuple[list[Any], StoreProgress]:
        spec = self.spec
        progress = StoreProgress(self.ws, self.run.id, phase, epoch_offset, epochs, steps,
                                 self.started)
        _discard_if_unreadable(best_path)  # a worker killed while writing it leaves it torn
        backup = self.dir / "backup" / phase
        if not backup.exists():
            # No state to resume this phase from (new, or cancelled: Keras removes the
            # backup when fit ends), so it starts again at its first epoch.
            runs.clear_metrics_after(self.ws, self.run.id, epoch_offset)
            best_path.unlink(missing_ok=True)
        # After a resume, the checkpoint must beat the best epoch this phase already had.
        best_so_far = max(
            (m.get("val_accuracy", 0.0) for m in runs.run_metrics(self.ws, self.run.id)
             if m["phase"] == phase),
            default=None,
        ) if best_path.is_file() else None
        callbacks = [
            # Progress and the best checkpoint first: an epoch's metrics are in the store
            # before its backup is, so a resume never skips recording an epoch.
            progress,
            keras.callbacks.ModelCheckpoint(
                str(best_path), monitor="val_accuracy", mode="max", save_best_only=True,
                save_weights_only=True, initial_value_threshold=best_so_far,
            ),
            # double_checkpoint: a torn backup (worker killed mid-write) falls back to the
            # previous epoch's copy instead of failing the resume.
            keras.callbacks.BackupAndRestore(str(backup), double_checkpoint=True),
        ]
        if spec.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_accuracy", mode="max", patience=spec.early_stopping,
                restore_best_weights=False,
            ))
        if spec.reduce_lr:
            callbacks.append(keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.2, patience=2, min_lr=1e-7,
            ))
        return callbacks, progress

    def _fit(self, model: Any, phase: str, train: Any, val: Any, epoch_offset: int, epochs: int,
             steps: int) -> int:
        """One `fit` phase; returns the epochs it ran. Best weights are restored after."""
        best_path = self.dir / f"best-{phase}.weights.h5"
        callbacks, progress = self._callbacks(phase, epoch_offset, epochs, steps, best_path)
        model.fit(
            train,
            validation_data=val,
            initial_epoch=epoch_offset,
            epochs=epoch_offset + epochs,
            callbacks=callbacks,
            class_weight=_class_weights(self.splits.train, self.index)
            if self.spec.class_weights else None,
            verbose=0,
        )
        if progress.cancelled:
            raise RunCancelled()
        if best_path.is_file():
            model.load_weights(str(best_path))
        epochs = [m["epoch"] for m in runs.run_metrics(self.ws, self.run.id) if m["phase"] == phase]
        return max(epochs, default=epoch_offset) - epoch_offset

    # --- the run -------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        spec = self.spec
        device = configure()
        keras.utils.set_random_seed(spec.seed)
        try:
            tf.config.experimental.enable_op_determinism()
        except Exception:  # not every TF build offers it; results are then only close
            pass
        entry = get_backbone(spec.backbone)
        self._weights_id = weights_identity(entry, spec.weights, spec.seed)
        n_classes = len(self.classes)
        with distribution_strategy().scope():
            clf = build_classifier(spec, n_classes)
        steps = -(-len(self.splits.train) // spec.batch_size)
        y_train = _one_hot(self.splits.train, self.index)
        y_val = _one_hot(self.splits.val, self.index)
        head_epochs = spec.epochs if spec.strategy == "frozen" else spec.head_epochs
        phase1_done = self.dir / "phase1.weights.h5"
        epochs_run = 0
        val_features = None

        def plan_for(strategy: str) -> Any:
            return plan_freeze(entry, clf.backbone, strategy, spec.unfreeze, spec.unfreeze_unit,
                               n_classes, spec.hidden_units,
                               freeze_batch_norm=spec.weights != "none")

        if spec.strategy in ("frozen", "two-phase"):
            plan = plan_for("frozen")
            apply_freeze(clf.backbone, plan)
            if phase1_done.is_file():
                clf.model.load_weights(str(phase1_done))
                # Early stopping may have ended the head phase before head_epochs.
                head_done = [m["epoch"] for m in runs.run_metrics(self.ws, self.run.id)
                             if m["phase"] == "head"]
                epochs_run = max(head_done, default=head_epochs)
            elif spec.uses_feature_cache:
                x_train = self._features(clf, self.splits.train)
                val_features = self._features(clf, self.splits.val)
                train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
                    len(x_train), seed=spec.seed, reshuffle_each_iteration=True
                ).batch(spec.batch_size)
                val_ds = tf.data.Dataset.from_tensor_slices((val_features, y_val)).batch(
                    spec.batch_size)
                _compile(clf.head, spec, n_classes, spec.learning_rate)
                epochs_run = self._fit(clf.head, "head", train_ds, val_ds, 0, head_epochs, steps)
            else:
                _compile(clf.model, spec, n_classes, spec.learning_rate)
                epochs_run = self._fit(clf.model, "head", self._pixels(self.splits.train, True),
                                       self._pixels(self.splits.val, False), 0, head_epochs,
                                       steps)
            if spec.strategy == "two-phase":
                partial_file = self.dir / ".phase1.tmp.weights.h5"
                clf.model.save_weights(str(partial_file))
                partial_file.replace(phase1_done)
            trainable_plan = plan

        if spec.strategy != "frozen":
            fine_strategy = "partial" if spec.strategy == "two-phase" else spec.strategy
            trainable_plan = plan_for(fine_strategy)
            apply_freeze(clf.backbone, trainable_plan)
            lr = spec.learning_rate * spec.fine_tune_lr_factor
            _compile(clf.model, spec, n_classes, lr)
            offset = epochs_run
            epochs_run = offset + self._fit(
                clf.model, "fine-tune", self._pixels(self.splits.train, True),
                self._pixels(self.splits.val, False), offset, spec.epochs, steps,
            )
            val_features = None

        evaluation = self._evaluate(clf, val_features)
        self._save(clf, evaluation)
        return {
            "val_accuracy": evaluation["val"]["accuracy"],
            "val_top_k_accuracy": evaluation["val"]["top_k_accuracy"],
            "test_accuracy": evaluation.get("test", {}).get("accuracy"),
            "epochs_run": int(epochs_run),
            "seconds": time.time() - self.started,
            "model_path": str(self.dir / "model.keras"),
            "classes": self.classes,
            "n_train": len(self.splits.train),
            "n_val": len(self.splits.val),
            "n_test": len(self.splits.test),
            "features_computed": self.features_computed,
            "features_reused": self.features_reused,
            "trainable_params": trainable_plan.trainable_params,
            "frozen_params": trainable_plan.frozen_params,
            "device": device.label,
            "weights_identity": self._weights_id,
        }

    def _evaluate(self, clf: Classifier, val_features: np.ndarray | None) -> dict[str, Any]:
        result = {}
        for name, records in (("val", self.splits.val), ("test", self.splits.test)):
            if not records:
                continue
            if name == "val" and val_features is not None:
                probs = clf.head.predict(val_features, batch_size=256, verbose=0)
            else:
                probs = clf.model.predict(self._pixels(records, False, labels=False), verbose=0)
            y_true = np.array([self.index[r.label] for r in records])
            images = [{"hash": r.hash, "filename": r.filename} for r in records]
            result[name] = evaluate_predictions(y_true, probs, self.classes, images)
        return result

    def _save(self, clf: Classifier, evaluation: dict[str, Any]) -> None:
        model_file = self.dir / "model.keras"
        tmp = self.dir / ".model.tmp.keras"
        clf.model.save(str(tmp))
        tmp.replace(model_file)
        self.ws.write_json_atomic(self.dir / "evaluation.json", evaluation)
        self.ws.write_json_atomic(self.dir / "labels.json", self.classes)
        labels_txt = ("\n".join(self.classes) + "\n").encode()
        self.ws.write_bytes_atomic(self.dir / "labels.txt", labels_txt)
        self.ws.write_json_atomic(self.dir / "spec.json", self.spec.to_dict())


def execute_run(ws: Workspace, run_id: str) -> str:
    """Train one claimed run to its end state; returns that state. Never raises."""
    import traceback

    try:
        summary = RunTrainer(ws, run_id).train()
    except RunCancelled:
        runs.update_run(ws, run_id, status="cancelled", finished_at=time.time())
        return "cancelled"
    except Exception as exc:  # a failed run is a stored state, not a crashed worker
        message = f"{type(exc).__name__}: {exc}"
        (ws.run_dir(run_id)).mkdir(parents=True, exist_ok=True)
        (ws.run_dir(run_id) / "error.log").write_text(traceback.format_exc())
        runs.update_run(ws, run_id, status="failed", finished_at=time.time(), error=message)
        return "failed"
    finally:
        keras.backend.clear_session()
    runs.update_run(ws, run_id, status="completed", finished_at=time.time(),
                    summary=summary, progress={"phase": "done", "fraction": 1.0})
    ws.write_json_atomic(ws.run_dir(run_id) / "summary.json", summary)
    return "completed"
