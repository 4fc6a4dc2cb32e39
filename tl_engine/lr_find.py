"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates"; fastai's lr_find).

A short training of the first phase a spec trains in, with the learning rate rising
exponentially from 1e-7 to 1 over about 100 steps. While it runs, an exponential moving
average of the loss (with bias correction, as fastai does) stops it once it passes 4 × its
minimum. Afterwards the loss is smoothed again with a centred moving average, which does
not lag: an average over the past shifts the curve towards higher rates by several
decades when the rate rises a decade every 14 steps, and with it the suggestion. The
suggestion is the point of steepest descent of that curve against log(rate), before its
minimum: where the loss falls fastest. The minimum ÷ 10 is stored beside it.

It runs as a job of kind "lr-find" in the shared queue. Its spec is the run's with the
settings that do not change the test (learning rate, epochs, early stopping, ...) at
their defaults, so one test serves every learning rate the form may hold.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import runs
from .runs import RunRecord, RunStatus
from .spec import RunSpec, default
from .store import Workspace

LR_FIND_KIND = "lr-find"
START_LR = 1e-7
END_LR = 1.0
STEPS = 100
SMOOTHING = 0.98  # weight of the past in the moving average that decides when to stop
CENTRED_HALF_WIDTH = 5  # neighbours either side in the curve the suggestion is read from
DIVERGED = 4.0  # stop once the smoothed loss exceeds this × its minimum
MIN_STEPS = 10  # never stop before this many steps: the first losses are noisy
SLOPE_WINDOW = 5  # points either side that a slope is fitted through
SUGGESTED_BY = "steepest descent of the smoothed loss"
# Settings the range test's first phase does not depend on.
_IRRELEVANT = ("learning_rate", "epochs", "early_stopping", "reduce_lr", "keep_weights",
               "test_split", "head_epochs", "epochs_per_stage", "fine_tune_lr_factor")


def lr_find_spec(spec: RunSpec | Mapping[str, Any]) -> RunSpec:
    """The spec a range test of `spec` stores: equal for drafts that differ only in what
    the test does not use."""
    spec = spec if isinstance(spec, RunSpec) else RunSpec.from_dict(dict(spec))
    spec = spec.normalized()
    return dataclasses.replace(spec, **{name: default(name) for name in _IRRELEVANT}
                               ).normalized()


def rate_at(step: int, steps: int = STEPS, start: float = START_LR,
            end: float = END_LR) -> float:
    """The exponentially rising learning rate of step `step` (0-based) of `steps`."""
    return start * (end / start) ** (step / max(1, steps - 1))


def centred(losses: Sequence[float], half: int = CENTRED_HALF_WIDTH) -> list[float]:
    """Each loss averaged with up to `half` neighbours either side (fewer at the ends)."""
    values = np.asarray(losses, dtype=float)
    return [float(values[max(0, i - half):i + half + 1].mean()) for i in range(len(values))]


def smooth(losses: Sequence[float], beta: float = SMOOTHING) -> list[float]:
    """Exponential moving average with bias correction (fastai's smoothing)."""
    average, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**i))
    return out


