"""A run is described by one plain, frozen value: it can be saved, hashed, diffed, replayed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
from dataclasses import dataclass
from typing import Any

from .errors import SpecError
from .registry import get_backbone

STRATEGIES = ("frozen", "partial", "full", "two-phase")
UNFREEZE_UNITS = ("layers", "blocks")
AUGMENTATIONS = ("flip", "rotation", "zoom", "contrast", "translation")
DEFAULT_AUGMENTATION = ("flip", "rotation", "zoom")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
# "best": the epoch of the last phase with the best validation accuracy; "last": its final one.
KEEP_WEIGHTS = ("best", "last")


MAX_HIDDEN_UNITS = 8192
MAX_SEED = 2**31 - 1  # TensorFlow's and NumPy's seeds are 32-bit


def _check_whole(value: Any, low: int, high: int, setting: str) -> None:
    """`value` is a whole number from `low` to `high`, or SpecError naming `setting`."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or not low <= number <= high:
        raise SpecError(f"{setting} must be a whole number from {low} to {high}, not {value!r}.")


@dataclass(frozen=True)
class RunSpec:
    backbone: str = "MobileNetV2-0.35"
    weights: str = "imagenet"  # "imagenet", "none" (random init) or a path to a weights file
    image_size: int = 0  # 0 -> the backbone's default input size
    hidden_units: int = 0  # 0 -> no hidden Dense layer in the head
    dropout: float = 0.2
    strategy: str = "frozen"
    unfreeze: int = 0  # for partial / two-phase: how many top layers or blocks train
    unfreeze_unit: str = "layers"
    epochs: int = 10  # for two-phase: the fine-tuning epochs after the head epochs
    head_epochs: int = 3  # two-phase only: epochs with the backbone frozen
    fine_tune_lr_factor: float = 0.1  # two-phase only: phase-2 learning rate multiplier
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    label_smoothing: float = 0.0
    augment: tuple[str, ...] = ()
    class_weights: bool = False
    early_stopping: int = 0  # patience in epochs; 0 turns it off
    reduce_lr: bool = False
    val_split: float = 0.2  # ignored when the dataset brings its own train/val split
    # With a given split, carved out of its train part (ignored when it has a test folder).
    test_split: float = 0.0
    seed: int = 42
    keep_weights: str = "best"  # which epoch's weights the saved model holds: KEEP_WEIGHTS

    def normalized(self) -> RunSpec:
        """Validated, with defaults resolved, so equal work has equal specs."""
        backbone = get_backbone(self.backbone)
        size = int(self.image_size) or backbone.default_size
        if size < backbone.min_size or size > 1024:
            raise SpecError(
                f"Image size {size} does not fit {backbone.key}: "
                f"use {backbone.min_size} to 1024 (default {backbone.default_size})."
            )
        if self.strategy not in STRATEGIES:
            raise SpecError(f"Unknown strategy {self.strategy!r}: use one of {STRATEGIES}.")
        if self.unfreeze_unit not in UNFREEZE_UNITS:
            raise SpecError(f"Unfreeze unit must be one of {UNFREEZE_UNITS}.")
        if self.strategy in ("partial", "two-phase") and self.unfreeze < 1:
            raise SpecError(f"Strategy {self.strategy!r} needs --unfreeze of at least 1.")
        bad_aug = [a for a in self.augment if a not in AUGMENTATIONS]
        if bad_aug:
            raise SpecError(f"Unknown augmentation {bad_aug}: use any of {AUGMENTATIONS}.")
        if self.optimizer not in OPTIMIZERS:
            raise SpecError(f"Unknown optimizer {self.optimizer!r}: use one of {OPTIMIZERS}.")
        if not 1 <= self.epochs <= 1000:
            raise SpecError("Epochs must be between 1 and 1000.")
        _check_whole(self.hidden_units, 0, MAX_HIDDEN_UNITS,
                     "Hidden units (--hidden-units; 0: no hidden layer)")
        _check_whole(self.seed, 0, MAX_SEED, "Seed (--seed)")
        _check_whole(self.early_stopping, 0, 1000,
                     "Early-stopping patience (--early-stopping; 0: off)")
        if self.strategy == "two-phase":
            _check_whole(self.head_epochs, 1, 1000,
                         "Head epochs (--head-epochs) of the two-phase strategy")
            if not self.fine_tune_lr_factor > 0:
                raise SpecError(
                    "The fine-tuning learning-rate factor must be above 0, "
                    f"not {self.fine_tune_lr_factor}."
                )
        if not 1 <= self.batch_size <= 4096:
            raise SpecError("Batch size must be between 1 and 4096.")
        if not 0 < self.learning_rate < 10:
            raise SpecError("Learning rate must be a positive number below 10.")
        if not 0 <= self.dropout < 1:
            raise SpecError("Dropout must be in [0, 1).")
        if not 0 <= self.label_smoothing < 1:
            raise SpecError("Label smoothing must be in [0, 1).")
        if not 0 < self.val_split < 0.9 or not 0 <= self.test_split < 0.9:
            raise SpecError("Validation split must be in (0, 0.9) and test split in [0, 0.9).")
        if self.val_split + self.test_split >= 0.9:
            raise SpecError("Validation and test splits together must leave 10% to train on.")
        if self.keep_weights not in KEEP_WEIGHTS:
            raise SpecError(
                f"Unknown keep_weights {self.keep_weights!r}: use one of {KEEP_WEIGHTS}."
            )
        weights = self.weights if self.weights in ("imagenet", "none") else str(self.weights)
        fine_tunes_top = self.strategy in ("partial", "two-phase")
        return dataclasses.replace(
            self,
            image_size=size,
            weights=weights,
            hidden_units=int(self.hidden_units),
            seed=int(self.seed),
            early_stopping=int(self.early_stopping),
            unfreeze=int(self.unfreeze) if fine_tunes_top else 0,
            unfreeze_unit=self.unfreeze_unit if fine_tunes_top else "layers",
            augment=tuple(sorted(set(self.augment))),
            head_epochs=int(self.head_epochs) if self.strategy == "two-phase" else 0,
            fine_tune_lr_factor=(
                float(self.fine_tune_lr_factor) if self.strategy == "two-phase" else 1.0
            ),
        )

    @property
    def uses_feature_cache(self) -> bool:
        """A frozen backbone with no augmentation sees each image the same way every epoch."""
        return self.strategy in ("frozen", "two-phase") and not self.augment

    def to_dict(self) -> dict[str, Any]:
        value = dataclasses.asdict(self)
        value["augment"] = list(self.augment)
        return value

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> RunSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise SpecError(f"Unknown run settings: {sorted(unknown)}.")
        cleaned = dict(value)
        if "augment" in cleaned:
            cleaned["augment"] = tuple(cleaned["augment"])
        return cls(**cleaned)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def cache_key(spec: RunSpec, weights_identity: str, dataset_hash: str) -> str:
    """Identical work has an identical key: the spec, the weights' content, the data's content."""
    payload = spec.to_dict()
    payload["weights"] = weights_identity
    digest = hashlib.sha256()
    digest.update(canonical_json(payload).encode())
    digest.update(dataset_hash.encode())
    return digest.hexdigest()
