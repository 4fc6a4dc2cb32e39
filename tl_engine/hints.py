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


# --- over-fitting while a run trains ------------------------------------------------------
OVERFIT_PATIENCE = 3  # the early-stopping patience the warning speaks of
RISE_EPOCHS = 2  # val loss above its best for this many epochs in a row
GAP_WIDENING = 0.05  # the val − train loss gap grew by at least this since the best epoch


@dataclass(frozen=True)
class Overfitting:
    """What `overfitting` found: from which epoch validation loss rose as the train–val gap
    widened, and where early stopping would have stopped."""

    best_epoch: int  # the epoch of the lowest validation loss
    epoch: int  # the latest epoch looked at
    gap_then: float  # val loss − train loss at best_epoch
    gap_now: float
    stop_epoch: int  # where early stopping on val accuracy stops, or would if nothing improves
    patience: int

    @property
    def hint(self) -> Hint:
        if self.stop_epoch <= self.epoch:
            stop = (f"Early stopping (patience {self.patience}) would have stopped at epoch "
                    f"{self.stop_epoch}")
        else:
            stop = (f"Early stopping (patience {self.patience}) would stop at epoch "
                    f"{self.stop_epoch} unless validation accuracy improves before")
        return Hint("warning", (
            f"Over-fitting: validation loss has risen since epoch {self.best_epoch}, and "
            f"grown against training loss: validation − training loss went from "
            f"{self.gap_then:+.3f} to {self.gap_now:+.3f}. {stop}; the best epoch's weights "
            "are kept when “Keep the weights of” is the best epoch."))


def early_stopping_epoch(metrics: Sequence[dict[str, Any]], patience: int,
                         monitor: str = "val_accuracy") -> int | None:
    """The epoch at which Keras's EarlyStopping (mode max, no min_delta) stops: `patience`
    epochs after the last improvement. With too few epochs so far, the epoch it stops at
    if none of the coming ones improves."""
    best_value: float | None = None
    best_epoch: int | None = None
    for m in metrics:
        value = m.get(monitor)
        if value is None:
            continue
        if best_value is None or value > best_value:
            best_value, best_epoch = float(value), int(m["epoch"])
        elif int(m["epoch"]) - best_epoch >= patience:  # type: ignore[operator]
            return int(m["epoch"])
    return None if best_epoch is None else best_epoch + patience


def overfitting(metrics: Sequence[dict[str, Any]],
                patience: int = OVERFIT_PATIENCE) -> Overfitting | None:
    """Over-fitting in the epochs so far (`run_metrics` values) of the phase now training:
    validation loss above its lowest for the last RISE_EPOCHS epochs, still rising, while
    the gap between validation and training loss widened by GAP_WIDENING or more. A pure
    function of the metrics, so a page can call it on every refresh."""
    if not metrics:
        return None
    phase = metrics[-1].get("phase")
    mine = [m for m in metrics if m.get("phase") == phase
            and all(m.get(k) is not None for k in ("loss", "val_loss"))]
    if len(mine) < RISE_EPOCHS + 1:
        return None
    best = min(mine, key=lambda m: m["val_loss"])
    last = mine[-1]
    rising = mine[-RISE_EPOCHS:]
    if any(m["val_loss"] <= best["val_loss"] for m in rising):
        return None
    if mine[-1]["val_loss"] < mine[-2]["val_loss"]:
        return None  # coming back down
    gap_then = best["val_loss"] - best["loss"]
    gap_now = last["val_loss"] - last["loss"]
    if gap_now - gap_then < GAP_WIDENING:
        return None
    stop = early_stopping_epoch(mine, patience)
    if stop is None:  # no accuracy recorded: early stopping on the loss instead
        stop = early_stopping_epoch([{"epoch": m["epoch"], "score": -m["val_loss"]}
                                     for m in mine], patience, monitor="score")
    return Overfitting(int(best["epoch"]), int(last["epoch"]), gap_then, gap_now, stop,
                       patience)