def suggestions(points: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """{"steepest": ..., "minimum_div10": ...} from [[rate, smoothed loss], ...].

    The slope at each point is a least-squares line through its neighbours (SLOPE_WINDOW
    either side) against log10(rate): a step-to-step difference of a noisy loss would pick
    noise in the flat start. Only points before the minimum, after the first MIN_STEPS,
    count; without a falling stretch there, the minimum ÷ 10 stands in."""
    finite = [(lr, loss) for lr, loss in points if math.isfinite(loss)]
    if len(finite) < 5:
        return {"steepest": None, "minimum_div10": None}
    rates = np.log10(np.array([lr for lr, _ in finite]))
    losses = np.array([loss for _, loss in finite])
    lowest = int(np.argmin(losses))
    minimum_div10 = float(10 ** rates[lowest] / 10)
    best_slope, steepest = 0.0, None
    for i in range(min(MIN_STEPS, lowest), lowest + 1):
        low, high = max(0, i - SLOPE_WINDOW), min(lowest, i + SLOPE_WINDOW) + 1
        if high - low < 3:
            continue
        slope = float(np.polyfit(rates[low:high], losses[low:high], 1)[0])
        if slope < best_slope:
            best_slope, steepest = slope, float(10 ** rates[i])
    return {"steepest": steepest if steepest is not None else minimum_div10,
            "minimum_div10": minimum_div10}


def _range_test_callback(ws: Workspace, run_id: str, steps: int) -> Any:
    import keras

    from .progress import Progress

    class RangeTest(keras.callbacks.Callback):
        """Sets each step's rate before it runs, records its loss after (one step per
        Keras epoch, so the logged loss is that step's own, not a running mean)."""

        def __init__(self) -> None:
            super().__init__()
            self.rates: list[float] = []
            self.losses: list[float] = []
            self.smoothed: list[float] = []
            self.cancelled = False
            self._last_report = 0.0
            self._started = time.time()

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            self.model.optimizer.learning_rate.assign(rate_at(len(self.rates), steps))

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            loss = float((logs or {}).get("loss", float("nan")))
            self.rates.append(rate_at(len(self.rates), steps))
            self.losses.append(loss)
            self.smoothed = smooth(self.losses)
            current = self.smoothed[-1]
            done = len(self.rates)
            if not math.isfinite(current) or (
                    done >= MIN_STEPS and current > DIVERGED * min(self.smoothed)):
                self.model.stop_training = True
            now = time.time()
            if now - self._last_report > 1.0 or self.model.stop_training or done == steps:
                self._last_report = now
                progress = Progress(phase="lr-find", phase_title="Learning-rate range test",
                                    step=done, steps=steps, fraction=done / steps,
                                    elapsed_s=now - self._started,
                                    logs={"loss": loss, "learning_rate": self.rates[-1]})
                if runs.heartbeat(ws, run_id, progress):
                    self.cancelled = True
                    self.model.stop_training = True

    return RangeTest()


def run_range_test(ws: Workspace, run: RunRecord, steps: int = STEPS) -> dict[str, Any] | None:
    """The range test of `run`'s first phase; its summary, or None when cancelled."""
    import tensorflow as tf

    from .datasets import load_dataset, split_records
    from .device import (
        clear_keras_session,
        configure,
        distribution_strategy,
        seed_job,
        use_precision,
    )
    from .features import FeaturesCancelled, extract_features, feature_key
    from .freeze import apply_freeze, layer_rate_factors, plan_freeze
    from .modeling import build_classifier
    from .optimizers import variable_factors
    from .phases import phases
    from .pipeline import image_dataset
    from .registry import get_backbone
    from .training import compile_classifier, one_hot
    from .weights import weights_identity

    started = time.time()
    spec = run.spec
    configure()
    seed_job(spec.seed)
    dataset = load_dataset(ws, run.dataset_id)
    classes = list(dataset.classes)
    index = {name: i for i, name in enumerate(classes)}
    train = split_records(dataset, spec.val_split, spec.test_split, spec.seed)["train"]
    batch = min(spec.batch_size, len(train))
    policy = use_precision(batch)  # as the run it tunes will train
    y = one_hot(train, index)
    phase = phases(spec)[0]
    entry = get_backbone(spec.backbone)
    with distribution_strategy().scope():
        clf = build_classifier(spec, len(classes))
    freeze = plan_freeze(entry, clf.backbone, phase.trainable_top, phase.unit, len(classes),
                         spec.hidden_units, freeze_batch_norm=spec.weights != "none")
    apply_freeze(clf.backbone, freeze)
    if phase.cached_features:
        key = feature_key(spec.backbone, weights_identity(entry, spec.weights, spec.seed),
                          spec.image_size, policy)
        try:
            found = extract_features(ws, clf.feature_model, key, [("training images", train)],
                                     spec.batch_size,
                                     lambda progress: runs.heartbeat(ws, run.id, progress))
        except FeaturesCancelled:
            return None
        # Equal batches of feature vectors, reshuffled on every pass, as many as needed.
        data = tf.data.Dataset.from_tensor_slices((found.matrices[0], y)).shuffle(
            len(train), seed=spec.seed, reshuffle_each_iteration=True).repeat()
        data = data.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        model, factors = clf.head, None
    else:
        # Photos are decoded as batches are needed, in an order reshuffled on every pass
        # (file names are shuffled, never decoded pixels): memory stays a few batches
        # whatever the dataset's size. A pass's last, smaller batch is left out.
        paths = [str(ws.image_path(r.hash)) for r in train]
        data = image_dataset(paths, y, spec.image_size, batch, shuffle_seed=spec.seed,
                             augment=spec.augment, augment_seed=spec.seed).repeat()
        data = data.filter(lambda pixels, labels: tf.shape(pixels)[0] == batch)
        model = clf.model
        factors = variable_factors(clf.backbone, layer_rate_factors(freeze, phase.lr_decay))
    compile_classifier(model, spec, len(classes), START_LR, factors)
    callback = _range_test_callback(ws, run.id, steps)
    try:
        model.fit(data, steps_per_epoch=1, epochs=steps, callbacks=[callback], shuffle=False,
                  verbose=0)
    finally:
        clear_keras_session()
    if callback.cancelled:
        return None
    finite = [(lr, loss) for lr, loss in zip(callback.rates, callback.losses, strict=True)
              if math.isfinite(loss)]
    points = [[lr, loss] for (lr, _), loss in zip(finite, centred([v for _, v in finite]),
                                                  strict=True)]
    found_rates = suggestions(points)
    return {
        "suggested_lr": found_rates["steepest"],
        "suggested_by": SUGGESTED_BY,
        "minimum_div10_lr": found_rates["minimum_div10"],
        "points": points,
        "raw_losses": [loss if math.isfinite(loss) else None for loss in callback.losses],
        "phase": phase.name,
        "phase_title": phase.title,
        "trainable": phase.trainable_text,
        "steps": len(callback.rates),
        "batch_size": batch,
        "start_lr": START_LR,
        "end_lr": END_LR,
        "seconds": time.time() - started,
    }


def execute_lr_find(ws: Workspace, run_id: str) -> RunStatus:
    """The worker's executor for an "lr-find" job."""
    summary = run_range_test(ws, runs.get_run(ws, run_id))
    if summary is None:
        runs.finish_run(ws, run_id, RunStatus.CANCELLED)
        return RunStatus.CANCELLED
    if summary["suggested_lr"] is None:
        runs.finish_run(ws, run_id, RunStatus.FAILED, summary=summary, error=(
            "The loss diverged within the first steps of the range test: no learning rate "
            "to suggest. Check the images and labels, or use a smaller batch."))
        return RunStatus.FAILED
    runs.finish_run(ws, run_id, RunStatus.COMPLETED, summary=summary)
    return RunStatus.COMPLETED


def submit_lr_find(ws: Workspace, project: str, dataset_id: str,
                   spec: RunSpec | Mapping[str, Any], started_by: str | None = None,
                   start_worker: bool = True) -> Any:
    """Queue a range test of `spec`'s first phase (or find the stored one)."""
    from .jobs import submit_job

    return submit_job(ws, project, dataset_id, lr_find_spec(spec), kind=LR_FIND_KIND,
                      started_by=started_by, start_worker=start_worker)


def latest_lr_find(ws: Workspace, project: str, dataset_id: str,
                   spec: RunSpec | Mapping[str, Any]) -> RunRecord | None:
    """The newest range test of this spec on this dataset (any status), if any."""
    wanted = lr_find_spec(spec)
    return next((r for r in runs.list_runs(ws, project, kind=LR_FIND_KIND)
                 if r.dataset_id == dataset_id and r.spec == wanted), None)
