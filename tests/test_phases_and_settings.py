"""One description of a run: the settings table drives validation, CLI options, controls
and summaries; strategies are phase plans; resuming reads a small state once. Fast: no
training, only tiny weight files and one small Keras model for the optimizer."""

from __future__ import annotations

import dataclasses

import h5py
import keras
import numpy as np
import pytest

import tl_engine as tle
from tl_engine import cli
from tl_engine import spec as spec_table
from tl_engine.errors import SpecError
from tl_engine.freeze import describe_freeze, layer_rate_factors
from tl_engine.optimizers import make_optimizer
from tl_engine.phases import (
    ALL,
    PhaseResult,
    done_path,
    phases,
    read_resume_state,
    tag_phase_file,
)
from tl_engine.spec import RunSpec, cache_key

# --- the settings table ------------------------------------------------------------------


def test_every_setting_has_a_label_a_page_a_cli_option_and_a_control():
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    options = {opt for action in train._actions for opt in action.option_strings}
    for name, setting in tle.settings():
        assert setting.label and setting.help and setting.page in spec_table.PAGES, name
        assert spec_table.flag(name) in options, name
    from dashboard import controls

    assert {name for name, _ in tle.settings()} == {
        name for page in spec_table.PAGES
        for strategy in tle.STRATEGIES
        for name in controls.page_settings(page, {"strategy": strategy})}


def test_cli_options_come_back_as_the_same_spec():
    args = cli.build_parser().parse_args([
        "train", "--data", "x", "--strategy", "gradual", "--unfreeze", "3",
        "--unfreeze-unit", "blocks", "--epochs-per-stage", "2", "--lr-decay", "0.5",
        "--augment", "--class-weights", "--keep", "last", "--learning-rate", "3e-4"])
    spec = cli.spec_from_args(args)
    assert (spec.strategy, spec.unfreeze, spec.unfreeze_unit, spec.epochs_per_stage,
            spec.lr_decay, spec.keep_weights, spec.learning_rate) == (
        "gradual", 3, "blocks", 2, 0.5, "last", 3e-4)
    assert spec.augment == spec_table.DEFAULT_AUGMENTATION and spec.class_weights is True
    defaults = cli.spec_from_args(cli.build_parser().parse_args(["train", "--data", "x"]))
    assert defaults == RunSpec()


@pytest.mark.parametrize(("changes", "message"), [
    ({"epochs": 0}, r"Epochs \(--epochs\) must be a whole number from 1 to 1000"),
    ({"epochs": 2.5}, "whole number"),
    ({"learning_rate": 0}, r"Learning rate \(--learning-rate\) must be in \(0, 10\)"),
    ({"dropout": 1.0}, r"Dropout \(--dropout\) must be in \[0, 1\)"),
    ({"optimizer": "lion"}, "use one of adam, adamw, sgd, rmsprop"),
    ({"strategy": "gradual", "unfreeze": 0}, r"--unfreeze"),
    ({"strategy": "gradual", "unfreeze": 2, "epochs_per_stage": 0}, "--epochs-per-stage"),
    ({"strategy": "partial", "unfreeze": 2, "lr_decay": 1.5}, r"--lr-decay\) must be in"),
    ({"class_weights": "yes"}, "on or off"),
    ({"val_split": 0.5, "test_split": 0.4}, "leave 10% to train on"),
])
def test_validation_names_the_setting_and_its_option(changes, message):
    with pytest.raises(SpecError, match=message):
        RunSpec(**changes).normalized()


def test_settings_that_do_not_apply_are_stored_off_so_equal_work_is_equal():
    frozen = RunSpec(unfreeze=5, head_epochs=7, lr_decay=0.5, epochs_per_stage=4).normalized()
    assert (frozen.unfreeze, frozen.head_epochs, frozen.lr_decay, frozen.epochs_per_stage) == (
        0, 0, 1.0, 0)
    assert frozen == RunSpec().normalized()
    partial = RunSpec(strategy="partial", unfreeze=2, lr_decay=0.5, head_epochs=9).normalized()
    assert (partial.lr_decay, partial.head_epochs, partial.fine_tune_lr_factor) == (0.5, 0, 1.0)


def test_settings_added_later_keep_older_runs_cache_keys():
    spec = RunSpec(strategy="two-phase", unfreeze=2).normalized()
    without_new = {k: v for k, v in spec.to_dict().items()
                   if k not in ("epochs_per_stage", "lr_decay")}
    without_new["weights"] = "w"
    import hashlib

    digest = hashlib.sha256()
    digest.update(spec_table.canonical_json(without_new).encode())
    digest.update(b"data")
    assert cache_key(spec, "w", "data") == digest.hexdigest()
    decayed = dataclasses.replace(spec, lr_decay=0.5)
    assert cache_key(decayed, "w", "data") != cache_key(spec, "w", "data")


