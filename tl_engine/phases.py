"""Freeze strategies as phase plans, and where an interrupted run picks its plan up again.

`phases(spec)` is the whole of each strategy: which part of the backbone trains in each
phase, for how many epochs, at what learning rate, and whether cached features (or cached
activations at the freeze boundary) serve it.
The trainer only loops over the phases; a new recipe is a new entry here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .spec import RunSpec

ALL = None  # Phase.trainable_top: the whole backbone trains


@dataclass(frozen=True)
class Phase:
    name: str  # names the phase's metrics, progress and files: "head", "fine-tune", "stage-2"
    title: str  # for people: "Training the head", "Stage 2 of 3: top 2 blocks"
    epochs: int
    trainable_top: int | None  # backbone layers or blocks that train, from the top; 0: none
    unit: str  # what trainable_top counts: "layers" or "blocks"
    lr_factor: float  # times the spec's learning rate
    lr_decay: float  # per backbone block from the top down (1: one rate for all)
    cached_features: bool  # a frozen backbone that sees each image the same way every epoch
    # Only the top of the backbone trains and the frozen bottom sees each image the same
    # way every epoch: the bottom's activations are cached and only the top runs.
    cached_activations: bool = False
    # Why a phase that trains only the top of the backbone runs the whole model on pixels
    # every epoch instead (None when it does not, or when nothing could be cached).
    pixels_reason: str | None = None

    @property
    def trains_backbone(self) -> bool:
        return self.trainable_top != 0

    @property
    def trainable_text(self) -> str:
        if self.trainable_top == 0:
            return "head only"
        if self.trainable_top is ALL:
            return "everything"
        unit = self.unit if self.trainable_top != 1 else self.unit.removesuffix("s")
        return f"top {self.trainable_top} {unit} + head"


def _head(spec: RunSpec, epochs: int) -> Phase:
    return Phase("head", "Training the head", epochs, 0, "layers", 1.0, 1.0,
                 cached_features=not spec.augment)


def _backbone_top(spec: RunSpec, name: str, title: str, epochs: int, top: int | None,
                  lr_factor: float) -> Phase:
    """A phase training `top` of the backbone (and the head). It runs on cached activations
    when only part of the backbone trains, unless the reason it cannot is recorded."""
    partly = top is not ALL and top != 0
    reason = _why_pixels(spec) if partly else None
    return Phase(name, title, epochs, top, spec.unfreeze_unit, lr_factor, spec.lr_decay,
                 cached_features=False, cached_activations=partly and reason is None,
                 pixels_reason=reason)


def _why_pixels(spec: RunSpec) -> str | None:
    """Why the frozen bottom's activations cannot be cached for this spec, if so."""
    if spec.augment:
        return "augmentation changes each image every epoch"
    if spec.weights == "none":  # ~1e-8 in MobileNetV2
        return ("a backbone with random starting weights gives activations too small to "
                "keep in float16")
    return None


def _fine_tune(spec: RunSpec, top: int | None, lr_factor: float) -> Phase:
    return _backbone_top(spec, "fine-tune", "Fine-tuning", spec.epochs, top, lr_factor)


def phases(spec: RunSpec) -> list[Phase]:
    """The phases a (normalized) spec trains in, in order."""
    if spec.strategy == "frozen":
        return [_head(spec, spec.epochs)]
    if spec.strategy == "partial":
        return [_fine_tune(spec, spec.unfreeze, 1.0)]
    if spec.strategy == "full":
        return [_fine_tune(spec, ALL, 1.0)]
    if spec.strategy == "two-phase":
        return [_head(spec, spec.head_epochs),
                _fine_tune(spec, spec.unfreeze, spec.fine_tune_lr_factor)]
    if spec.strategy == "gradual":
        stages = max(1, spec.unfreeze)
        unit = spec.unfreeze_unit.removesuffix("s")
        return [_head(spec, spec.head_epochs)] + [
            _backbone_top(spec, f"stage-{k}",
                          f"Stage {k} of {stages}: top {k} {unit}{'s' if k > 1 else ''}",
                          spec.epochs if k == stages else spec.epochs_per_stage, k,
                          spec.fine_tune_lr_factor)
            for k in range(1, stages + 1)
        ]
    raise ValueError(f"no phase plan for strategy {spec.strategy!r}")


