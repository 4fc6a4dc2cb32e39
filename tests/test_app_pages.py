"""The step pages (Home, Dataset, Model, Freeze strategy, Training) driven through Streamlit's
AppTest against real workspaces: what they render, and what their buttons store."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, TINY_CLASSES, open_app, texts, write_color_classes
from streamlit.testing.v1 import AppTest

import tl_engine as tle
from dashboard import state

MY_PAGES = ["views/home.py", "views/dataset.py", "views/model.py", "views/freeze.py",
            "views/training.py"]
TINY_SPEC = {"backbone": "MobileNetV2-0.35", "weights": "none", "image_size": 32, "epochs": 1,
             "batch_size": 8, "learning_rate": 0.01}




def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def png_bytes(colour: tuple[int, int, int], seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_to_jpeg(data: bytes) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def demo_ws(tmp_path: Path) -> tle.Workspace:
    """A fresh workspace with project 'demo' and a 3-class colour dataset, no runs."""
    ws = tle.Workspace(tmp_path / "ws")
    data = write_color_classes(tmp_path / "data", TINY_CLASSES, per_class=10)
    tle.ingest_folder(ws, data, project="demo")
    return ws


# --- rendering ------------------------------------------------------------------------


def test_every_page_renders_in_an_empty_workspace(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "ws")
    assert "Create your first project" in texts(at.subheader)
    # Nothing loads TensorFlow for a page view; asked to, it loads in the background and the
    # page shows the hardware once it is done.
    # (An earlier test in this process may have loaded it already: then no button.)
    if any(button.key == "check_hardware" for button in at.button):
        at.button(key="check_hardware").click().run()
    state.device()
    at.run()
    assert metric(at, "Trains on") in ("CPU", "GPU")
    for page in MY_PAGES[1:]:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert "Choose or create a project" in texts(at.info), page


def test_every_page_renders_for_a_project_with_a_completed_run(monkeypatch, trained_workspace):
    ws, dataset, run = trained_workspace
    at = open_app(monkeypatch, ws.root, project="demo")
    assert metric(at, "Datasets") == "1" and metric(at, "Runs") == "1"
    assert metric(at, "Best val accuracy") == f"{run.val_accuracy:.1%}"

    at.switch_page("views/dataset.py").run()
    assert not at.exception
    assert metric(at, "Images") == "30" and metric(at, "Classes") == "3"
    assert len(at.get("plotly_chart")) == 1  # class counts
    assert len(at.get("image")) == 10, "thumbnails of the first class"

    at.switch_page("views/model.py").run()
    assert not at.exception
    assert "MobileNetV2-0.35" in texts(at.markdown)  # the current choice summary

    at.switch_page("views/freeze.py").run()
    assert not at.exception
    assert {"Trainable", "Frozen", "Share trained"} <= {m.label for m in at.metric}

    at.switch_page("views/training.py").run()
    assert not at.exception
    # No run chosen in this session, and not one of this person's: nothing is shown as
    # if it were theirs; they pick it.
    picker = next(s for s in at.selectbox if s.label == "Run")
    assert picker.value is None and not at.success
    picker.select(run.id).run()
    assert any(s.label == "Run" and s.value == run.id for s in at.selectbox)
    assert "Completed" in texts(at.success)
    assert metric(at, "Val accuracy") == f"{run.val_accuracy:.1%}"
    at.button(key=f"load_{run.id}").click().run()  # replay: the run's settings become the draft
    assert at.session_state["spec_draft"] == run.spec.to_dict()
    assert at.number_input(key="train_epochs").value == run.spec.epochs


# --- what the widgets do --------------------------------------------------------------


def test_home_form_creates_the_project_and_puts_it_in_the_url(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "ws")
    at.text_input(key="home_new_name").input("bolts qa")
    at.button(key="FormSubmitter:home_new_form-Create project").click().run()
    assert not at.exception
    assert tle.Workspace(tmp_path / "ws").list_projects() == ["bolts qa"]
    assert at.query_params["project"] == "bolts qa"
    assert "Project · bolts qa" in texts(at.subheader)


def test_invalid_project_name_shows_the_engine_message(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "ws")
    at.text_input(key="home_new_name").input("x" * 80)
    at.button(key="FormSubmitter:home_new_form-Create project").click().run()
    assert not at.exception
    assert "at most 64 characters; this one has 80" in texts(at.error)
    # The refused name stays, to be shortened rather than typed again.
    assert at.text_input(key="home_new_name").value == "x" * 80
    at.text_input(key="home_new_name").input("   ")
    at.button(key="FormSubmitter:home_new_form-Create project").click().run()
    assert "cannot be empty or only spaces" in texts(at.error)
    assert tle.Workspace(tmp_path / "ws").list_projects() == []
    at.text_input(key="home_new_name").input("bolts")
    at.button(key="FormSubmitter:home_new_form-Create project").click().run()
    assert tle.Workspace(tmp_path / "ws").list_projects() == ["bolts"]
    assert not texts(at.error)  # the old reason is gone with the name it was about


def test_sample_button_creates_a_dataset(monkeypatch, tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    ws.ensure_project("demo")
    at = open_app(monkeypatch, ws.root, project="demo", page="views/dataset.py")
    assert "No dataset in this project yet" in texts(at.info)
    at.button(key="sample_shapes").click().run()
    assert not at.exception
    (dataset,) = tle.list_datasets(ws, "demo")
    assert dataset.classes == ("circle", "square", "triangle") and len(dataset.records) == 90
    assert "90 images in 3 classes" in texts(at.success)
    assert metric(at, "Images") == "90"


def test_upload_by_class_with_a_webcam_shot_and_a_bad_first_try(monkeypatch, tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    ws.ensure_project("demo")
    at = open_app(monkeypatch, ws.root, project="demo", page="views/dataset.py")
    # One class only: the engine refuses it, the page says why and stores nothing.
    at.text_input(key="class_name_1").input("red")
    at.file_uploader(key="class_files_1_0").set_value(
        [(f"r{i}.png", png_bytes((200, 30, 30), i), "image/png") for i in range(3)]
    )
    at.button(key="create_from_uploads").click().run()
    assert not at.exception
    assert "No dataset was created" in texts(at.error)
    assert tle.list_datasets(ws, "demo") == []

    at.text_input(key="class_name_2").input("blue")
    at.file_uploader(key="class_files_2_0").set_value(
        [(f"b{i}.png", png_bytes((30, 30, 200), 10 + i), "image/png") for i in range(2)]
    )
    at.toggle(key="use_camera").set_value(True).run()
    at.selectbox(key="camera_class").set_value(2).run()
    at.camera_input(key="camera_0").set_value(
        ("shot.jpg", png_to_jpeg(png_bytes((30, 30, 200), 99)), "image/jpeg")).run()
    assert "+ 1 webcam shot(s)" in texts(at.caption)
    at.button(key="create_from_uploads").click().run()
    assert not at.exception
    (dataset,) = tle.list_datasets(ws, "demo")
    assert dataset.counts() == {"blue": 3, "red": 3}
    # Fewer than the recommended images per class: the report says so in plain words.
    assert "collect at least" in texts(at.warning)


def test_folder_upload_takes_labels_from_the_parent_folders(monkeypatch, tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    ws.ensure_project("demo")
    at = open_app(monkeypatch, ws.root, project="demo", page="views/dataset.py")
    files = [
        (f"shots/{split}/{label}/{label}{i}.png", png_bytes(colour, i + 10 * (split == "val")),
         "image/png")
        for label, colour in (("ants", (120, 80, 40)), ("bees", (220, 200, 40)))
        for split in ("train", "val")
        for i in range(2)
    ]
    at.file_uploader(key="folder_0").set_value(files).run()
    at.button(key="create_from_folder").click().run()
    assert not at.exception
    (dataset,) = tle.list_datasets(ws, "demo")
    assert dataset.name == "shots" and dataset.counts() == {"ants": 4, "bees": 4}


def test_deleting_a_dataset_that_runs_use_shows_the_engine_error(monkeypatch,
                                                                  trained_workspace):
    ws, dataset, _ = trained_workspace
    at = open_app(monkeypatch, ws.root, project="demo", page="views/dataset.py")
    at.checkbox(key=f"confirm_delete_{dataset.id}").check().run()
    at.button(key="delete_dataset").click().run()
    assert not at.exception
    assert "delete those runs first" in texts(at.error)
    assert [d.id for d in tle.list_datasets(ws, "demo")] == [dataset.id]


def test_model_page_choices_change_the_spec_draft(monkeypatch, demo_ws):
    at = open_app(monkeypatch, demo_ws.root, project="demo", page="views/model.py")
    at.selectbox(key="model_backbone").select("MobileNet-0.25").run()
    at.radio(key="model_weights_source").set_value("none").run()
    at.number_input(key="model_image_size").set_value(96).run()
    at.number_input(key="model_hidden_units").set_value(64).run()
    assert not at.exception
    draft = at.session_state["spec_draft"]
    assert (draft["backbone"], draft["weights"], draft["image_size"], draft["hidden_units"]) == (
        "MobileNet-0.25", "none", 96, 64)
    assert "MobileNet-0.25 · random-init weights · 96 px" in texts(at.markdown)
    # A trainable top counted for a deeper backbone becomes all of the chosen one.
    at.session_state["spec_draft"] = {**draft, "strategy": "partial", "unfreeze": 150}
    at.run()
    assert at.session_state["spec_draft"]["unfreeze"] == 86  # MobileNet-0.25's layers

    # ImageNet weights that are neither cached nor downloadable: the page says where to
    # put which file, and that "none" still works.
    at.selectbox(key="model_backbone").select("ResNet50").run()
    at.radio(key="model_weights_source").set_value("imagenet").run()
    assert at.session_state["spec_draft"]["image_size"] == 224  # the new backbone's default
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in texts(at.warning)


def test_freeze_slider_changes_the_trainable_parameters(monkeypatch, demo_ws):
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    monkeypatch.setenv("TL_WORKSPACE", str(demo_ws.root))
    at.query_params["project"] = "demo"
    at.session_state["spec_draft"] = tle.RunSpec(**TINY_SPEC).to_dict()
    at.run()
    at.switch_page("views/freeze.py").run()
    frozen = metric(at, "Trainable")
    at.radio(key="freeze_strategy").set_value("partial").run()
    at.slider(key="freeze_unfreeze").set_value(10).run()
    ten = metric(at, "Trainable")
    at.slider(key="freeze_unfreeze").set_value(60).run()
    sixty = metric(at, "Trainable")
    assert not at.exception
    assert len({frozen, ten, sixty}) == 3
    assert at.session_state["spec_draft"]["strategy"] == "partial"
    assert at.session_state["spec_draft"]["unfreeze"] == 60

    at.radio(key="freeze_unfreeze_unit").set_value("blocks").run()
    assert at.slider(key="freeze_unfreeze").value == 2  # a sensible start when switching unit
    assert at.session_state["spec_draft"]["unfreeze_unit"] == "blocks"
    assert len(at.get("plotly_chart")) == 1  # the frozen / trainable strip


def test_training_page_says_which_phases_cannot_use_cached_activations(monkeypatch, demo_ws):
    def captions(**changes) -> str:
        at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
        monkeypatch.setenv("TL_WORKSPACE", str(demo_ws.root))
        at.query_params["project"] = "demo"
        at.session_state["spec_draft"] = tle.RunSpec(**{
            **TINY_SPEC, "weights": "imagenet", "strategy": "two-phase", "unfreeze": 2,
            "unfreeze_unit": "blocks", **changes}).to_dict()
        at.run()
        at.switch_page("views/training.py").run()
        assert not at.exception, at.exception
        return texts(at.caption)

    assert ("Fine-tuning: the whole backbone runs on every image every epoch, not on cached "
            "activations: augmentation changes each image every epoch."
            ) in captions(augment=("flip",))
    plain = captions()
    assert "not on cached activations" not in plain
    assert "its activations are cached" in plain


def test_start_training_queues_a_run_and_an_identical_spec_shows_it(monkeypatch, demo_ws):
    ws = demo_ws
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    monkeypatch.setenv("TL_WORKSPACE", str(ws.root))
    at.query_params["project"] = "demo"
    at.session_state["spec_draft"] = tle.RunSpec(**TINY_SPEC).to_dict()
    at.run()
    at.text_input(key="user_name").input("tester").run()
    at.switch_page("views/training.py").run()
    assert "No run in this project yet" in texts(at.caption)
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    assert not at.exception, at.exception
    (run,) = tle.list_runs(ws, "demo")
    try:
        assert run.status in ("queued", "running", "completed")
        assert run.started_by == "tester"
        assert (run.spec.backbone, run.spec.weights, run.spec.image_size, run.spec.epochs) == (
            "MobileNetV2-0.35", "none", 32, 1)
        assert f"Run {run.id} was queued" in texts(at.success)

        # Another person's browser does not take this run for theirs: at most it lists it
        # in the queue, with who started it.
        other = open_app(monkeypatch, ws.root, project="demo", page="views/training.py",
                         user="someone else")
        assert next(s for s in other.selectbox if s.label == "Run").value is None
        assert not other.success
        if tle.get_run(ws, run.id).is_active:
            assert "started by tester" in texts(other.markdown)
        # The same person in a new tab (their name in the URL) sees their run.
        mine = open_app(monkeypatch, ws.root, project="demo", page="views/training.py",
                        user="tester")
        assert any(s.label == "Run" and s.value == run.id for s in mine.selectbox)
    finally:
        done = tle.wait_for_run(ws, run.id, timeout_s=180)  # no worker outlives the test
    assert done.status == "completed", done.error

    at.run()
    assert "Completed" in texts(at.success)
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    assert not at.exception
    assert "An identical run already exists" in texts(at.info)
    assert [r.id for r in tle.list_runs(ws, "demo")] == [run.id]


def test_sidebar_picker_switches_project(monkeypatch, tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    ws.ensure_project("alpha")
    ws.ensure_project("beta")
    at = open_app(monkeypatch, ws.root, project="alpha", page="views/home.py")
    assert "Project · alpha" in texts(at.subheader)
    picker = next(s for s in at.sidebar.selectbox if s.label == "Project")
    picker.select("beta").run()
    assert not at.exception
    assert at.query_params["project"] == "beta"
    assert "Project · beta" in texts(at.subheader)


def test_the_project_box_shows_no_project_until_one_is_chosen(monkeypatch, tmp_path):
    """Without a project, the box shows its placeholder, not the first project as if it
    were chosen (choosing that one then changed nothing)."""
    ws = tle.Workspace(tmp_path / "ws")
    ws.ensure_project("alpha")
    ws.ensure_project("beta")
    at = open_app(monkeypatch, ws.root)
    picker = next(s for s in at.sidebar.selectbox if s.label == "Project")
    assert picker.value is None and "project" not in at.query_params
    picker.select("alpha").run()
    assert not at.exception
    assert at.query_params["project"] == "alpha"
    assert "Project · alpha" in texts(at.subheader)


def test_switching_projects_back_and_forth_settles_on_the_last_choice(monkeypatch, demo_ws):
    """Training page, a project with a dataset, one without, and back: each choice holds
    (the box once flipped between the two projects for good), and the box follows a
    project a link names."""
    demo_ws.ensure_project("empty")
    at = open_app(monkeypatch, demo_ws.root, project="demo", page="views/training.py")

    def picker():
        return next(s for s in at.sidebar.selectbox if s.label == "Project")

    for project in ("empty", "demo", "empty", "demo"):
        picker().select(project).run()
        assert not at.exception
        for _ in range(2):  # and it stays so, run after run
            assert at.query_params["project"] == project and picker().value == project
            at.run()
    assert "Add a dataset first" not in texts(at.info)
    at.query_params["project"] = "empty"  # a link to the other project
    at.run()
    assert picker().value == "empty" and "Add a dataset first" in texts(at.info)


def test_home_offers_the_projects_there_are_before_a_new_one(monkeypatch, tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    ws.ensure_project("alpha")
    ws.ensure_project("beta")
    at = open_app(monkeypatch, ws.root)
    assert texts(at.subheader).splitlines()[:2] == ["Open a project", "Create a project"]
    at.selectbox(key="home_open").select("beta").run()
    assert not at.exception
    assert at.query_params["project"] == "beta"
    assert "Project · beta" in texts(at.subheader)


def test_cancel_and_resume_from_the_training_page(monkeypatch, demo_ws):
    ws = demo_ws
    (dataset,) = tle.list_datasets(ws, "demo")
    # Many epochs, so a cancel always lands before the run could finish on its own.
    spec = tle.RunSpec(**{**TINY_SPEC, "epochs": 50})
    run_id = tle.submit_run(ws, "demo", dataset.id, spec, start_worker=False).run_id
    try:
        at = open_app(monkeypatch, ws.root, project="demo", page="views/training.py",
                      run=run_id)
        assert any(s.label == "Run" and s.value == run_id for s in at.selectbox)
        assert "in queue" in texts(at.info) or "Running" in texts(at.markdown)
        at.button(key=f"cancel_{run_id}").click().run()
        assert not at.exception
        assert tle.wait_for_run(ws, run_id, timeout_s=180).status == "cancelled"

        at.run()
        assert "The run was cancelled" in texts(at.warning)
        at.button(key=f"resume_{run_id}").click().run()
        assert not at.exception
        assert tle.get_run(ws, run_id).status in ("queued", "running", "completed")
    finally:
        done = tle.wait_for_run(ws, run_id, timeout_s=180)
    assert done.status == "completed", done.error


def test_missing_imagenet_weights_stop_the_start_with_a_clear_message(monkeypatch, demo_ws):
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    monkeypatch.setenv("TL_WORKSPACE", str(demo_ws.root))
    at.query_params["project"] = "demo"
    at.session_state["spec_draft"] = tle.RunSpec(backbone="ResNet50", weights="imagenet").to_dict()
    at.run()
    at.switch_page("views/training.py").run()
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    assert not at.exception
    # Shown as text: Markdown characters in the message are escaped.
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in texts(at.error).replace(
        "\\", "")
    assert tle.list_runs(demo_ws, "demo") == []


def test_navigation_declares_every_page_once():
    from dashboard import pages

    paths = [entry.path for entry in pages.PAGES]
    assert len(set(paths)) == len(paths)
    assert set(paths) == {f"views/{f.name}" for f in (PROJECT_ROOT / "views").glob("*.py")}
    assert [entry.path for entry in pages.PAGES if entry.default] == [pages.HOME]