def test_summary_speaks_of_what_applies():
    lines = tle.describe(RunSpec(strategy="gradual", unfreeze=3, unfreeze_unit="blocks",
                                 epochs_per_stage=2, lr_decay=0.5).normalized())
    assert lines["freeze"] == ["Gradual unfreezing", "top 3 blocks", "after 3 head epochs",
                               "LR × 0.1", "epochs per stage: 2", "LR × 0.5 per block down"]
    assert tle.describe(RunSpec().normalized())["freeze"] == ["Frozen backbone"]
    assert "class weights" in tle.describe(RunSpec(class_weights=True))["training"]


# --- phase plans -------------------------------------------------------------------------


def _plan(**changes):
    return [(p.name, p.epochs, p.trainable_top, p.lr_factor, p.lr_decay, p.cached_features,
             p.cached_activations) for p in phases(RunSpec(**changes).normalized())]


def test_each_strategy_is_a_phase_plan():
    assert _plan() == [("head", 10, 0, 1.0, 1.0, True, False)]
    assert _plan(augment=("flip",)) == [("head", 10, 0, 1.0, 1.0, False, False)]
    assert _plan(strategy="partial", unfreeze=4) == [
        ("fine-tune", 10, 4, 1.0, 1.0, False, True)]
    assert _plan(strategy="partial", unfreeze=4, augment=("flip",)) == [
        ("fine-tune", 10, 4, 1.0, 1.0, False, False)]
    assert _plan(strategy="full", lr_decay=0.8) == [
        ("fine-tune", 10, ALL, 1.0, 0.8, False, False)]
    assert _plan(strategy="two-phase", unfreeze=2, head_epochs=4, epochs=6) == [
        ("head", 4, 0, 1.0, 1.0, True, False), ("fine-tune", 6, 2, 0.1, 1.0, False, True)]


def test_gradual_unfreezing_adds_one_block_per_stage_down_to_unfreeze():
    plan = phases(RunSpec(strategy="gradual", unfreeze=3, unfreeze_unit="blocks",
                          head_epochs=2, epochs_per_stage=2, epochs=5, lr_decay=0.5,
                          learning_rate=1e-3).normalized())
    assert [(p.name, p.epochs, p.trainable_top, p.unit) for p in plan] == [
        ("head", 2, 0, "layers"), ("stage-1", 2, 1, "blocks"), ("stage-2", 2, 2, "blocks"),
        ("stage-3", 5, 3, "blocks")]
    assert [p.trainable_text for p in plan] == [
        "head only", "top 1 block + head", "top 2 blocks + head", "top 3 blocks + head"]
    assert plan[-1].title == "Stage 3 of 3: top 3 blocks"
    assert all(p.lr_factor == 0.1 and p.lr_decay == 0.5 for p in plan[1:])
    assert [p.cached_activations for p in plan] == [False, True, True, True]


def test_a_phase_that_cannot_use_cached_activations_says_why():
    def reasons(**changes):
        return [p.pixels_reason for p in phases(RunSpec(**changes).normalized())]

    assert reasons(strategy="partial", unfreeze=2) == [None]
    assert reasons(strategy="partial", unfreeze=2, augment=("flip",)) == [
        "augmentation changes each image every epoch"]
    assert "random starting weights" in reasons(strategy="partial", unfreeze=2,
                                                weights="none")[0]
    # Nothing to cache: a frozen backbone, or one that trains from its first layer.
    assert reasons(weights="none") == [None]
    assert reasons(strategy="full", augment=("flip",)) == [None]
    assert reasons(strategy="two-phase", unfreeze=2, augment=("flip",)) == [
        None, "augmentation changes each image every epoch"]


def test_discriminative_rates_fall_block_by_block_from_the_top():
    freeze = describe_freeze("MobileNetV2-0.35", 3, "blocks", image_size=96)
    factors = layer_rate_factors(freeze, 0.5)
    by_block = {layer.block: factors[layer.name] for layer in freeze.layers
                if layer.name in factors}
    top_three = [b.name for b in freeze.blocks][-3:]
    assert by_block == {top_three[2]: 0.5, top_three[1]: 0.25, top_three[0]: 0.125}
    assert layer_rate_factors(freeze, 1.0) == {}


