"""Training one run, inside a worker process: a loop over the phases of its plan, each a
Model.fit with Keras callbacks.

Progress, per-epoch metrics, checkpoints and the final model all go to the store, so a
page, a second browser or the CLI can follow and reuse them. Each finished phase leaves
its weights, tagged with its result; a resumed run reads those once (`ResumeState`) and
continues the phase it was in from Keras's BackupAndRestore state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf

from . import calibration, familiarity, head_fit, runs
from .activations import ActivationData, activation_data
from .callbacks import (
    KeepBestWeights,
    StoreProgress,
    ValidationOnArrays,
    discard_torn_first_backup,
    weights_tag,
)
from .datasets import Dataset, ImageRecord, load_dataset, split_records
from .device import (
    clear_keras_session,
    configure,
    distribution_strategy,
    inference_pixels,
    seed_job,
    use_precision,
)
from .early_save import EarlySave
from .features import (
    FeaturesCancelled,
    extract_features,
    feature_key,
    inference_batch,
    inference_function,
)
from .freeze import FreezePlan, apply_freeze, layer_rate_factors, plan_freeze
from .model_file import save_keras_model
from .modeling import Classifier, build_classifier
from .optimizers import make_optimizer, variable_factors
from .phases import (
    Phase,
    PhaseResult,
    backup_path,
    done_path,
    phases,
    planned_epochs,
    read_resume_state,
    tag_phase_file,
)
from .pipeline import image_dataset, pixel_cache
from .progress import EtaEstimator, Progress
from .registry import get_backbone
from .scoring import evaluate_predictions, top_k_for
from .spec import RunSpec
from .store import Workspace
from .summary import RunSummary
from .weights import weights_identity

VALIDATION_FEATURES_BATCH = 1024
ACTIVATION_STEPS_PER_CALL = 8

# An untrained backbone's features of the fingerprint image, per feature key: the same for
# every run on those weights in this process. A worker's later runs read them here: after
# the Keras session is cleared between jobs, the pass would cost a fifth of a second.
_untrained_fingerprints: dict[str, np.ndarray] = {}


class RunCancelled(Exception):
    pass


def warm_up() -> None:
    """Pay a worker's fixed costs before its first job: TensorFlow and Keras imported and
    initialised, the default backbone's starting weights read (kept per process, see
    weights.py), and its classifier built and its inference graph traced as a run of the
    default spec would: that run reuses both (see build_classifier's `keep`)."""
    configure()
    spec = RunSpec().normalized()
    seed_job(spec.seed)  # as RunTrainer.train does before its build
    with distribution_strategy().scope():
        clf = build_classifier(spec, n_classes=2, keep=True)
    size = spec.image_size  # a full batch: TensorFlow prepares its kernels per shape
    pixel_type = inference_pixels()
    inference_function(clf.feature_model, size, pixel_type)(np.zeros(
        (inference_batch(clf.feature_model, spec.batch_size), size, size, 3), pixel_type))
    head_fit.warm_up()
    clear_keras_session(free_memory=False)  # what it built is kept: nothing to collect


@dataclass
class Splits:
    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]


def one_hot(records: list[ImageRecord], index: dict[str, int]) -> np.ndarray:
    return np.eye(len(index), dtype=np.float32)[[index[r.label] for r in records]]


def _class_weights(records: list[ImageRecord], index: dict[str, int]) -> dict[int, float]:
    counts = np.bincount([index[r.label] for r in records], minlength=len(index))
    total = counts.sum()
    return {i: float(total / (len(index) * c)) if c else 0.0 for i, c in enumerate(counts)}


def compile_classifier(model: Any, spec: RunSpec, n_classes: int, learning_rate: float,
                       rate_factors: dict[int, float] | None = None,
                       steps_per_execution: int = 1) -> None:
    """`steps_per_execution` > 1 runs that many batches in one graph call: the same
    batches and updates, far less Python per step (callbacks see one call per chunk)."""
    k = top_k_for(n_classes)
    model.compile(
        optimizer=make_optimizer(spec.optimizer, learning_rate, rate_factors),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=spec.label_smoothing),
        metrics=["accuracy", keras.metrics.TopKCategoricalAccuracy(k, name="top_k")],
        steps_per_execution=max(1, steps_per_execution),
    )
    _build_training_state(model, n_classes)


