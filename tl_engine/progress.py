"""Time estimates for live progress, free of Keras so they can be reasoned about alone.

Two kinds of work report progress: feature passes (the frozen backbone runs once over
the training, validation and test images that the cache lacks) and training phases
(epochs of steps, each epoch followed by a validation pause). Both store a `Progress`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DONE = "done"
FEATURES = "features"


@dataclass(frozen=True)
class Progress:
    """A run's live progress, as the worker last stored it (`runs.heartbeat`).

    `phase` names what runs: "features" (a feature pass), a training phase of the plan
    ("head", "fine-tune", ...) or "done". Fields the current kind of work does not report
    stay None and are left out of the stored JSON; an empty Progress is a run that has
    reported nothing yet.
    """

    phase: str | None = None
    phase_title: str | None = None  # a training phase's title in words
    epoch: int | None = None  # of the phase, 1-based
    epochs: int | None = None
    step: int | None = None  # in the epoch, or batch of a feature pass
    steps: int | None = None
    fraction: float | None = None  # of all the work of this kind so far, 0..1
    eta_s: float | None = None
    eta_scope: str | None = None  # "run" or "phase": what `eta_s` covers
    images_per_s: float | None = None
    elapsed_s: float | None = None  # since the run started
    logs: dict[str, float] | None = None  # Keras's batch logs (loss, accuracy, ...)
    # Feature passes only.
    pass_name: str | None = None  # "training images", "validation images", "test images"
    pass_index: int | None = None  # 1-based, among `passes`
    passes: int | None = None
    images_done: int | None = None  # in the current pass
    images_total: int | None = None  # of the current pass

    def to_dict(self) -> dict[str, Any]:
        return {f.name: value for f in dataclasses.fields(self)
                if (value := getattr(self, f.name)) is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Progress:
        """Keys this version does not know are ignored; missing ones read as None."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in names})


class RateAverage:
    """An exponential moving average of seconds per unit of work.

    The first measurement of a loop carries one-off costs (graph tracing, the input
    pipeline filling up), so the second measurement replaces it instead of being averaged
    with it.
    """

    def __init__(self, smoothing: float = 0.1) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        self.smoothing = smoothing
        self.value: float | None = None
        self._observations = 0

    def add(self, units: float, seconds: float) -> None:
        if units <= 0:
            return
        per_unit = max(0.0, seconds) / units
        self._observations += 1
        if self.value is None or self._observations == 2:
            self.value = per_unit
        else:
            # A chunk of n units weighs like n single-unit observations.
            weight = 1 - (1 - self.smoothing) ** units
            self.value += weight * (per_unit - self.value)

    @property
    def settled(self) -> bool:
        """Past the first measurement, whose one-off costs would otherwise be shown."""
        return self._observations >= 2


class EtaEstimator:
    """Seconds left in a training phase (and the phases after it), smoothed over the phase.

    Training steps and the pause at each epoch's end (validation, checkpoints) are timed
    separately, each with its own moving average, and never reset at an epoch start; the
    pause is then spread over the epoch's steps. So the estimate neither jumps when
    validation starts nor when a new epoch begins. There is no estimate until a second
    step has been timed: the first carries graph tracing. Until the first pause has been
    timed, it is guessed from `pause_guess_steps`: the validation batches, costed as
    training steps (an overestimate that the first measurement corrects).
    """

    def __init__(self, steps_per_epoch: int, pause_guess_steps: float = 0.0,
                 smoothing: float = 0.1) -> None:
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.pause_guess_steps = max(0.0, pause_guess_steps)
        self.step = RateAverage(smoothing)
        # Few pauses are seen (one per epoch): weigh each more.
        self.pause = RateAverage(min(1.0, smoothing * 5))

    def steps_done(self, steps: int, seconds: float) -> None:
        self.step.add(steps, seconds)

    def epoch_pause(self, seconds: float) -> None:
        self.pause.add(1, seconds)

    @property
    def step_seconds(self) -> float | None:
        """Seconds per training step, without the epoch-end pause; None until a second
        measurement has replaced the first (graph tracing made a run's first step look
        ten times slower than the rest)."""
        return self.step.value if self.step.settled else None

    @property
    def pause_seconds(self) -> float | None:
        if self.pause.value is not None:
            return self.pause.value
        step = self.step_seconds
        return None if step is None else step * self.pause_guess_steps

    @property
    def seconds_per_step(self) -> float | None:
        """Seconds per training step including its share of the epoch-end pause."""
        step, pause = self.step_seconds, self.pause_seconds
        if step is None or pause is None:
            return None
        return step + pause / self.steps_per_epoch

    def seconds_left(self, steps_left: int, pauses_left: int) -> float | None:
        step, pause = self.step_seconds, self.pause_seconds
        if step is None or pause is None:
            return None
        return max(0, steps_left) * step + max(0, pauses_left) * pause


@dataclass(frozen=True)
class FeaturePass:
    name: str  # "training images", "validation images", "test images"
    images: int  # images this pass computes (those the cache lacks)


class FeaturePassProgress:
    """Progress over all feature passes of a run together: one bar, one ETA."""

    def __init__(self, passes: list[FeaturePass], smoothing: float = 0.1) -> None:
        self.passes = [p for p in passes if p.images > 0]
        self.rate = RateAverage(smoothing)
        self.index = 0  # into self.passes
        self.images_done = 0  # in the current pass

    @property
    def images_total(self) -> int:
        return sum(p.images for p in self.passes)

    def start(self, name: str) -> None:
        self.index = next(i for i, p in enumerate(self.passes) if p.name == name)
        self.images_done = 0

    def batch_done(self, images: int, seconds: float) -> None:
        current = self.passes[self.index].images
        self.images_done = min(current, self.images_done + images)
        self.rate.add(images, seconds)

    def snapshot(self) -> Progress:
        """Where the passes are, as a run's progress (without the step and the time)."""
        current = self.passes[self.index]
        before = sum(p.images for p in self.passes[: self.index])
        done_overall = before + self.images_done
        left = self.images_total - done_overall
        per_image = self.rate.value
        return Progress(
            phase=FEATURES,
            pass_name=current.name,
            pass_index=self.index + 1,
            passes=len(self.passes),
            images_done=self.images_done,
            images_total=current.images,
            images_per_s=1 / per_image if per_image else None,
            eta_s=left * per_image if per_image is not None else None,
            fraction=done_overall / self.images_total if self.images_total else 1.0,
        )
