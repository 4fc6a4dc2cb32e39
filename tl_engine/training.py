"""Training one run, inside a worker process: Model.fit with Keras callbacks.

Progress, per-epoch metrics, checkpoints and the final model all go to the store, so a
page, a second browser or the CLI can follow and reuse them. Resuming an interrupted
run continues from Keras's BackupAndRestore state of the phase it was in.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
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
from .progress import EtaEstimator, FeaturePass, FeaturePassProgress
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
    and turns a cancel request into `stop_training`.

    The ETA comes from an `EtaEstimator` that lives for the whole phase; `later_seconds`,
    when given, estimates the phases after this one from it (None: not known yet).
    """

    def __init__(self, ws: Workspace, run_id: str, phase: str, epoch_offset: int,
                 total_epochs: int, steps_per_epoch: int, started: float,
                 images_per_step: float = 0.0, pause_guess_steps: float = 0.0,
                 later_seconds: Callable[[EtaEstimator], float | None] | None = None) -> None:
        super().__init__()
        self.ws, self.run_id, self.phase = ws, run_id, phase
        self.epoch_offset, self.total_epochs = epoch_offset, total_epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.started = started
        self.images_per_step = images_per_step
        self.later_seconds = later_seconds
        self.eta = EtaEstimator(self.steps_per_epoch, pause_guess_steps)
        self.cancelled = False
        self._last_write = 0.0
        self._epoch = 0
        self._epoch_started = time.time()
        self._mark = time.time()
        self._pause_from: float | None = None

    def _progress(self, step: int, logs: dict[str, Any] | None) -> dict[str, Any]:
        done = self._epoch * self.steps_per_epoch + step
        total = self.total_epochs * self.steps_per_epoch
        eta = self.eta.seconds_left(total - done, self.total_epochs - self._epoch)
        later = self.later_seconds(self.eta) if self.later_seconds else 0.0
        step_s = self.eta.step_seconds
        return {
            "phase": self.phase,
            "epoch": self._epoch + 1,
            "epochs": self.total_epochs,
            "step": step,
            "steps": self.steps_per_epoch,
            "fraction": min(1.0, done / total) if total else 0.0,
            "eta_s": eta + later if eta is not None and later is not None else eta,
            "eta_scope": "run" if later is not None else "phase",
            "images_per_s": self.images_per_step / step_s
            if step_s and self.images_per_step else None,
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
        now = time.time()
        if self._pause_from is not None:
            self.eta.epoch_pause(now - self._pause_from)
            self._pause_from = None
        self._epoch = epoch - self.epoch_offset
        self._epoch_started = self._mark = now
        self._write(0, logs, force=True)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.time()
        self.eta.steps_done(1, now - self._mark)
        self._mark = now
        self._write(batch + 1, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # The pause (validation, checkpoints) runs from the last step to the next epoch.
        self._pause_from = self._mark
        values = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)}
        lr = getattr(self.model.optimizer, "learning_rate", None)
        if lr is not None:
            values["learning_rate"] = float(np.asarray(lr))
        values["seconds"] = time.time() - self._epoch_started
        runs.record_epoch(self.ws, self.run_id, epoch + 1, self.phase, values)
        self._write(self.steps_per_epoch, logs, force=True)