def _build_training_state(model: Any, n_classes: int) -> None:
    """Create the optimizer's and the metrics' variables now, as Keras does under a
    distribution strategy. Otherwise Keras on TensorFlow creates them while tracing the
    first training step, and a graph function that creates variables is traced twice:
    0.3 s more for a head on features, seconds for a whole backbone."""
    build = getattr(model, "_symbolic_build", None)
    if build is None:  # a Keras without it builds them on the first step, as before
        return
    inputs = model.inputs[0] if len(model.inputs) == 1 else list(model.inputs)
    with model.distribute_strategy.scope():
        build(data_batch=(inputs, keras.KerasTensor((None, n_classes), "float32")))


def _discard_if_unreadable(weights_file: Path) -> None:
    if not weights_file.is_file():
        return
    try:
        with h5py.File(weights_file, "r"):
            pass
    except OSError:
        weights_file.unlink()


class RunTrainer:
    """Everything one run needs, loaded once; `train()` loops over the phases of its plan."""

    def __init__(self, ws: Workspace, run_id: str, pixel_dir: Path | None = None) -> None:
        self.ws = ws
        # Where decoded, resized images are kept between the epochs of pixel-path phases
        # (see pipeline.pixel_cache); None decodes every epoch.
        self.pixel_dir = pixel_dir
        self.run = runs.get_run(ws, run_id)
        self.spec = self.run.spec
        self.dir = ws.run_dir(run_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._remove_staging_files_of_earlier_attempts()
        self.dataset: Dataset = load_dataset(ws, self.run.dataset_id)
        self.classes = list(self.dataset.classes)
        self.index = {name: i for i, name in enumerate(self.classes)}
        split = split_records(self.dataset, self.spec.val_split, self.spec.test_split,
                              self.spec.seed)
        self.splits = Splits(split["train"], split["val"], split.get("test", []))
        self.started = time.time()
        self.features_computed = 0
        self.features_reused = 0
        self.activations_computed = 0
        self.activations_reused = 0
        self.notes: list[str] = []  # how phases ran where it is not the obvious way
        if self.spec.test_split > 0 and not self.splits.test:
            self.notes.append(
                f"No test images: a test split of {self.spec.test_split:.0%} was asked for, "
                "but no class has enough images to spare one (a class needs 3 or more).")
        # The cached activations the latest phase trained on, when it trained that way.
        self._activations: ActivationData | None = None
        # A frozen backbone's familiarity profile, fitted while its head trains.
        self._frozen_profile: Future[familiarity.FamiliarityProfile] | None = None
        # The model file being written while the last phase's head trains (early_save.py).
        self._early_save: EarlySave | None = None
        self._forward_s_per_image: float | None = None
        # The epochs the plan has before the current phase, and in all (progress spans
        # the whole run).
        self._planned_epochs: tuple[int, int] | None = None

    # --- helpers -----------------------------------------------------------------
    def _remove_staging_files_of_earlier_attempts(self) -> None:
        """Every file here is written to a staging name, then renamed: staging files from
        before this attempt was claimed are what a killed one left half-written. Newer
        ones may be another process's write in progress (the run's record, on a cancel)."""
        claimed = self.run.started_at or time.time()
        for leftover in [*self.dir.glob(".*.tmp.*"), *self.dir.glob(".tmp-*")]:
            with contextlib.suppress(OSError):  # gone meanwhile: its writer renamed it
                if leftover.stat().st_mtime < claimed:
                    leftover.unlink()

    def _pixels(self, records: list[ImageRecord], shuffle: bool, labels: bool = True,
                pixel_type: str = "float32") -> Any:
        spec = self.spec
        return image_dataset(
            [str(self.ws.image_path(r.hash)) for r in records],
            one_hot(records, self.index) if labels else None,
            spec.image_size,
            spec.batch_size,
            shuffle_seed=spec.seed if shuffle else None,
            augment=spec.augment if shuffle else (),
            augment_seed=spec.seed,
            cache_dir=self.pixel_dir,
            pixel_type=pixel_type,
        )

    def _report(self, progress: Progress) -> bool:
        """Store live progress; True when someone asked to cancel the run."""
        return runs.heartbeat(self.ws, self.run.id, progress)

    @property
    def _feature_key(self) -> str:
        """Where this run's frozen-backbone features are cached (set once `train` knows the
        weights' identity)."""
        return feature_key(self.spec.backbone, self._weights_id, self.spec.image_size,
                           self._policy)

    def _feature_matrices(self, clf: Classifier,
                          named: list[tuple[str, list[ImageRecord]]]) -> list[np.ndarray]:
        key = self._feature_key
        try:
            found = extract_features(self.ws, clf.feature_model, key, named,
                                     self.spec.batch_size, self._report)
        except FeaturesCancelled:
            raise RunCancelled() from None
        self.features_computed += found.computed
        self.features_reused += found.reused
        if found.seconds_per_image:
            self._forward_s_per_image = found.seconds_per_image
        return found.matrices

    def _callbacks(self, phase: str, epoch_offset: int, epochs: int, steps: int,
                   best_path: Path, later_seconds: Callable[[EtaEstimator], float | None] | None,
                   title: str = "", resumable: bool = True) -> tuple[list[Any], StoreProgress]:
        spec = self.spec
        val_steps = -(-len(self.splits.val) // spec.batch_size)
        progress = StoreProgress(
            self.ws, self.run.id, phase, epoch_offset, epochs, steps, self.started,
            images_per_step=len(self.splits.train) / max(1, steps),
            # Validation runs forward only: about a third of a training step per batch.
            pause_guess_steps=val_steps / 3,
            later_seconds=later_seconds, title=title, planned=self._planned_epochs,
            hold_epochs=not resumable,
        )
        _discard_if_unreadable(best_path)  # left torn by a worker of an older version
        backup = backup_path(self.dir, phase)
        if not resumable:  # left by an older version that backed up every phase
            shutil.rmtree(backup, ignore_errors=True)
        discard_torn_first_backup(backup)
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
            callbacks.append(KeepBestWeights(best_path, best_so_far, in_memory=not resumable))
        if resumable:
            # double_checkpoint: a torn backup (worker killed mid-write) falls back to the
            # previous epoch's copy instead of failing the resume.
            callbacks.append(keras.callbacks.BackupAndRestore(str(backup),
                                                              double_checkpoint=True))
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
             title: str = "", resumable: bool = True) -> PhaseResult:
        """One `fit` phase. With keep_weights "best", its best epoch's weights are restored.
        A phase that is not `resumable` writes no backups: a killed run trains it again.
        `val`: a dataset, or a ValidationOnArrays for inputs in memory."""
        def keras_fit(callbacks: list[Any]) -> None:
            data = val
            if isinstance(val, ValidationOnArrays):  # first: the others read what it logs
                callbacks, data = [val, *callbacks], None
            model.fit(
                train,
                validation_data=data,
                shuffle=False,  # `train` is a tf.data pipeline that shuffles itself, seeded
                initial_epoch=epoch_offset,
                epochs=epoch_offset + epochs,
                callbacks=callbacks,
                class_weight=self._class_weight_map(),
                verbose=0,
            )

        return self._train_phase(model, phase, keras_fit, epoch_offset, epochs, steps,
                                 later_seconds, title, resumable)

    def _fit_head(self, head: Any, optimizer: Any, phase: Phase,
                  train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                  epoch_offset: int, steps: int,
                  later_seconds: Callable[[EtaEstimator], float | None]) -> PhaseResult:
        """As `_fit`, for a head on feature matrices, by head_fit's graph (traced once per
        worker, not once per head). Not resumable, as epochs on features take
        milliseconds: a killed run trains the phase again."""
        def graph_fit(callbacks: list[Any]) -> None:
            head_fit.fit_head(
                head, optimizer, train, val, batch_size=self.spec.batch_size,
                epochs=phase.epochs, initial_epoch=epoch_offset, seed=self.spec.seed,
                label_smoothing=self.spec.label_smoothing,
                class_weights=self._class_weight_map(),
                top_k=top_k_for(len(self.classes)), callbacks=callbacks)

        return self._train_phase(head, phase.name, graph_fit, epoch_offset, phase.epochs,
                                 steps, later_seconds, phase.title, resumable=False)

    def _train_phase(self, model: Any, phase: str, train_with: Callable[[list[Any]], None],
                     epoch_offset: int, epochs: int, steps: int,
                     later_seconds: Callable[[EtaEstimator], float | None] | None,
                     title: str, resumable: bool) -> PhaseResult:
        """The run's callbacks for a phase, `train_with` them, and the phase's result."""
        best_path = self.dir / f"best-{phase}.weights.h5"
        callbacks, progress = self._callbacks(phase, epoch_offset, epochs, steps, best_path,
                                              later_seconds, title, resumable)
        try:
            train_with(callbacks)
        finally:  # a phase that failed keeps the figures of the epochs it finished
            progress.flush()
        return self._phase_result(model, phase, callbacks, progress, best_path, epoch_offset)

    def _class_weight_map(self) -> dict[int, float] | None:
        """Class index -> weight when the spec weighs classes, else None."""
        return _class_weights(self.splits.train, self.index) if self.spec.class_weights else None

    def _phase_result(self, model: Any, phase: str, callbacks: list[Any],
                      progress: StoreProgress, best_path: Path,
                      epoch_offset: int) -> PhaseResult:
        """A finished phase's result; with keep_weights "best", its best epoch's weights
        are put back in `model`."""
        if progress.cancelled:
            raise RunCancelled()
        phase_metrics = [m for m in runs.run_metrics(self.ws, self.run.id)
                         if m["phase"] == phase]
        last_epoch = max((m["epoch"] for m in phase_metrics), default=epoch_offset)
        kept_epoch = last_epoch
        keeper = next((c for c in callbacks if isinstance(c, KeepBestWeights)), None)
        if self.spec.keep_weights == "best" and best_path.is_file():
            if not (keeper and keeper.restored):
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

    def _through_cut(self, data: ActivationData, records: list[ImageRecord]) -> np.ndarray:
        """The complete model's probabilities for `records`, computed from their pixels as
        the saved model computes them (not from the float16 cache): its bottom, whose graph
        the activation pass traced, then its top; no whole-model graph to trace."""
        pixel_type = inference_pixels()
        bottom = inference_function(data.cut.bottom, self.spec.image_size, pixel_type)
        outputs = []
        for pixels in self._pixels(records, False, labels=False, pixel_type=pixel_type):
            crossing = bottom(pixels)
            crossing = list(crossing) if isinstance(crossing, (list, tuple)) else [crossing]
            outputs.append(np.asarray(data.cut.top(crossing, training=False)))
        return np.concatenate(outputs)

    @staticmethod
    def _head_probabilities(clf: Classifier, matrices: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The head's probabilities for the validation (and test) features: direct calls
        on the matrices, no predict function to trace."""
        known = {"val": np.asarray(clf.head(matrices[1], training=False))}
        if len(matrices) > 2:
            known["test"] = np.asarray(clf.head(matrices[2], training=False))
        return known

    def _later_seconds(self, later: Sequence[Phase], steps: int,
                       ) -> Callable[[EtaEstimator], float | None]:
        """Estimate of the phases after the current one, from what the current one measures.

        A training step through the backbone costs about three forward passes (forward and
        backward); validation one. A phase on cached activations first passes every image
        through the frozen bottom once, then runs only its trainable top: about the top's
        share of the backbone's blocks (or layers), an upper bound since the top's maps
        are the smallest. Forward speed comes from this run's feature passes, else from the
        current phase's own steps: on pixels with a frozen backbone, backward about doubles
        a step; with a trainable one, a later phase costs about the same.
        """
        n_train, n_val = len(self.splits.train), len(self.splits.val)
        entry = get_backbone(self.spec.backbone)

        def estimate(current: EtaEstimator, trains_backbone: bool) -> float | None:
            total = 0.0
            for phase in later:
                forward = self._forward_s_per_image
                if forward is not None and phase.cached_activations and phase.trainable_top:
                    share = min(1.0, phase.trainable_top
                                / (entry.top_limit(phase.unit) or phase.trainable_top))
                    total += (n_train + n_val) * forward
                    total += phase.epochs * (3 * n_train + n_val) * forward * share
                elif forward is not None:
                    total += phase.epochs * (3 * n_train + n_val) * forward
                elif current.step_seconds is not None and current.pause_seconds is not None:
                    per_step = current.step_seconds * (1 if trains_backbone else 2)
                    total += phase.epochs * (steps * per_step + current.pause_seconds)
                else:
                    return None
            return total

        return estimate

    def _run_phase(self, clf: Classifier, phase: Phase, freeze: FreezePlan, offset: int,
                   steps: int, later: Callable[[EtaEstimator], float | None],
                   last: bool) -> tuple[PhaseResult, dict[str, np.ndarray]]:
        """Fit one phase; returns its result and the model's probabilities for the
        validation (and test) images it could compute from the phase's cached inputs, for
        the evaluation to reuse."""
        spec, n_classes = self.spec, len(self.classes)
        self._activations = None
        rate = spec.learning_rate * phase.lr_factor
        y_train = one_hot(self.splits.train, self.index)
        y_val = one_hot(self.splits.val, self.index)
        if phase.cached_features:
            named = [("training images", self.splits.train),
                     ("validation images", self.splits.val)]
            if last and self.splits.test:
                # The saved model is backbone + this head: its test scores come from the
                # same features, cached for the next run.
                named.append(("test images", self.splits.test))
            matrices = self._feature_matrices(clf, named)
            if last:  # the saved model's backbone is this one, frozen
                self._start_frozen_profile(clf, matrices[0], matrices[1])
            optimizer = make_optimizer(spec.optimizer, rate)
            shape = head_fit.head_shape(clf.head)
            if shape is not None and head_fit.supports(optimizer):
                # The saved model is this backbone and head: its file is written meanwhile.
                early = (EarlySave(clf.model, shape.dense, self.dir / ".model.tmp.keras")
                         if last else None)
                try:
                    result = self._fit_head(clf.head, optimizer, phase,
                                            (matrices[0], y_train), (matrices[1], y_val),
                                            offset, steps, lambda eta: later(eta, False))
                except BaseException:
                    if early is not None:
                        early.abandon()
                    raise
                self._early_save = early
                return result, self._head_probabilities(clf, matrices)
            # A head head_fit does not train, under `fit`.
            train = tf.data.Dataset.from_tensor_slices((matrices[0], y_train)).shuffle(
                len(matrices[0]), seed=spec.seed, reshuffle_each_iteration=True
            ).batch(spec.batch_size)
            # Validation only sums over its images: one large batch is the same result.
            val_batch = max(spec.batch_size, VALIDATION_FEATURES_BATCH)
            val: Any = (ValidationOnArrays(matrices[1], y_val, val_batch)
                        if tf.distribute.get_strategy().num_replicas_in_sync == 1
                        else tf.data.Dataset.from_tensor_slices((matrices[1], y_val)).batch(
                            val_batch))
            # An epoch on features takes milliseconds: one graph call per epoch, so the
            # per-step Python (callbacks, iterator, dispatch) is paid once, not per batch.
            compile_classifier(clf.head, spec, n_classes, rate, steps_per_execution=steps)
            # Epochs on cached features take milliseconds: a killed run trains the phase
            # again rather than write a backup every epoch.
            result = self._fit(clf.head, phase.name, train, val, offset, phase.epochs, steps,
                               lambda eta: later(eta, False), phase.title, resumable=False)
            return result, self._head_probabilities(clf, matrices)
        factors = variable_factors(clf.backbone, layer_rate_factors(freeze, phase.lr_decay))
        why = phase.pixels_reason
        if phase.cached_activations:  # the top of the backbone and the head, shared weights
            try:
                data = activation_data(self.ws, clf, freeze, spec, self._feature_key,
                                       (self.splits.train, y_train), (self.splits.val, y_val),
                                       self._report)
            except FeaturesCancelled:
                raise RunCancelled() from None
            if not isinstance(data, str):
                self.activations_computed += data.computed
                self.activations_reused += data.reused
                # A step on activations takes tens of milliseconds: a few per graph call
                # saves Python's share of each, with progress still within the epoch.
                compile_classifier(data.cut.top, spec, n_classes, rate, factors,
                                   steps_per_execution=min(steps, ACTIVATION_STEPS_PER_CALL))
                self._activations = data
                result = self._fit(data.cut.top, phase.name, data.train, data.val, offset,
                                   phase.epochs, steps, lambda eta: later(eta, True),
                                   phase.title)
                if not last:
                    return result, {}
                known = {"val": self._through_cut(data, self.splits.val)}
                if self.splits.test:
                    known["test"] = self._through_cut(data, self.splits.test)
                return result, known
            why = data
        if why:
            self.notes.append(f"{phase.title}: the whole model ran on pixels every epoch, not "
                              f"on cached activations: {why}.")
        compile_classifier(clf.model, spec, n_classes, rate, factors)
        result = self._fit(clf.model, phase.name, self._pixels(self.splits.train, True),
                           self._pixels(self.splits.val, False), offset, phase.epochs, steps,
                           lambda eta: later(eta, phase.trains_backbone), phase.title)
        return result, {}

    # --- the run -------------------------------------------------------------------
    def train(self) -> RunSummary:
        try:
            return self._train()
        finally:
            if self._early_save is not None:  # stopped before the model file was finished
                self._early_save.abandon()
                self._early_save = None

    def _train(self) -> RunSummary:
        spec = self.spec
        device = configure()
        # The batch a step really has, as lr-find decides (a set smaller than the batch).
        self._policy = use_precision(min(spec.batch_size, len(self.splits.train)))
        seed_job(spec.seed)
        entry = get_backbone(spec.backbone)
        self._weights_id = weights_identity(entry, spec.weights, spec.seed)
        n_classes = len(self.classes)
        with distribution_strategy().scope():
            clf = build_classifier(spec, n_classes, keep=True)
        steps = -(-len(self.splits.train) // spec.batch_size)
        plan = phases(spec)

        def freeze_for(phase: Phase) -> FreezePlan:
            return plan_freeze(entry, clf.backbone, phase.trainable_top, phase.unit, n_classes,
                               spec.hidden_units, freeze_batch_norm=spec.weights != "none")

        state = read_resume_state(self.dir, plan, runs.run_metrics(self.ws, self.run.id),
                                  keep_best=spec.keep_weights == "best")
        results = list(state.done)
        if results:  # the weights the last finished phase left
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Skipping variable loading for")
                clf.model.load_weights(str(done_path(self.dir, plan[len(results) - 1].name)))
        known: dict[str, np.ndarray] = {}
        for index in range(state.next_index(), len(plan)):
            phase, last = plan[index], index == len(plan) - 1
            self._planned_epochs = (planned_epochs(plan[:index]), planned_epochs(plan))
            freeze = freeze_for(phase)
            apply_freeze(clf.backbone, freeze)
            result, known = self._run_phase(
                clf, phase, freeze, results[-1].last_epoch if results else 0, steps,
                self._later_seconds(plan[index + 1:], steps), last)
            results.append(result)
            if not last:
                self._keep_phase_weights(clf, phase, result)

        final = results[-1]
        final_freeze = freeze_for(plan[-1])
        cached = any(phase.cached_activations for phase in plan)
        evaluation = self._evaluate(clf, known)
        self._save(clf, evaluation)
        self._store_familiarity(clf, any(phase.trains_backbone for phase in plan))
        metrics = runs.run_metrics(self.ws, self.run.id)
        last_epoch = metrics[-1]["epoch"] if metrics else final.last_epoch
        summary = RunSummary(
            val_accuracy=evaluation["val"]["accuracy"],
            val_top_k_accuracy=evaluation["val"]["top_k_accuracy"],
            test_accuracy=evaluation.get("test", {}).get("accuracy"),
            epochs_run=int(last_epoch),
            best_epoch=int(final.kept_epoch),
            final_val_accuracy=metrics[-1].get("val_accuracy") if metrics else None,
            restored_best=bool(final.kept_epoch < last_epoch),
            # Every attempt's: a resumed run's earlier ones trained too.
            seconds=self.run.earlier_seconds + time.time() - self.started,
            model_path=str(self.dir / "model.keras"),
            classes=tuple(self.classes),
            n_train=len(self.splits.train),
            n_val=len(self.splits.val),
            n_test=len(self.splits.test),
            features_computed=self.features_computed,
            features_reused=self.features_reused,
            trainable_params=final_freeze.trainable_params,
            frozen_params=final_freeze.frozen_params,
            device=device.label,
            weights_identity=self._weights_id,
            **calibration.summary_fields(evaluation),
            activations_computed=self.activations_computed if cached else None,
            activations_reused=self.activations_reused if cached else None,
            notes=tuple(self.notes),
        )
        if len(plan) > 1 and not plan[0].trains_backbone:
            summary = self._offer_head_weights(clf, done_path(self.dir, plan[0].name),
                                               results[0], summary)
        return summary

    def _store_familiarity(self, clf: Classifier, backbone_trained: bool) -> None:
        """What the training images look like to the saved model, for prediction to flag
        images unlike them. A trained backbone's features are not the cached ones."""
        if not backbone_trained and self._frozen_profile is not None:
            profile = self._frozen_profile.result()
        else:
            profile = self._fit_profile(clf, backbone_trained)
        familiarity.save_profile(self.ws, self.dir, profile)

    def _start_frozen_profile(self, clf: Classifier, train: np.ndarray,
                              val: np.ndarray) -> None:
        """A frozen backbone's profile depends on the cached features alone: it is fitted
        (or read) in a thread while the head trains, NumPy beside TensorFlow."""
        fingerprint = self._fingerprint(clf, backbone_trained=False)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tl-profile")
        self._frozen_profile = pool.submit(self._frozen_backbone_profile, train, val,
                                           fingerprint)
        pool.shutdown(wait=False)

    def _frozen_backbone_profile(self, train: np.ndarray, val: np.ndarray,
                                 fingerprint: np.ndarray) -> familiarity.FamiliarityProfile:
        """The profile of the untrained backbone's features, shared by every run on the
        same images (see familiarity.shared_profile)."""
        labels = np.array([self.index[r.label] for r in self.splits.train])
        return familiarity.shared_profile(self.ws, self._feature_key,
                                          [r.hash for r in self.splits.train],
                                          labels, train, [r.hash for r in self.splits.val],
                                          val, fingerprint)

    def _fingerprint(self, clf: Classifier, backbone_trained: bool) -> np.ndarray:
        if not backbone_trained and self._feature_key in _untrained_fingerprints:
            return _untrained_fingerprints[self._feature_key]
        image = familiarity.fingerprint_image(self.spec.image_size)
        forward = inference_function(clf.feature_model, self.spec.image_size)
        if forward.experimental_get_tracing_count():  # a feature pass of this backbone traced it
            features = np.asarray(forward(image))
        else:  # one image, called directly: tracing a graph for it would cost more
            features = np.asarray(clf.feature_model(image, training=False))
        if not backbone_trained:
            _untrained_fingerprints[self._feature_key] = features
        return features

    def _fit_profile(self, clf: Classifier, backbone_trained: bool,
                     ) -> familiarity.FamiliarityProfile:
        parts = [self.splits.train, self.splits.val]
        if backbone_trained and self._activations is not None:
            # The last phase trained the top on cached activations: the trained features
            # of every image are the top's, run on them (the bottom did not change).
            features = self._activations.cut.features
            matrices = [self._activations.train_outputs(features),
                        self._activations.val_outputs(features)]
        elif backbone_trained:
            matrices = [np.asarray(clf.feature_model.predict(
                self._pixels(part, False, labels=False), verbose=0)) if part
                else np.zeros((0, 1)) for part in parts]
        else:
            try:
                matrices = extract_features(self.ws, clf.feature_model, self._feature_key, list(zip(
                    ("training images", "validation images"), parts, strict=True)),
                    self.spec.batch_size, self._report).matrices
            except FeaturesCancelled:
                raise RunCancelled() from None
        fingerprint = self._fingerprint(clf, backbone_trained)
        if backbone_trained:
            labels = np.array([self.index[r.label] for r in parts[0]])
            return familiarity.fit_profile(matrices[0], labels, matrices[1], fingerprint)
        return self._frozen_backbone_profile(matrices[0], matrices[1], fingerprint)

    def _keep_phase_weights(self, clf: Classifier, phase: Phase, result: PhaseResult) -> None:
        """The weights a finished phase leaves, tagged with its result, written atomically:
        a resumed run starts the next phase from them."""
        path = done_path(self.dir, phase.name)
        tmp = path.with_name(f".{path.name.removesuffix('.weights.h5')}.tmp.weights.h5")
        clf.model.save_weights(str(tmp))
        tag_phase_file(tmp, result)
        tmp.replace(path)

    def _offer_head_weights(self, clf: Classifier, phase1_done: Path, head: PhaseResult,
                            summary: RunSummary) -> RunSummary:
        """When fine-tuning ended below the head phase, keep the head-phase model beside it;
        `summary` gains the head phase's result."""
        head_model = self.dir / "model-head.keras"
        head_evaluation = self.dir / "evaluation-head.json"
        head_val = head.kept_val_accuracy
        # Accuracies are counts over the same images; the margin only absorbs float32.
        better = head_val is not None and head_val > summary.val_accuracy + 1e-6
        if better:
            with warnings.catch_warnings():
                # Saved before the fine-tune optimizer existed; only the weights matter here.
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                clf.model.load_weights(str(phase1_done))
            evaluation = self._evaluate(clf, {})
            tmp = self.dir / ".model-head.tmp.keras"
            save_keras_model(clf.model, tmp)
            tmp.replace(head_model)
            self.ws.write_json_atomic(head_evaluation, evaluation)
            head_val = evaluation["val"]["accuracy"]
        else:  # an earlier attempt of this run may have left them
            head_model.unlink(missing_ok=True)
            head_evaluation.unlink(missing_ok=True)
        return dataclasses.replace(summary, head_val_accuracy=head_val,
                                   head_best_epoch=int(head.kept_epoch),
                                   head_model_available=bool(better))

    def _evaluate(self, clf: Classifier, known: dict[str, np.ndarray]) -> dict[str, Any]:
        """Scores on the validation and test images: from `known` probabilities (the last
        phase's, from its cached inputs) where given, else the complete model on pixels."""
        result, scored = {}, {}
        for name, records in (("val", self.splits.val), ("test", self.splits.test)):
            if not records:
                continue
            probs = known.get(name)
            if probs is None:
                probs = clf.model.predict(self._pixels(records, False, labels=False), verbose=0)
            y_true = np.array([self.index[r.label] for r in records])
            images = [{"hash": r.hash, "filename": r.filename} for r in records]
            result[name] = evaluate_predictions(y_true, probs, self.classes, images)
            scored[name] = (y_true, probs)
        if "val" in scored:  # the temperature prediction and exports apply, and its effect
            result["calibration"] = calibration.calibration_report(scored["val"],
                                                                   scored.get("test"))
        return result

    def _save(self, clf: Classifier, evaluation: dict[str, Any]) -> None:
        model_file = self.dir / "model.keras"
        if self._early_save is not None:
            tmp = self._early_save.finish()
            self._early_save = None
        else:
            tmp = self.dir / ".model.tmp.keras"
            save_keras_model(clf.model, tmp)
        tmp.replace(model_file)
        self.ws.write_json_atomic(self.dir / "evaluation.json", evaluation)
        self.ws.write_json_atomic(self.dir / "labels.json", self.classes)
        labels_txt = ("\n".join(self.classes) + "\n").encode()
        self.ws.write_bytes_atomic(self.dir / "labels.txt", labels_txt)
        self.ws.write_json_atomic(self.dir / "spec.json", self.spec.to_dict())


def execute_run(ws: Workspace, run_id: str) -> runs.RunStatus:
    """Train one claimed run to its end state; returns that state. Never raises."""
    import traceback

    # Keras's state is cleared after the run's end is stored: whoever waits for the run
    # does not wait for the garbage collection that clearing runs.
    try:
        try:
            with pixel_cache(ws) as pixel_dir:
                summary = RunTrainer(ws, run_id, pixel_dir).train()
        except RunCancelled:
            runs.finish_run(ws, run_id, runs.RunStatus.CANCELLED)
            return runs.RunStatus.CANCELLED
        except Exception as exc:  # a failed run is a stored state, not a crashed worker
            message = f"{type(exc).__name__}: {exc}"
            (ws.run_dir(run_id)).mkdir(parents=True, exist_ok=True)
            (ws.run_dir(run_id) / "error.log").write_text(traceback.format_exc())
            runs.finish_run(ws, run_id, runs.RunStatus.FAILED, error=message)
            return runs.RunStatus.FAILED
        runs.finish_run(ws, run_id, runs.RunStatus.COMPLETED, summary=summary.to_dict())
        ws.write_json_atomic(ws.run_dir(run_id) / "summary.json", summary.to_dict())
        return runs.RunStatus.COMPLETED
    finally:
        clear_keras_session()