def planned_epochs(plan: Sequence[Phase]) -> int:
    return sum(phase.epochs for phase in plan)


# --- resuming -------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseResult:
    epochs_run: int  # epochs this phase ran
    kept_epoch: int  # the global epoch whose weights the model holds after the phase
    kept_val_accuracy: float | None
    last_epoch: int  # the global number of the phase's final epoch


def done_path(run_dir: Path, phase_name: str) -> Path:
    """Where the weights a finished phase left are kept (tagged with its result)."""
    legacy = run_dir / "phase1.weights.h5"  # two-phase runs of earlier versions
    if phase_name == "head" and legacy.is_file():
        return legacy
    return run_dir / f"done-{phase_name}.weights.h5"


def backup_path(run_dir: Path, phase_name: str) -> Path:
    """Where Keras's BackupAndRestore keeps a phase's state between epochs; a phase without
    one starts again from its first epoch."""
    return run_dir / "backup" / phase_name


def tag_phase_file(path: Path, result: PhaseResult) -> None:
    """Record the phase's result in its (just written, not yet renamed) weights file."""
    import h5py  # here, not above: the CLI's `train` imports this module and never needs it

    with h5py.File(path, "a") as handle:
        handle.attrs["epoch"] = int(result.kept_epoch)
        handle.attrs["last_epoch"] = int(result.last_epoch)
        handle.attrs["epochs_run"] = int(result.epochs_run)
        if result.kept_val_accuracy is not None:
            handle.attrs["val_accuracy"] = float(result.kept_val_accuracy)


def read_phase_file(path: Path, metrics: Sequence[dict], phase_name: str,
                    keep_best: bool) -> PhaseResult | None:
    """The result a finished phase stored with its weights; None when it has none or the
    file is torn. Files of earlier versions lack some tags: the phase's metrics fill in."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            attrs = dict(handle.attrs)
    except (OSError, FileNotFoundError):
        return None
    mine = [m for m in metrics if m.get("phase") == phase_name]
    last_epoch = int(attrs.get("last_epoch", max((m["epoch"] for m in mine), default=0)))
    if "epoch" in attrs:
        kept_epoch = int(attrs["epoch"])
    elif keep_best and mine:  # untagged file: its best epoch, the first on ties
        kept_epoch = max(mine, key=lambda m: m.get("val_accuracy", 0.0))["epoch"]
    else:
        kept_epoch = last_epoch
    value = attrs.get("val_accuracy")
    kept_val = float(value) if value is not None else next(
        (m.get("val_accuracy") for m in mine if m["epoch"] == kept_epoch), None)
    first_epoch = min((m["epoch"] for m in mine), default=1)
    epochs_run = int(attrs.get("epochs_run", last_epoch - first_epoch + 1 if mine else 0))
    return PhaseResult(epochs_run, kept_epoch, kept_val, last_epoch)


@dataclass(frozen=True)
class ResumeState:
    """What earlier attempts of a run finished: the results of its first phases, in order.
    Read once when a run starts; the phase it stopped in resumes from Keras's backup."""

    done: tuple[PhaseResult, ...]

    def next_index(self) -> int:
        return len(self.done)

    def epoch_offset(self) -> int:
        return self.done[-1].last_epoch if self.done else 0


def read_resume_state(run_dir: Path, plan: Sequence[Phase], metrics: Sequence[dict],
                      keep_best: bool) -> ResumeState:
    """The finished phases of `plan`, in order, stopping at the first one that is not."""
    done: list[PhaseResult] = []
    for phase in plan:
        result = read_phase_file(done_path(run_dir, phase.name), metrics, phase.name,
                                 keep_best)
        if result is None:
            break
        done.append(result)
    return ResumeState(tuple(done))
