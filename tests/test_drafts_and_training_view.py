"""The settings a person is editing survive reloads and new tabs (stored per project and
person), and the Training page shows a person their own run, never someone else's as
theirs; people's names are shown as typed, never as Markdown."""

from __future__ import annotations

import pytest
from conftest import PROJECT_ROOT, TINY_CLASSES, open_app, write_color_classes
from streamlit.testing.v1 import AppTest

import tl_engine as tle

TINY_SPEC = {"backbone": "MobileNetV2-0.35", "weights": "none", "image_size": 32, "epochs": 1,
             "batch_size": 8, "learning_rate": 0.01}
HOSTILE = "![x](http://127.0.0.1:9/p.png) [sign in again](http://127.0.0.1:9/) <b>bold</b>"



def all_markdown(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.info, *at.success,
                                            *at.subheader])


def test_drafts_are_stored_per_project_and_person(tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    ws.ensure_project("demo")
    ws.ensure_project("other")
    assert tle.load_draft(ws, "demo", "ann") is None
    tle.save_draft(ws, "demo", "ann", {**tle.RunSpec().to_dict(), "epochs": 7,
                                       "a_setting_from_an_older_version": 1})
    assert tle.load_draft(ws, "demo", "ann")["epochs"] == 7
    assert "a_setting_from_an_older_version" not in tle.load_draft(ws, "demo", "ann")
    assert tle.load_draft(ws, "demo", "bob") is None
    assert tle.load_draft(ws, "other", "ann") is None
    # A reopened workspace (a server restart) still has it.
    assert tle.load_draft(tle.Workspace(ws.root), "demo", "ann")["epochs"] == 7


def test_a_reload_or_a_new_tab_restores_the_settings(monkeypatch, demo_ws, keras_home):
    # keras_home: the run it starts needs the shared ImageNet weights (skips without them).
    at = open_app(monkeypatch, demo_ws.root, "views/model.py", project="demo", user="ann")
    at.number_input(key="model_hidden_units").set_value(128).run()
    at.switch_page("views/freeze.py").run()
    at.radio(key="freeze_strategy").set_value("partial").run()
    at.switch_page("views/training.py").run()
    at.number_input(key="train_epochs").set_value(4)
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    assert not at.exception
    (run,) = tle.list_runs(demo_ws, "demo")
    try:
        # Reload: a new session on the same URL.
        again = open_app(monkeypatch, demo_ws.root, "views/training.py", project="demo",
                         user="ann")
        assert again.number_input(key="train_epochs").value == 4
        again.switch_page("views/model.py").run()
        assert again.number_input(key="model_hidden_units").value == 128
        again.switch_page("views/freeze.py").run()
        assert again.radio(key="freeze_strategy").value == "partial"

        # Somebody else starts from their own settings, not Ann's.
        bob = open_app(monkeypatch, demo_ws.root, "views/training.py", project="demo",
                       user="bob")
        assert bob.number_input(key="train_epochs").value == tle.RunSpec().epochs
    finally:
        tle.cancel_run(demo_ws, run.id)
        tle.wait_for_run(demo_ws, run.id, timeout_s=180)


def test_load_these_settings_replaces_the_draft_on_every_page(monkeypatch, demo_ws):
    (dataset,) = tle.list_datasets(demo_ws, "demo")
    spec = tle.RunSpec(**{**TINY_SPEC, "hidden_units": 64, "dropout": 0.5})
    run_id = tle.submit_run(demo_ws, "demo", dataset.id, spec, start_worker=False,
                            started_by="ann").run_id
    tle.cancel_run(demo_ws, run_id)
    at = open_app(monkeypatch, demo_ws.root, "views/model.py", project="demo", user="ann")
    assert at.number_input(key="model_hidden_units").value == 0
    at.switch_page("views/training.py").run()
    at.button(key=f"load_{run_id}").click().run()
    at.switch_page("views/model.py").run()
    assert at.number_input(key="model_hidden_units").value == 64
    assert at.slider(key="model_dropout").value == 0.5
    # And it is stored: a new tab has it too.
    fresh = open_app(monkeypatch, demo_ws.root, "views/model.py", project="demo", user="ann")
    assert fresh.number_input(key="model_hidden_units").value == 64


def test_the_name_is_kept_in_the_url(monkeypatch, demo_ws):
    at = open_app(monkeypatch, demo_ws.root, project="demo")
    at.text_input(key="user_name").input("  Ann   Lee ").run()
    assert at.query_params["user"] == ["Ann Lee"] or at.query_params["user"] == "Ann Lee"
    assert at.text_input(key="user_name").value == "Ann Lee"


def test_the_chosen_dataset_is_kept_in_the_url(monkeypatch, demo_ws, tmp_path):
    older = tle.list_datasets(demo_ws, "demo")[0]
    newer = tle.ingest_folder(demo_ws, write_color_classes(
        tmp_path / "newer", {"dark": (30, 30, 30), "light": (220, 220, 220)}, per_class=4),
        project="demo", name="newer photos")
    at = open_app(monkeypatch, demo_ws.root, "views/dataset.py", project="demo")
    assert at.selectbox(key="dataset_pick").value == newer.id  # the newest by default
    at.selectbox(key="dataset_pick").select(older.id).run()
    assert at.query_params["dataset"] == older.id
    at.switch_page("views/training.py").run()  # a page switch keeps the choice in the URL
    assert at.query_params["dataset"] == older.id
    assert f"**Dataset** &nbsp; {older.name} · 30 images" in all_markdown(at)

    # A reload (a new session, only the URL) trains on the same dataset, not the newest.
    reloaded = open_app(monkeypatch, demo_ws.root, "views/training.py", project="demo",
                        dataset=older.id)
    assert f"**Dataset** &nbsp; {older.name} · 30 images" in all_markdown(reloaded)
    # Another project's (or a deleted) dataset in a link falls back to the newest.
    stranger = open_app(monkeypatch, demo_ws.root, "views/training.py", project="demo",
                        dataset="d000000000000")
    assert f"**Dataset** &nbsp; {newer.name} · 8 images" in all_markdown(stranger)


@pytest.mark.bad_input
def test_training_page_shows_my_run_and_lists_others_with_their_names(monkeypatch, demo_ws):
    (dataset,) = tle.list_datasets(demo_ws, "demo")
    mine = tle.submit_run(demo_ws, "demo", dataset.id, tle.RunSpec(**TINY_SPEC),
                          start_worker=False, started_by="ann").run_id
    theirs = tle.submit_run(demo_ws, "demo", dataset.id,
                            tle.RunSpec(**{**TINY_SPEC, "epochs": 2}), start_worker=False,
                            started_by=HOSTILE).run_id
    try:
        at = open_app(monkeypatch, demo_ws.root, "views/training.py", project="demo",
                      user="ann")
        assert next(s for s in at.selectbox if s.label == "Run").value == mine
        text = all_markdown(at)
        assert theirs in text and "started by" in text
        # Typed text stays text: no image, no link, no HTML in the Markdown sent out.
        assert "![x](" not in text and "](http" not in text and "<b>" not in text
        assert "!\\[x\\]\\(http\\:\u2060//127.0.0.1\\:9/p.png)" in text

        at.button(key=f"show_{theirs}").click().run()
        assert next(s for s in at.selectbox if s.label == "Run").value == theirs
        assert at.query_params["run"] in (theirs, [theirs])
    finally:
        for run_id in (mine, theirs):
            tle.cancel_run(demo_ws, run_id)


@pytest.mark.bad_input
def test_hostile_project_names_are_text_on_home(monkeypatch, tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    name = ws.ensure_project("[sign in again](http://127.0.0.1:9/) **x**")
    at = open_app(monkeypatch, ws.root, project=name)
    (subheader,) = at.subheader
    assert "](http" not in subheader.value and "**x**" not in subheader.value


def test_md_escape_keeps_typed_text_literal():
    from dashboard.text import md_escape

    assert md_escape("MobileNetV2-0.35 · 224 px") == "MobileNetV2-0.35 · 224 px"
    assert md_escape("![x](http://h/p.png)") == "!\\[x\\]\\(http\\:\u2060//h/p.png)"
    assert md_escape("none (random init)") == "none (random init)"
    assert md_escape("<b>x</b>") == r"\<b\>x\</b\>"
    assert md_escape("1. first") == r"1\. first" and md_escape("- item") == r"\- item"
    assert md_escape("go to www.example.com") == "go to www\u2060.example.com"
    assert md_escape("ann@example.org") == "ann\u2060\\@example.org"
    assert md_escape("two\nlines") == "two lines"


def test_any_run_on_the_runs_page_can_load_its_settings(monkeypatch, trained_workspace):
    ws, _, run = trained_workspace
    at = open_app(monkeypatch, ws.root, "views/runs.py", project="demo", user="carla")
    # The page (its strategy sweep offers the draft's backbone) may store carla's default
    # draft; the run's settings are not it yet.
    assert tle.load_draft(ws, "demo", "carla") != run.spec.to_dict()
    at.button(key=f"load_{run.id}").click().run()
    assert not at.exception
    assert at.session_state["spec_draft"] == run.spec.to_dict()
    assert tle.load_draft(ws, "demo", "carla") == run.spec.to_dict()


def test_prediction_starts_on_my_newest_model(monkeypatch, demo_ws):
    from tl_engine.jobs import worker_main

    (dataset,) = tle.list_datasets(demo_ws, "demo")
    mine = tle.submit_run(demo_ws, "demo", dataset.id, tle.RunSpec(**TINY_SPEC),
                          start_worker=False, started_by="ann").run_id
    theirs = tle.submit_run(demo_ws, "demo", dataset.id,
                            tle.RunSpec(**{**TINY_SPEC, "epochs": 2}), start_worker=False,
                            started_by="bob").run_id
    worker_main(demo_ws)
    assert {tle.get_run(demo_ws, r).status for r in (mine, theirs)} == {"completed"}
    for user, expected in (("ann", mine), ("bob", theirs)):
        at = open_app(monkeypatch, demo_ws.root, "views/prediction.py", project="demo",
                      user=user)
        assert at.selectbox(key="prediction_run").value == expected


@pytest.mark.bad_input
def test_hostile_names_are_text_in_every_banner(monkeypatch, tmp_path):
    """Home's "is training" banner and the Training page's live panel, with a Markdown
    project name and user name: no link, no image, no HTML reaches the page."""
    from tl_engine import jobs, runs

    ws = tle.Workspace(tmp_path / "ws")
    project = ws.ensure_project("[p](http://127.0.0.1:9/) ![i](http://127.0.0.1:9/i.png)")
    dataset = tle.ingest_folder(ws, write_color_classes(tmp_path / "d", TINY_CLASSES),
                                project=project)
    run_id = tle.submit_run(ws, project, dataset.id, tle.RunSpec(**TINY_SPEC),
                            start_worker=False, started_by=HOSTILE).run_id
    with jobs._slot(ws) as held:  # this process "is" the worker: the run is alive
        assert held
        runs.update_run(ws, run_id, status="running")
        home = open_app(monkeypatch, ws.root, project=project, user="viewer")
        training = open_app(monkeypatch, ws.root, "views/training.py", project=project,
                            user="viewer", run=run_id)
        runs.update_run(ws, run_id, status="cancelled")
    for at in (home, training):
        text = all_markdown(at)
        assert "started by" in text or "by" in text
        assert "](http" not in text and "<b>" not in text and "![" not in text
    assert "is training" in all_markdown(home)
    assert "Running" in all_markdown(training)


@pytest.mark.bad_input
def test_a_malformed_stored_draft_falls_back_to_defaults(monkeypatch, demo_ws):
    tle.save_draft(demo_ws, "demo", "ann", {"epochs": "x", "augment": None, "seed": 7.0,
                                            "hidden_units": [1], "strategy": 3})
    draft = tle.load_draft(demo_ws, "demo", "ann")
    defaults = tle.RunSpec().to_dict()
    assert draft["epochs"] == defaults["epochs"] and draft["augment"] == []
    assert draft["seed"] == 7 and draft["strategy"] == defaults["strategy"]
    for page in ("views/model.py", "views/freeze.py", "views/training.py", "views/dataset.py"):
        open_app(monkeypatch, demo_ws.root, page, project="demo", user="ann")  # no exception


def test_a_queued_run_does_not_name_another_projects_training(monkeypatch, tmp_path):
    from tl_engine import access, jobs, runs

    monkeypatch.setenv("TL_AUTH", "accounts")
    ws = tle.Workspace(tmp_path / "ws")
    tle.accounts.add_account(ws, "ann", "a long enough password")
    tle.accounts.add_account(ws, "bob", "a long enough password")
    mine = access.create_project(ws, tle.Identity("ann"), "mine")
    secret = access.create_project(ws, tle.Identity("bob"), "secret")
    data = write_color_classes(tmp_path / "d", TINY_CLASSES)
    theirs = tle.submit_run(ws, secret, tle.ingest_folder(ws, data, project=secret).id,
                            tle.RunSpec(**TINY_SPEC), start_worker=False,
                            started_by="bob").run_id
    queued = tle.submit_run(ws, mine, tle.ingest_folder(ws, data, project=mine).id,
                            tle.RunSpec(**TINY_SPEC), start_worker=False,
                            started_by="ann").run_id
    with jobs._slot(ws) as held:
        assert held
        runs.update_run(ws, theirs, status="running")
        token = tle.accounts.start_session(ws, "ann")
        monkeypatch.setenv("TL_WORKSPACE", str(ws.root))
        at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
        at.session_state["auth_token"] = token
        at.query_params["project"] = mine
        at.query_params["run"] = queued
        at.run()
        at.switch_page("views/training.py").run()
        runs.update_run(ws, theirs, status="cancelled")
    text = all_markdown(at)
    assert "a run of another project is training" in text
    assert "bob" not in text and "MobileNetV2" not in text.split("in queue")[1][:80]
