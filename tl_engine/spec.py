"""A run is described by one plain, frozen value: it can be saved, hashed, diffed, replayed.

Each setting is declared once, as a field of `RunSpec` whose metadata (a `Setting`) carries
its label, help, bounds or choices, the page its control lives on and the strategies it
applies to. Validation, the CLI's options, the dashboard's controls, comparisons and
summaries are all generated from that table: a new hyper-parameter is one entry here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError
from .registry import get_backbone

# A prediction whose confidence is below this is marked "not sure" (the Prediction page's
# and `predict`'s default). Here, with the settings, so that the CLI reads it without
# importing NumPy.
DEFAULT_NOT_SURE_BELOW = 0.6


@dataclass(frozen=True)
class Strategy:
    name: str
    label: str
    help: str


# How much of the backbone learns, and when. What each one does is `phases.phases()`.
STRATEGY_TABLE = (
    Strategy("frozen", "Frozen backbone",
             "Feature extraction: the whole backbone is frozen and only the new head learns "
             "— fastest, and the safest choice for small datasets."),
    Strategy("partial", "Partial fine-tune",
             "Fine-tune the top of the backbone: the last N layers (or blocks) learn together "
             "with the head; the rest stay frozen."),
    Strategy("full", "Full fine-tune",
             "Everything trains: the backbone adapts completely — needs more data, more time "
             "and a low learning rate."),
    Strategy("two-phase", "Two-phase",
             "First train the head with the backbone frozen, then unfreeze the top N layers "
             "(or blocks) and continue at a lower learning rate — the Keras guide's recipe."),
    Strategy("gradual", "Gradual unfreezing",
             "Train the head, then unfreeze one more layer (or block) from the top every few "
             "epochs, down to N — ULMFiT's recipe: the top adapts before the layers under it."),
)
STRATEGIES = tuple(s.name for s in STRATEGY_TABLE)
STRATEGY_NAMES = {s.name: s.label for s in STRATEGY_TABLE}
STRATEGY_HELP = {s.name: s.help for s in STRATEGY_TABLE}
# Strategies whose backbone (or part of it) learns: the ones fine-tuning settings apply to.
_FINE_TUNING = ("partial", "full", "two-phase", "gradual")
_TOP_N = ("partial", "two-phase", "gradual")
_HEAD_FIRST = ("two-phase", "gradual")

UNFREEZE_UNITS = ("layers", "blocks")
AUGMENTATIONS = ("flip", "rotation", "zoom", "contrast", "translation")
DEFAULT_AUGMENTATION = ("flip", "rotation", "zoom")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
# "best": the epoch of the last phase with the best validation accuracy; "last": its final one.
KEEP_WEIGHTS = ("best", "last")
MAX_HIDDEN_UNITS = 8192
MAX_SEED = 2**31 - 1  # TensorFlow's and NumPy's seeds are 32-bit
MAX_IMAGE_SIZE = 1024
LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)
PAGES = ("model", "freeze", "training")


@dataclass(frozen=True)
class Setting:
    """What a person and a program need to know about one run setting."""

    label: str
    help: str
    page: str  # where its dashboard control lives: one of PAGES
    low: float | None = None  # bounds of a number, inclusive unless `open_low` / `open_high`
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    step: float | None = None  # a number's step; a float with a step is a slider
    stops: tuple[float, ...] = ()  # a float picked from these stops (plus its current value)
    choices: tuple[str, ...] = ()  # a text value (or, for a tuple field, each item) is one of
    names: Mapping[str, str] = field(default_factory=dict)  # readable names of the choices
    choice_help: Mapping[str, str] = field(default_factory=dict)  # a line on each choice
    strategies: tuple[str, ...] = ()  # applies only with these strategies; () = always
    off: Any = None  # stored when it does not apply, so equal work has equal specs
    new: bool = False  # added after runs were stored: left out of the cache key at its default
    flag: str = ""  # the CLI option, when not --<name-with-dashes>
    bare: Any = None  # what the CLI option means when given without a value
    slider: bool = False  # a whole number shown as a slider rather than a number field
    text: str = "{}"  # how the summary shows it; "" leaves it out
    quiet: tuple[Any, ...] = ()  # values the summary does not mention (off switches)

    def applies(self, strategy: str) -> bool:
        return not self.strategies or strategy in self.strategies

    def choice_name(self, value: Any) -> str:
        return self.names.get(value, str(value))


def _setting(default: Any, **metadata: Any) -> Any:
    return field(default=default, metadata={"setting": Setting(**metadata)})


@dataclass(frozen=True)
class RunSpec:
    # --- Model page ---
    backbone: str = _setting(
        "MobileNetV2-0.35", label="Backbone", page="model",
        help="The ImageNet-pretrained network that turns each photo into features "
        "(`python -m tl_engine backbones` lists them).", text="{}")
    weights: str = _setting(
        "imagenet", label="Starting weights", page="model",
        help="imagenet, none (random init: the from-scratch baseline), or a weights file "
        "saved from the backbone without its top.", text="{} weights",
        names={"imagenet": "ImageNet", "none": "random-init"})
    image_size: int = _setting(
        0, label="Input size (px)", page="model", low=0, high=MAX_IMAGE_SIZE, step=16,
        help="Photos are resized to this square; 0 takes the backbone's own size. Smaller is "
        "faster, larger sees more detail.", text="{} px")
    hidden_units: int = _setting(
        0, label="Hidden units", page="model", low=0, high=MAX_HIDDEN_UNITS, step=64,
        help="A hidden Dense layer in the head; 0 = pooled features go straight to the "
        "softmax (the classic recipe).", text="Dense {}", quiet=(0,))
    dropout: float = _setting(
        0.2, label="Dropout", page="model", low=0.0, high=1.0, open_high=True, step=0.05,
        help="Randomly drops features while training: less overfitting.",
        text="dropout {:.2f}", quiet=(0.0,))
    # --- Freeze strategy page ---
    strategy: str = _setting(
        "frozen", label="Strategy", page="freeze", choices=STRATEGIES, names=STRATEGY_NAMES,
        choice_help=STRATEGY_HELP, help="How much of the backbone learns, and when.")
    unfreeze: int = _setting(
        0, label="Trainable top", page="freeze", low=1, high=10_000, strategies=_TOP_N, off=0,
        slider=True,
        help="How many layers (or blocks) at the top of the backbone train; gradual "
        "unfreezing gets there one at a time.", text="top {} {unfreeze_unit}")
    unfreeze_unit: str = _setting(
        "layers", label="Count the trainable top in", page="freeze", choices=UNFREEZE_UNITS,
        strategies=_TOP_N, off="layers", text="",
        help="A block is a backbone stage (e.g. MobileNet's block_16): unfreezing whole "
        "blocks never splits one in the middle.")
    head_epochs: int = _setting(
        3, label="Head epochs (phase 1)", page="freeze", low=1, high=1000,
        strategies=_HEAD_FIRST, off=0, text="after {} head epochs",
        help="Epochs with the backbone frozen before fine-tuning starts.")
    fine_tune_lr_factor: float = _setting(
        0.1, label="Fine-tune LR ×", page="freeze", low=0.0, open_low=True, high=1000.0,
        stops=(0.01, 0.03, 0.1, 0.3, 1.0), strategies=_HEAD_FIRST, off=1.0,
        text="LR × {:g}", flag="--fine-tune-lr-factor",
        help="After the head phase, the learning rate is the Training page's rate times "
        "this factor.")
    # --- Training page ---
    epochs: int = _setting(
        10, label="Epochs", page="training", low=1, high=1000, text="{} epochs",
        help="Epochs of the last phase: of the fine-tuning after the head phase, or of the "
        "last stage of gradual unfreezing.")
    batch_size: int = _setting(
        32, label="Batch size", page="training", low=1, high=4096, text="batch {}",
        help="Images per training step.")
    learning_rate: float = _setting(
        1e-3, label="Learning rate", page="training", low=0.0, open_low=True, high=10.0,
        open_high=True, stops=LEARNING_RATES, text="LR {:g}",
        help="The head's learning rate; fine-tuning phases scale it.")
    optimizer: str = _setting(
        "adam", label="Optimizer", page="training", choices=OPTIMIZERS, text="{}",
        help="Adam suits most runs; SGD (momentum 0.9, Nesterov) for long fine-tuning.")
    label_smoothing: float = _setting(
        0.0, label="Label smoothing", page="training", low=0.0, high=1.0, open_high=True,
        step=0.05,
        text="label smoothing {:g}", quiet=(0.0,),
        help="Softens the one-hot targets: less over-confident predictions.")
    augment: tuple[str, ...] = _setting(
        (), label="Augmentation", page="training", choices=AUGMENTATIONS,
        text="augmentation: {}", bare=DEFAULT_AUGMENTATION,
        help="Random changes to training images each epoch. With a frozen backbone and no "
        "augmentation, features are computed once and cached: much faster epochs.")
    class_weights: bool = _setting(
        False, label="Class weights", page="training", text="class weights", quiet=(False,),
        help="Weigh rare classes up: for imbalanced datasets.")
    early_stopping: int = _setting(
        0, label="Early stopping", page="training", low=0, high=1000, quiet=(0,),
        text="early stopping ({})",
        help="Patience: stop after this many epochs without a better val accuracy. 0 = off.")
    reduce_lr: bool = _setting(
        False, label="Reduce LR on plateau", page="training", text="reduce LR on plateau",
        quiet=(False,), help="Divide the learning rate by 5 when val loss stalls for 2 epochs.")
    val_split: float = _setting(
        0.2, label="Validation split", page="training", low=0.0, open_low=True, high=0.9,
        open_high=True, step=0.05, text="val {:.0%}",
        help="Share of the images that checks each epoch; ignored when the dataset brings "
        "its own validation folder.")
    test_split: float = _setting(
        0.0, label="Test split", page="training", low=0.0, high=0.9, open_high=True,
        step=0.05, text="test {:.0%}", quiet=(0.0,),
        help="Images held back from training and validation: an untouched check of the "
        "final model. With a given train/val split, taken out of its training part.")
    seed: int = _setting(
        42, label="Seed", page="training", low=0, high=MAX_SEED, text="seed {}",
        help="Same seed, same split and same starting point.")
    keep_weights: str = _setting(
        "best", label="Keep the weights of", page="training", choices=KEEP_WEIGHTS,
        flag="--keep", text="keeps {}",
        names={"best": "the best epoch", "last": "the last epoch"},
        help="The best epoch's weights are restored at the end. It is chosen on the "
        "validation images, so its validation accuracy is optimistic: a test split tells "
        "the truth.")
    # --- added later (left out of older runs' cache keys at their defaults) ---
    epochs_per_stage: int = _setting(
        1, label="Epochs per stage", page="freeze", low=1, high=1000, strategies=("gradual",),
        off=0, new=True, text="epochs per stage: {}",
        help="Gradual unfreezing: epochs before the next layer (or block) unfreezes.")
    lr_decay: float = _setting(
        1.0, label="LR × per block down", page="freeze", low=0.0, open_low=True, high=1.0,
        stops=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), strategies=_FINE_TUNING, off=1.0,
        new=True, text="LR × {:g} per block down", quiet=(1.0,),
        help="Discriminative learning rates: each trainable backbone block, from the top "
        "down, learns at the rate of the one above times this factor (1 = one rate for "
        "all), as fastai's slice(lo, hi) does.")

    def normalized(self) -> RunSpec:
        """Validated, with defaults resolved, so equal work has equal specs."""
        if self.strategy not in STRATEGIES:
            raise SpecError(f"Unknown strategy {self.strategy!r} (--strategy): use one of "
                            f"{', '.join(STRATEGIES)}.")
        if self.strategy in _TOP_N and self.unfreeze == 0:  # left at its default, say
            raise SpecError(
                f"The {self.strategy} strategy trains the top of the backbone: say how much "
                "with --unfreeze N (its top N layers, or N blocks with --unfreeze-unit "
                "blocks).")
        values: dict[str, Any] = {}
        for name, setting in settings():
            value = getattr(self, name)
            values[name] = check_value(name, value) if setting.applies(self.strategy) \
                else setting.off
        backbone = get_backbone(values["backbone"])
        size = values["image_size"] or backbone.default_size
        if size < backbone.min_size:
            raise SpecError(
                f"Image size {size} does not fit {backbone.key}: use {backbone.min_size} to "
                f"{MAX_IMAGE_SIZE} (default {backbone.default_size})."
            )
        if values["strategy"] in _TOP_N:
            unit = values["unfreeze_unit"]
            most = backbone.top_limit(unit)
            if most and values["unfreeze"] > most:
                # More than it has would train all of it, by another name (and gradual
                # unfreezing would train the whole model again for each stage past the end).
                raise SpecError(
                    f"{backbone.key} has {most} {unit}: the trainable top (--unfreeze) can be "
                    f"at most {most} {unit}; the full strategy trains all of it.")
        if values["val_split"] + values["test_split"] >= 0.9:
            raise SpecError("Validation and test splits together must leave 10% to train on.")
        values["image_size"] = size
        return dataclasses.replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        value = dataclasses.asdict(self)
        value["augment"] = list(self.augment)
        return value

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> RunSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise SpecError(f"Unknown run settings: {sorted(unknown)}.")
        cleaned = dict(value)
        if "augment" in cleaned:
            cleaned["augment"] = tuple(cleaned["augment"])
        return cls(**cleaned)


def settings() -> Iterator[tuple[str, Setting]]:
    """Every run setting, in reading order: (field name, its Setting)."""
    for spec_field in dataclasses.fields(RunSpec):
        yield spec_field.name, spec_field.metadata["setting"]


def setting(name: str) -> Setting:
    return RunSpec.__dataclass_fields__[name].metadata["setting"]


def default(name: str) -> Any:
    return RunSpec.__dataclass_fields__[name].default


def flag(name: str) -> str:
    return setting(name).flag or "--" + name.replace("_", "-")


def value_type(name: str) -> type:
    """bool, int, float, str, or tuple (a set of choices), from the field's default."""
    return type(default(name))