def test_scaled_optimizer_moves_each_variable_by_its_own_rate():
    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((3,))
        outputs = keras.layers.Dense(2, name="top")(keras.layers.Dense(4, name="low")(inputs))
        return keras.Model(inputs, outputs)

    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    moved = {}
    for factor in (1.0, 0.25):
        model = build()
        before = [w.numpy().copy() for w in model.get_layer("low").weights]
        factors = {id(v): factor for v in model.get_layer("low").trainable_weights}
        model.compile(optimizer=make_optimizer("sgd", 0.1, factors), loss="mse")
        model.train_on_batch(x, y)
        moved[factor] = np.abs(model.get_layer("low").weights[0].numpy() - before[0]).sum()
    assert moved[0.25] == pytest.approx(moved[1.0] * 0.25, rel=1e-4)


# --- resuming ----------------------------------------------------------------------------


def _weights_file(path, **attrs):
    with h5py.File(path, "w") as handle:
        handle.create_dataset("w", data=np.zeros(2))
        handle.attrs.update(attrs)


def _metrics(*phases_and_accuracies):
    return [{"epoch": i + 1, "phase": phase, "val_accuracy": acc}
            for i, (phase, acc) in enumerate(phases_and_accuracies)]


def test_resume_state_is_the_finished_prefix_of_the_plan(tmp_path):
    plan = phases(RunSpec(strategy="gradual", unfreeze=2, head_epochs=2,
                          epochs_per_stage=1).normalized())
    metrics = _metrics(("head", 0.7), ("head", 0.8), ("stage-1", 0.85))
    assert read_resume_state(tmp_path, plan, metrics, keep_best=True).done == ()

    head_file = done_path(tmp_path, "head")
    _weights_file(head_file)
    tag_phase_file(head_file, PhaseResult(2, 2, 0.8, 2))
    stage_file = done_path(tmp_path, "stage-2")  # not after a finished stage-1: ignored
    _weights_file(stage_file)
    tag_phase_file(stage_file, PhaseResult(1, 4, 0.9, 4))
    state = read_resume_state(tmp_path, plan, metrics, keep_best=True)
    assert state.done == (PhaseResult(2, 2, 0.8, 2),)
    assert (state.next_index(), state.epoch_offset()) == (1, 2)

    done_path(tmp_path, "stage-1").write_bytes(b"torn")  # a worker killed mid-write
    assert read_resume_state(tmp_path, plan, metrics, keep_best=True).next_index() == 1


def test_a_head_phase_file_of_an_earlier_version_still_resumes(tmp_path):
    plan = phases(RunSpec(strategy="two-phase", unfreeze=2, head_epochs=3).normalized())
    metrics = _metrics(("head", 0.6), ("head", 0.9), ("head", 0.8), ("fine-tune", 0.7))
    _weights_file(tmp_path / "phase1.weights.h5")  # untagged: metrics fill in
    state = read_resume_state(tmp_path, plan, metrics, keep_best=True)
    assert state.done == (PhaseResult(3, 2, 0.9, 3),)
    _weights_file(tmp_path / "phase1.weights.h5", epoch=3, val_accuracy=0.8)
    assert read_resume_state(tmp_path, plan, metrics, keep_best=True).done == (
        PhaseResult(3, 3, 0.8, 3),)
    assert read_resume_state(tmp_path, plan, metrics, keep_best=False).done[0].kept_epoch == 3


# --- features outside a run --------------------------------------------------------------


def test_feature_extraction_is_a_function_any_job_can_call(workspace, tiny_dataset):
    from tl_engine.features import FeaturesCancelled

    extractor = tle.feature_extractor("MobileNetV2-0.35", weights="none", image_size=32)
    records = list(tiny_dataset.records)
    seen: list[tle.Progress] = []

    def report(progress: tle.Progress) -> bool:
        seen.append(progress)
        return False

    first = tle.extract_features(workspace, extractor.model, extractor.key,
                                 [("all images", records[:20]), ("rest", records[10:])],
                                 batch_size=8, report=report)
    assert [m.shape for m in first.matrices] == [(20, 1280), (20, 1280)]
    assert (first.computed, first.reused) == (30, 10)  # the overlap is computed once
    assert seen and seen[-1].pass_name == "rest" and seen[-1].fraction == 1.0
    np.testing.assert_allclose(first.matrices[0][10:], first.matrices[1][:10], atol=1e-6)

    again = tle.extract_features(workspace, extractor.model, extractor.key,
                                 [("all images", records)], batch_size=8)
    assert (again.computed, again.reused, again.seconds_per_image) == (0, 30, None)

    other = tle.feature_extractor("MobileNetV2-0.35", weights="none", image_size=48)
    with pytest.raises(FeaturesCancelled):
        tle.extract_features(workspace, other.model, other.key, [("all images", records)],
                             batch_size=8, report=lambda progress: True)
