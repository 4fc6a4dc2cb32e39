"""What a finished training run reports: one typed value, stored as JSON.

The trainer builds a `RunSummary`; the store keeps its `to_dict()` (the runs table's
summary_json, run.json, summary.json) and readers get it back with `RunSummary.from_dict`
(or `RunRecord.result`). Runs stored by older versions lack the keys added since, so
every field may be None, and keys this version does not know are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Keys written only by some runs: absent from the JSON, rather than null, when unset.
# Each group is present or absent as a whole, keyed by the field that is never None in it.
_HEAD_KEYS = ("head_val_accuracy", "head_best_epoch", "head_model_available")
_SWITCH_KEYS = ("finetuned_val_accuracy", "finetuned_best_epoch", "weights_from")
_CALIBRATION_KEYS = ("temperature", "ece", "ece_calibrated", "ece_split")
_ACTIVATION_KEYS = ("activations_computed", "activations_reused")


@dataclass(frozen=True)
class RunSummary:
    """A training run's result. Field order is the order of the stored JSON's keys."""

    val_accuracy: float | None = None  # of the model the run keeps
    val_top_k_accuracy: float | None = None
    test_accuracy: float | None = None  # None without a test split
    epochs_run: int | None = None
    best_epoch: int | None = None  # the epoch whose weights the model holds (1-based)
    final_val_accuracy: float | None = None  # of the last epoch
    restored_best: bool | None = None  # whether the model holds an earlier epoch's weights
    seconds: float | None = None
    model_path: str | None = None
    classes: tuple[str, ...] = ()
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    features_computed: int | None = None
    features_reused: int | None = None
    trainable_params: int | None = None
    frozen_params: int | None = None
    device: str | None = None
    weights_identity: str | None = None
    # Plans that train the head alone first: that phase's result, and whether its model
    # was kept beside the final one because it validated better.
    head_val_accuracy: float | None = None
    head_best_epoch: int | None = None
    head_model_available: bool | None = None
    # Plans that fine-tune the top of the backbone: its activations at the freeze boundary
    # computed and read from the cache; notes say where a phase could not use them, and why.
    activations_computed: int | None = None
    activations_reused: int | None = None
    notes: tuple[str, ...] = ()
    # After `use_head_phase_weights`: the fine-tuned model's figures, and "head".
    finetuned_val_accuracy: float | None = None
    finetuned_best_epoch: int | None = None
    weights_from: str | None = None
    # Temperature scaling (tl_engine.calibration): T fitted on the validation images, and
    # the expected calibration error before and after it on `ece_split` ("test" or "val").
    temperature: float | None = None
    ece: float | None = None
    ece_calibrated: float | None = None
    ece_split: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON value: every key a trainer writes, in its order."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _HEAD_KEYS and self.head_model_available is None:
                continue
            if f.name in _SWITCH_KEYS and self.weights_from is None:
                continue
            if f.name in _CALIBRATION_KEYS and self.temperature is None:
                continue
            if f.name in _ACTIVATION_KEYS and self.activations_computed is None:
                continue
            if f.name == "notes" and not self.notes:
                continue
            out[f.name] = list(value) if f.name in ("classes", "notes") else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        """Tolerant of summaries from older versions: missing keys read as None (no
        classes), unknown keys are ignored. An empty mapping gives an empty summary."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {name: value for name, value in data.items() if name in names}
        for name in ("classes", "notes"):
            if name in values:
                values[name] = tuple(values[name] or ())
        return cls(**values)
