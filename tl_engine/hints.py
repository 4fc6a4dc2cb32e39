"""Hints where a setting or a result is likely to hurt: few, specific, and actionable.

`spec_hints` looks at a run's settings before it trains; `run_hints` at what a run did.
Both return plain values for the pages and the CLI to show; no TensorFlow needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .phases import ALL, Phase, phases
from .runs import RunRecord
from .spec import RunSpec

LEVELS = ("info", "warning")
GENTLE_FINE_TUNE_RATE = 1e-4
OVERFIT_GAP = 0.15  # train accuracy this far above val accuracy


@dataclass(frozen=True)
class Hint:
    level: str  # "info" or "warning"
    text: str


def _rate(value: float) -> str:
    """1e-3 rather than 0.001: how learning rates are usually spoken of."""
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def _fine_tune_phase(spec: RunSpec) -> Phase | None:
    """The phase whose pretrained layers train at the highest rate, or None when none do."""
    training = [phase for phase in phases(spec) if phase.trains_backbone]
    return max(training, key=lambda phase: phase.lr_factor, default=None)


def spec_hints(spec: RunSpec) -> list[Hint]:
    """What in these settings is likely to cost accuracy, and what to use instead."""
    hints: list[Hint] = []
    pretrained = spec.weights != "none"
    plan = phases(spec)
    fine = _fine_tune_phase(spec)
    rate = spec.learning_rate * fine.lr_factor if fine else None
    if pretrained and rate is not None and rate >= 1e-3:
        after_head = len(plan) > 1 and not plan[0].trains_backbone
        where = "After the head phase, fine-tuning" if after_head else "Fine-tuning"
        factor = ""
        if fine is not None and (fine.lr_factor != 1.0 or after_head):
            factor = (f" ({_rate(spec.learning_rate)} × factor {fine.lr_factor:g}; "
                      "a factor of 0.1 or lower fixes it)")
        hints.append(Hint("warning", (
            f"{where} trains pretrained layers at learning rate {_rate(rate)}{factor}: "
            "large steps overwrite what ImageNet taught them. On the ants-vs-bees photos, "
            "partial fine-tuning at 1e-3 scored 0.856 against 0.915 for a frozen backbone. "
            f"Try {_rate(GENTLE_FINE_TUNE_RATE)}."
        )))
    if not pretrained and plan[-1].trainable_top is not ALL:
        hints.append(Hint("warning", (
            "With random weights (\"none\") the frozen layers of the backbone never learn: "
            "the head only sees features of an untrained network, close to noise. Use "
            "ImageNet weights, or let the whole backbone train (full fine-tuning)."
        )))
    return hints


def _best(metrics: Sequence[dict[str, Any]], key: str) -> dict[str, Any] | None:
    scored = [m for m in metrics if m.get(key) is not None]
    return max(scored, key=lambda m: m[key]) if scored else None


def run_hints(run: RunRecord, metrics: Sequence[dict[str, Any]]) -> list[Hint]:
    """What a run's epochs say about how to train the next one (metrics: `run_metrics`)."""
    hints: list[Hint] = []
    if not metrics:
        return hints
    summary = run.result
    last = metrics[-1]
    final_val = summary.final_val_accuracy
    if final_val is None:  # a summary stored before the key existed
        final_val = last.get("val_accuracy")

    plan = phases(run.spec)
    head_first = len(plan) > 1 and not plan[0].trains_backbone
    head = [m for m in metrics if m.get("phase") == plan[0].name]
    fine = [m for m in metrics if m.get("phase") != plan[0].name]
    best_head = _best(head, "val_accuracy")
    if head_first and fine and best_head and final_val is not None \
            and final_val < best_head["val_accuracy"]:
        if summary.head_model_available:
            advice = "Switch to the head-phase weights, or fine-tune with a lower learning rate."
        elif summary.weights_from == "head":
            advice = "The run now uses the head-phase weights; fine-tune with a lower rate."
        else:
            advice = "Fine-tune with a lower learning rate, or train the head alone (frozen)."
        hints.append(Hint("warning", (
            f"Fine-tuning made it worse: the head phase reached "
            f"{_percent(best_head['val_accuracy'])}, the end {_percent(final_val)}. {advice}"
        )))

    epochs_run = int(summary.epochs_run or last["epoch"])
    best_epoch = summary.best_epoch
    if best_epoch is None:
        best = _best(metrics, "val_accuracy")
        best_epoch = best["epoch"] if best else None
    idle = epochs_run - int(best_epoch) if best_epoch is not None else 0
    if not run.spec.early_stopping and idle >= 3 and idle >= epochs_run / 2:
        kept = ("the saved model holds that epoch's weights"
                if summary.restored_best is not False else "the saved model is the last epoch's")
        hints.append(Hint("info", (
            f"Validation accuracy peaked at epoch {best_epoch} of {epochs_run} ({kept}): the "
            f"last {idle} epochs did not improve it. Early stopping (patience 3) would have "
            "stopped sooner; or train fewer epochs."
        )))

    train_acc, val_acc = last.get("accuracy"), last.get("val_accuracy")
    if train_acc is not None and val_acc is not None and train_acc - val_acc >= OVERFIT_GAP:
        hints.append(Hint("warning", (
            f"Training accuracy {_percent(train_acc)} against {_percent(val_acc)} on the "
            "validation images: the model memorises its training images. More images, "
            "augmentation, more dropout or fewer trainable layers help."
        )))
    return hints