def check_value(name: str, value: Any) -> Any:
    """`value` for setting `name`, of the setting's type and within its bounds or choices,
    or SpecError naming the setting and its CLI option."""
    spec_setting, kind = setting(name), value_type(name)
    where = f"{spec_setting.label} ({flag(name)})"
    if kind is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where} is on or off (true or false), not {value!r}.")
        return value
    if kind is tuple:
        items = (value,) if isinstance(value, str) else tuple(value)
        bad = [item for item in items if item not in spec_setting.choices]
        if bad:
            raise SpecError(f"Unknown {spec_setting.label.lower()} {bad} ({flag(name)}): use "
                            f"any of {', '.join(spec_setting.choices)}.")
        return tuple(sorted(set(items)))
    if kind is str:
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        if spec_setting.choices and value not in spec_setting.choices:
            raise SpecError(f"Unknown {spec_setting.label.lower()} {value!r} ({flag(name)}, "
                            f"{name}): use one of {', '.join(spec_setting.choices)}.")
        if not isinstance(value, str) or not value:
            raise SpecError(f"{where} must be a name, not {value!r}.")
        return value
    return _check_number(where, value, kind, spec_setting)


def _check_number(where: str, value: Any, kind: type, spec_setting: Setting) -> Any:
    low, high = spec_setting.low, spec_setting.high
    if kind is int:
        try:
            number: Any = None if isinstance(value, bool) else operator.index(value)
        except TypeError:
            number = int(value) if isinstance(value, float) and value.is_integer() else None
        if number is None or not low <= number <= high:
            raise SpecError(f"{where} must be a whole number from {low:g} to {high:g}, "
                            f"not {value!r}.")
        return int(number)
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    too_low = number is None or number != number or (
        low is not None and (number <= low if spec_setting.open_low else number < low))
    too_high = number is not None and high is not None and (
        number >= high if spec_setting.open_high else number > high)
    if too_low or too_high:
        left = "(" if spec_setting.open_low else "["
        right = ")" if spec_setting.open_high else "]"
        raise SpecError(f"{where} must be in {left}{low:g}, {high:g}{right}, not {value!r}.")
    return number