class PredictProgress(keras.callbacks.Callback):
    """Progress and cancel checks while the frozen backbone computes one feature pass.

    `passes` is shared by every pass of the run, so the bar and the ETA cover all of them.
    """

    def __init__(self, ws: Workspace, run_id: str, passes: FeaturePassProgress, pass_name: str,
                 batch_size: int, started: float) -> None:
        super().__init__()
        self.ws, self.run_id = ws, run_id
        self.passes, self.pass_name = passes, pass_name
        self.batch_size = max(1, batch_size)
        self.started = started
        self._last = 0.0
        self._mark = time.time()
        self.cancelled = False

    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.passes.start(self.pass_name)
        self._mark = time.time()

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.time()
        images = self.passes.passes[self.passes.index].images
        in_batch = max(0, min(self.batch_size, images - batch * self.batch_size))
        self.passes.batch_done(in_batch, now - self._mark)
        self._mark = now
        total_steps = -(-images // self.batch_size)
        # The first batch is written at once: from then on there is a rate, hence an ETA.
        if batch > 0 and now - self._last < PROGRESS_INTERVAL_S and batch + 1 < total_steps:
            return
        self._last = now
        progress = {
            "phase": "features",
            "step": batch + 1,
            "steps": total_steps,
            **self.passes.snapshot(),
            "elapsed_s": now - self.started,
        }
        if runs.heartbeat(self.ws, self.run_id, progress):
            self.cancelled = True
            self.model.stop_predicting = True


class KeepBestWeights(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best validation accuracy so far.

    Each save goes to a temporary file, is tagged with its epoch, then renamed: a killed
    worker never leaves a torn file, and a resumed run knows which epoch it holds.
    """

    def __init__(self, path: Path, best_so_far: float | None) -> None:
        super().__init__()
        self.path = path
        self.best = best_so_far

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get("val_accuracy")
        if value is None:
            return
        if self.best is None or float(value) > self.best:
            self.best = float(value)
            save_tagged_weights(self.model, self.path, epoch + 1, self.best)


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


@dataclass(frozen=True)
class PhaseResult:
    epochs_run: int  # epochs this phase ran
    kept_epoch: int  # the global epoch whose weights the model holds after the phase
    kept_val_accuracy: float | None
    last_epoch: int  # the global number of the phase's final epoch


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

    def _feature_matrices(self, clf: Classifier,
                          named: list[tuple[str, list[ImageRecord]]]) -> list[np.ndarray]:
        """Backbone features for each named record list, computing only what the cache lacks.

        The cache is asked first, so one progress bar and one ETA cover every pass that has
        images to compute; passes with nothing to compute are skipped.
        """
        spec = self.spec
        cache = FeatureCache(self.ws)
        key = feature_key(spec.backbone, self._weights_id, spec.image_size)
        planned: list[FeaturePass] = []
        seen: set[str] = set()
        for name, records in named:
            missing = [h for h in cache.lookup(key, [r.hash for r in records]).missing
                       if h not in seen]
            seen.update(missing)
            planned.append(FeaturePass(name, len(missing)))
        passes = FeaturePassProgress(planned)
        matrices = []
        for name, records in named:
            by_hash = {r.hash: r for r in records}

            def compute(missing: list[str], name: str = name,
                        by_hash: dict[str, ImageRecord] = by_hash) -> np.ndarray:
                chosen = [by_hash[h] for h in missing]
                if name not in {p.name for p in passes.passes}:  # planned as fully cached
                    passes.passes.append(FeaturePass(name, len(chosen)))
                progress = PredictProgress(self.ws, self.run.id, passes, name,
                                           spec.batch_size, self.started)
                out = clf.feature_model.predict(
                    self._pixels(chosen, shuffle=False, labels=False),
                    callbacks=[progress],
                    verbose=0,
                )
                if progress.cancelled:
                    raise RunCancelled()
                return np.asarray(out, dtype=np.float32)

            result = features_for(cache, key, [r.hash for r in records], compute)
            self.features_computed += result.computed
            self.features_reused += result.reused
            matrices.append(result.matrix)
        if passes.rate.value:
            self._forward_s_per_image = passes.rate.value
        return matrices

    def _callbacks(self, phase: str, epoch_offset: int, epochs: int, steps: int,
                   best_path: Path, later_seconds: Callable[[EtaEstimator], float | None] | None,
                   ) -> tuple[list[Any], StoreProgress]:
        spec = self.spec
        val_steps = -(-len(self.splits.val) // spec.batch_size)
        progress = StoreProgress(
            self.ws, self.run.id, phase, epoch_offset, epochs, steps, self.started,
            images_per_step=len(self.splits.train) / max(1, steps),
            # Validation runs forward only: about a third of a training step per batch.
            pause_guess_steps=val_steps / 3,
            later_seconds=later_seconds,
        )
        _discard_if_unreadable(best_path)  # left torn by a worker of an older version
        backup = self.dir / "backup" / phase
        if not backup.exists():
            # No state to resume this phase from (new, or cancelled: Keras removes the
            # backup when fit ends), so it starts again at its first epoch.
            runs.clear_metrics_after(self.ws, self.run.id, epoch_offset)
            best_path.unlink(missing_ok=True)
        # After a resume, the kept weights must be beaten by a later epoch to be replaced.
        tag = weights_tag(best_path)
        best_so_far = tag[1] if tag else max(
            (m.get("val_accuracy", 0.0) for m in runs.run_metrics(self.ws, self.run.id)
             if m["phase"] == phase),
            default=None,
        ) if best_path.is_file() else None
        # Progress and the best weights first: an epoch's metrics are in the store before
        # its backup is, so a resume never skips recording an epoch.
        callbacks: list[Any] = [progress]
        if spec.keep_weights == "best":
            callbacks.append(KeepBestWeights(best_path, best_so_far))
        # double_checkpoint: a torn backup (worker killed mid-write) falls back to the
        # previous epoch's copy instead of failing the resume.
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup), double_checkpoint=True))
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
             steps: int, later_seconds: Callable[[EtaEstimator], float | None] | None = None,
             ) -> PhaseResult:
        """One `fit` phase. With keep_weights "best", its best epoch's weights are restored."""
        best_path = self.dir / f"best-{phase}.weights.h5"
        callbacks, progress = self._callbacks(phase, epoch_offset, epochs, steps, best_path,
                                              later_seconds)
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
        phase_metrics = [m for m in runs.run_metrics(self.ws, self.run.id)
                         if m["phase"] == phase]
        last_epoch = max((m["epoch"] for m in phase_metrics), default=epoch_offset)
        kept_epoch = last_epoch
        if self.spec.keep_weights == "best" and best_path.is_file():
            model.load_weights(str(best_path))
            tag = weights_tag(best_path)
            if tag:
                kept_epoch = tag[0]
            else:  # untagged file of an older version: its best, first on ties
                kept_epoch = max(phase_metrics, key=lambda m: m.get("val_accuracy", 0.0),
                                 default={"epoch": last_epoch})["epoch"]
        kept_val = next((m.get("val_accuracy") for m in phase_metrics
                         if m["epoch"] == kept_epoch), None)
        return PhaseResult(last_epoch - epoch_offset, kept_epoch, kept_val, last_epoch)

    def _head_result(self, phase1_done: Path, head_epochs: int) -> PhaseResult:
        """The finished head phase of a resumed two-phase run, from its stored weights."""
        head = [m for m in runs.run_metrics(self.ws, self.run.id) if m["phase"] == "head"]
        last_epoch = max((m["epoch"] for m in head), default=head_epochs)
        tag = weights_tag(phase1_done)
        if tag:
            kept_epoch = tag[0]
        elif self.spec.keep_weights == "best":  # untagged file of an older version
            kept_epoch = max(head, key=lambda m: m.get("val_accuracy", 0.0),
                             default={"epoch": last_epoch})["epoch"]
        else:
            kept_epoch = last_epoch
        kept_val = next((m.get("val_accuracy") for m in head if m["epoch"] == kept_epoch),
                        tag[1] if tag else None)
        return PhaseResult(last_epoch, kept_epoch, kept_val, last_epoch)

    def _fine_tune_seconds(self, steps: int) -> Callable[[EtaEstimator], float | None]:
        """Estimate of the fine-tune phase, while the head phase of two-phase runs.

        A training step through the backbone costs about three forward passes (forward and
        backward); validation one. Measured forward speed comes from this run's feature
        passes; without them, from the head phase's own steps when it ran on pixels.
        """
        spec = self.spec
        n_train, n_val = len(self.splits.train), len(self.splits.val)
        pixels_head = not spec.uses_feature_cache

        def estimate(head: EtaEstimator) -> float | None:
            forward = self._forward_s_per_image
            if forward is not None:
                return spec.epochs * (3 * n_train + n_val) * forward
            if pixels_head and head.step_seconds is not None and head.pause_seconds is not None:
                # A head step already runs the backbone forward; backward about doubles it.
                return spec.epochs * (steps * 2 * head.step_seconds + head.pause_seconds)
            return None

        return estimate

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
        self._forward_s_per_image: float | None = None
        n_classes = len(self.classes)
        with distribution_strategy().scope():
            clf = build_classifier(spec, n_classes)
        steps = -(-len(self.splits.train) // spec.batch_size)
        y_train = _one_hot(self.splits.train, self.index)
        y_val = _one_hot(self.splits.val, self.index)
        head_epochs = spec.epochs if spec.strategy == "frozen" else spec.head_epochs
        phase1_done = self.dir / "phase1.weights.h5"
        val_features = test_features = None
        head: PhaseResult | None = None
        final: PhaseResult

        def plan_for(strategy: str) -> Any:
            return plan_freeze(entry, clf.backbone, strategy, spec.unfreeze, spec.unfreeze_unit,
                               n_classes, spec.hidden_units,
                               freeze_batch_norm=spec.weights != "none")

        if spec.strategy in ("frozen", "two-phase"):
            plan = plan_for("frozen")
            apply_freeze(clf.backbone, plan)
            two_phase = spec.strategy == "two-phase"
            later = self._fine_tune_seconds(steps) if two_phase else None
            if phase1_done.is_file():
                clf.model.load_weights(str(phase1_done))
                head = self._head_result(phase1_done, head_epochs)
            elif spec.uses_feature_cache:
                named = [("training images", self.splits.train),
                         ("validation images", self.splits.val)]
                if not two_phase and self.splits.test:
                    # The saved model is backbone + this head: its test scores come from
                    # the same features, cached for the next run.
                    named.append(("test images", self.splits.test))
                matrices = self._feature_matrices(clf, named)
                x_train, val_features = matrices[0], matrices[1]
                test_features = matrices[2] if len(matrices) > 2 else None
                train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
                    len(x_train), seed=spec.seed, reshuffle_each_iteration=True
                ).batch(spec.batch_size)
                val_ds = tf.data.Dataset.from_tensor_slices((val_features, y_val)).batch(
                    spec.batch_size)
                _compile(clf.head, spec, n_classes, spec.learning_rate)
                head = self._fit(clf.head, "head", train_ds, val_ds, 0, head_epochs, steps,
                                 later)
            else:
                _compile(clf.model, spec, n_classes, spec.learning_rate)
                head = self._fit(clf.model, "head", self._pixels(self.splits.train, True),
                                 self._pixels(self.splits.val, False), 0, head_epochs,
                                 steps, later)
            if two_phase and not phase1_done.is_file():
                save_tagged_weights(clf.model, phase1_done, head.kept_epoch,
                                    head.kept_val_accuracy)
            final = head
            trainable_plan = plan

        if spec.strategy != "frozen":
            fine_strategy = "partial" if spec.strategy == "two-phase" else spec.strategy
            trainable_plan = plan_for(fine_strategy)
            apply_freeze(clf.backbone, trainable_plan)
            lr = spec.learning_rate * spec.fine_tune_lr_factor
            _compile(clf.model, spec, n_classes, lr)
            offset = head.last_epoch if head else 0
            final = self._fit(
                clf.model, "fine-tune", self._pixels(self.splits.train, True),
                self._pixels(self.splits.val, False), offset, spec.epochs, steps,
            )
            val_features = None

        evaluation = self._evaluate(clf, val_features, test_features)
        self._save(clf, evaluation)
        metrics = runs.run_metrics(self.ws, self.run.id)
        last_epoch = metrics[-1]["epoch"] if metrics else final.last_epoch
        summary = {
            "val_accuracy": evaluation["val"]["accuracy"],
            "val_top_k_accuracy": evaluation["val"]["top_k_accuracy"],
            "test_accuracy": evaluation.get("test", {}).get("accuracy"),
            "epochs_run": int(last_epoch),
            "best_epoch": int(final.kept_epoch),
            "final_val_accuracy": metrics[-1].get("val_accuracy") if metrics else None,
            "restored_best": bool(final.kept_epoch < last_epoch),
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
        if spec.strategy == "two-phase" and head is not None:
            summary.update(self._offer_head_weights(clf, phase1_done, head,
                                                    evaluation["val"]["accuracy"]))
        return summary

    def _offer_head_weights(self, clf: Classifier, phase1_done: Path, head: PhaseResult,
                            kept_val_accuracy: float) -> dict[str, Any]:
        """When fine-tuning ended below the head phase, keep the head-phase model beside it."""
        head_model = self.dir / "model-head.keras"
        head_evaluation = self.dir / "evaluation-head.json"
        head_val = head.kept_val_accuracy
        # Accuracies are counts over the same images; the margin only absorbs float32.
        better = head_val is not None and head_val > kept_val_accuracy + 1e-6
        if better:
            with warnings.catch_warnings():
                # Saved before the fine-tune optimizer existed; only the weights matter here.
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                clf.model.load_weights(str(phase1_done))
            evaluation = self._evaluate(clf, None, None)
            tmp = self.dir / ".model-head.tmp.keras"
            clf.model.save(str(tmp))
            tmp.replace(head_model)
            self.ws.write_json_atomic(head_evaluation, evaluation)
            head_val = evaluation["val"]["accuracy"]
        else:  # an earlier attempt of this run may have left them
            head_model.unlink(missing_ok=True)
            head_evaluation.unlink(missing_ok=True)
        return {
            "head_val_accuracy": head_val,
            "head_best_epoch": int(head.kept_epoch),
            "head_model_available": bool(better),
        }

    def _evaluate(self, clf: Classifier, val_features: np.ndarray | None,
                  test_features: np.ndarray | None = None) -> dict[str, Any]:
        result = {}
        for name, records, features in (("val", self.splits.val, val_features),
                                        ("test", self.splits.test, test_features)):
            if not records:
                continue
            if features is not None:
                probs = clf.head.predict(features, batch_size=256, verbose=0)
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


def execute_run(ws: Workspace, run_id: str) -> runs.RunStatus:
    """Train one claimed run to its end state; returns that state. Never raises."""
    import traceback

    try:
        summary = RunTrainer(ws, run_id).train()
    except RunCancelled:
        runs.finish_run(ws, run_id, runs.RunStatus.CANCELLED)
        return runs.RunStatus.CANCELLED
    except Exception as exc:  # a failed run is a stored state, not a crashed worker
        message = f"{type(exc).__name__}: {exc}"
        (ws.run_dir(run_id)).mkdir(parents=True, exist_ok=True)
        (ws.run_dir(run_id) / "error.log").write_text(traceback.format_exc())
        runs.finish_run(ws, run_id, runs.RunStatus.FAILED, error=message)
        return runs.RunStatus.FAILED
    finally:
        keras.backend.clear_session()
    runs.finish_run(ws, run_id, runs.RunStatus.COMPLETED, summary=summary)
    ws.write_json_atomic(ws.run_dir(run_id) / "summary.json", summary)
    return runs.RunStatus.COMPLETED
