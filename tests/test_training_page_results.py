"""The Training page says which weights a run kept, shows hints where a setting or a
result hurts, offers the head-phase weights of a two-phase run that fine-tuning made
worse, and lets a dataset with its own split hold out a test split."""

from __future__ import annotations

import pytest
from conftest import PROJECT_ROOT, TINY_CLASSES, open_app, train_tiny_run, write_color_classes
from streamlit.testing.v1 import AppTest

import tl_engine as tle


def shown(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_completed_run_says_which_epoch_it_kept(monkeypatch, trained_workspace):
    ws, _, run = trained_workspace
    at = open_app(monkeypatch, ws.root, "views/training.py", project="demo", run=run.id)
    summary = run.summary
    kept = (f"best epoch {summary['best_epoch']} of {run.epochs_run} (restored)"
            if summary["restored_best"] else f"last epoch ({run.epochs_run})")
    assert kept in shown(at.success)
    last = next(m for m in at.metric if m.label == "Val accuracy, last epoch")
    assert last.value == f"{summary['final_val_accuracy']:.1%}"
    assert "the last epoch reached" in shown(at.caption)


def test_keep_weights_choice_goes_into_the_run(monkeypatch, tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    tle.ingest_folder(ws, write_color_classes(tmp_path / "d", TINY_CLASSES), project="demo")
    monkeypatch.setenv("TL_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    at.query_params["project"] = "demo"
    at.session_state["spec_draft"] = tle.RunSpec(
        backbone="MobileNetV2-0.35", weights="none", image_size=32, epochs=1).to_dict()
    at.run()
    at.switch_page("views/training.py").run()
    at.radio(key="train_keep_weights").set_value("last")
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    (run,) = tle.list_runs(ws, "demo")
    try:
        assert run.spec.keep_weights == "last"
    finally:
        tle.cancel_run(ws, run.id)
        tle.wait_for_run(ws, run.id, timeout_s=180)


def test_a_given_split_can_hold_out_a_test_split(monkeypatch, tmp_path):
    root = tmp_path / "split"
    write_color_classes(root / "train", TINY_CLASSES, per_class=10)
    write_color_classes(root / "val", TINY_CLASSES, per_class=4, seed=1)
    ws = tle.Workspace(tmp_path / "ws")
    tle.ingest_folder(ws, root, project="demo")
    at = open_app(monkeypatch, ws.root, "views/training.py", project="demo")
    assert at.slider(key="train_val_split").disabled  # the dataset's own val is used
    assert not at.slider(key="train_test_split").disabled
    assert "test split is carved out of its training part" in shown(at.caption)
    at.slider(key="train_test_split").set_value(0.2).run()


def test_harsh_fine_tuning_is_hinted_on_freeze_and_training(monkeypatch, tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    tle.ingest_folder(ws, write_color_classes(tmp_path / "d", TINY_CLASSES), project="demo")
    monkeypatch.setenv("TL_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    at.query_params["project"] = "demo"
    at.session_state["spec_draft"] = tle.RunSpec(strategy="partial", unfreeze=20,
                                                 learning_rate=1e-3).to_dict()
    at.run()
    at.switch_page("views/freeze.py").run()
    assert "0.856" in shown(at.warning) and "1e-4" in shown(at.warning)
    at.switch_page("views/training.py").run()
    assert "0.856" in shown(at.warning)
    gentle = tle.RunSpec(strategy="partial", unfreeze=20, learning_rate=1e-4)
    assert tle.spec_hints(gentle) == []


def test_worse_fine_tuning_offers_the_head_phase_weights(monkeypatch, workspace, tiny_dataset,
                                                         keras_home):
    # A fine-tune rate of 1.0 wrecks what the head phase learned.
    run = train_tiny_run(workspace, tiny_dataset, weights="imagenet", image_size=32,
                         learning_rate=0.01, strategy="two-phase", unfreeze=20, head_epochs=3,
                         epochs=2, fine_tune_lr_factor=100.0)
    assert run.summary["head_model_available"], run.summary
    at = open_app(monkeypatch, workspace.root, "views/training.py", project="test", run=run.id)
    assert "Fine-tuning made it worse" in shown(at.warning) + shown(at.info)
    runs_page = open_app(monkeypatch, workspace.root, "views/runs.py", project="test",
                         run=run.id)
    assert "Fine-tuning made it worse" in shown(runs_page.warning) + shown(runs_page.info)
    from dashboard import run_views

    version = run_views.model_version(workspace, run.id)
    at.button(key=f"use_head_{run.id}").click().run()
    # The Prediction page's caches are keyed by the model file: they load the new one.
    assert run_views.model_version(workspace, run.id) != version
    assert not at.exception
    switched = tle.get_run(workspace, run.id)
    assert switched.summary["weights_from"] == "head"
    assert f"{switched.val_accuracy:.1%}" in shown(at.success)
    assert "holds the head-phase weights" in shown(at.caption)


def test_live_progress_names_the_pass_and_has_an_eta(monkeypatch, tmp_path):
    from tl_engine import jobs, runs

    ws = tle.Workspace(tmp_path / "ws")
    dataset = tle.ingest_folder(ws, write_color_classes(tmp_path / "d", TINY_CLASSES),
                                project="demo")
    run_id = tle.submit_run(ws, "demo", dataset.id, tle.RunSpec(
        backbone="MobileNetV2-0.35", weights="none", image_size=32), start_worker=False,
        started_by="ann").run_id
    # This process holds the training slot: the run is alive as far as any reader knows.
    with jobs._slot(ws) as held:
        assert held
        runs.update_run(ws, run_id, status="running")
        runs.heartbeat(ws, run_id, tle.Progress(
            phase="features", pass_name="validation images", pass_index=2,
            passes=2, images_done=32, images_total=64, images_per_s=41.5,
            fraction=0.8, eta_s=12.0, elapsed_s=30.0, step=1, steps=2))
        at = open_app(monkeypatch, ws.root, "views/training.py", project="demo", user="ann")
        progress = at.get("progress")[0].proto.text
        assert "validation images (2 of 2)" in progress
        assert "32 / 64 images" in progress and "42 images/s" in progress
        assert "about 12 s left" in progress
        left = next(m for m in at.metric if m.label == "Time left")
        assert left.value == "12 s"
        runs.update_run(ws, run_id, status="cancelled")


@pytest.mark.bad_input
def test_training_refuses_a_weights_path_the_server_does_not_offer(monkeypatch, tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    tle.ingest_folder(ws, write_color_classes(tmp_path / "d", TINY_CLASSES), project="demo")
    monkeypatch.setenv("TL_WORKSPACE", str(ws.root))
    monkeypatch.delenv("TL_WEIGHTS_DIR", raising=False)
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    at.query_params["project"] = "demo"
    # As "Load these settings" would bring it from a run trained elsewhere.
    at.session_state["spec_draft"] = tle.RunSpec(
        backbone="MobileNetV2-0.35", weights=str(tmp_path / "some.weights.h5"),
        image_size=32, epochs=1).to_dict()
    at.run()
    at.switch_page("views/training.py").run()
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    assert not at.exception
    assert "not offered on this server" in shown(at.error)
    assert str(tmp_path) not in shown(at.error)
    assert tle.list_runs(ws, "demo") == []


def test_a_frozen_worker_is_named_on_the_training_page(monkeypatch, tmp_path):
    """A run whose worker holds the slot but has been silent for minutes: the page says so,
    and how to end the worker so that the run can resume."""
    import os
    import time

    from tl_engine.jobs import _slot
    from tl_engine.runs import claim_next_run, update_run

    ws = tle.Workspace(tmp_path / "ws")
    dataset = tle.ingest_folder(ws, write_color_classes(tmp_path / "d", TINY_CLASSES),
                                project="demo")
    spec = tle.RunSpec(backbone="MobileNetV2-0.35", weights="none", image_size=32, epochs=1)
    run_id = tle.submit_run(ws, "demo", dataset.id, spec, start_worker=False).run_id
    with _slot(ws) as held:  # this process is the worker, alive, holding the slot...
        assert held and claim_next_run(ws) == run_id
        update_run(ws, run_id, heartbeat_at=time.time() - 600)  # ...silent for 10 minutes
        at = open_app(monkeypatch, ws.root, "views/training.py", project="demo", run=run_id)
        warning = shown(at.warning)
        assert f"Run {run_id} has shown no sign of life for 10 min" in warning
        assert f"`kill -9 {os.getpid()}`" in warning
        assert tle.get_run(ws, run_id).status == "running"
        update_run(ws, run_id, heartbeat_at=time.time())  # a beat: nothing to say
        at.run()
        assert "no sign of life" not in shown(at.warning)
        tle.cancel_run(ws, run_id)