def applies(name: str, strategy: str) -> bool:
    return setting(name).applies(strategy)


def describe(spec: RunSpec | Mapping[str, Any]) -> dict[str, list[str]]:
    """Each page's settings in words, leaving out what does not apply or is switched off:
    {"model": ["MobileNetV2-0.35", "ImageNet weights", "224 px", …], "freeze": […], …}."""
    values = spec.to_dict() if isinstance(spec, RunSpec) else dict(spec)
    strategy = values.get("strategy", default("strategy"))
    lines: dict[str, list[str]] = {page: [] for page in PAGES}
    for name, spec_setting in settings():
        value = values.get(name, default(name))
        if not spec_setting.text or not spec_setting.applies(strategy):
            continue
        if value in spec_setting.quiet:
            continue
        lines[spec_setting.page].append(spec_setting.text.format(
            value_text(name, value), **{k: value_text(k, v) for k, v in values.items()}))
    return lines


def value_text(name: str, value: Any) -> Any:
    """A value as a person reads it: choice names, lists joined, numbers left to formats."""
    spec_setting = setting(name)
    if isinstance(value, (list, tuple)):
        return ", ".join(spec_setting.choice_name(v) for v in value) or "none"
    if isinstance(value, str) and value not in spec_setting.names and "/" in value:
        return "file " + value.rsplit("/", 1)[-1]  # a weights file: its name says enough
    if isinstance(value, str):
        return spec_setting.choice_name(value)
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def cache_key(spec: RunSpec, weights_identity: str, dataset_hash: str) -> str:
    """Identical work has an identical key: the spec, the weights' content, the data's content.

    Settings added later are left out at their default (or off) value, so runs stored
    before they existed keep their keys.
    """
    payload = spec.to_dict()
    for name, spec_setting in settings():
        if spec_setting.new and payload[name] in (default(name), spec_setting.off):
            del payload[name]
    payload["weights"] = weights_identity
    digest = hashlib.sha256()
    digest.update(canonical_json(payload).encode())
    digest.update(dataset_hash.encode())
    return digest.hexdigest()
