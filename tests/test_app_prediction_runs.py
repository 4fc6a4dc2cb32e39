"""The Prediction and Runs pages driven through app.py with Streamlit's AppTest, against real
workspaces: what they show, what they predict, and what deleting and exporting do."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, texts, train_tiny_run
from PIL import Image
from streamlit.testing.v1 import AppTest

import tl_engine as tle
from dashboard import run_views
from dashboard.text import md_escape


@pytest.fixture(scope="module")
def demo_root(trained_workspace, shared_dir, tmp_path_factory) -> Path:
    """A copy of the trained workspace (project "demo", one run with random weights that
    has learned nothing) plus a run with ImageNet weights that tells the colours apart."""
    source, dataset, _ = trained_workspace
    root = tmp_path_factory.mktemp("app") / "ws"
    shutil.copytree(source.root, root)
    learned = train_tiny_run(tle.Workspace(root), dataset, weights="imagenet", image_size=64,
                             epochs=8)
    assert learned.status == "completed" and learned.val_accuracy >= 0.8, learned.error
    return root


@pytest.fixture
def ws(demo_root, tmp_path) -> tle.Workspace:
    """A private copy for tests that change the store."""
    shutil.copytree(demo_root, tmp_path / "ws")
    return tle.Workspace(tmp_path / "ws")


def runs_by_weights(ws: tle.Workspace) -> dict[str, tle.RunRecord]:
    return {r.spec.weights: r for r in tle.list_runs(ws, "demo")}


def open_page(monkeypatch, root: Path, page: str, project: str | None = "demo",
              run: str | None = None) -> AppTest:
    monkeypatch.setenv("TL_WORKSPACE", str(root))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    if project:
        at.query_params["project"] = project
    if run:
        at.query_params["run"] = run
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def jpeg(colour: tuple[int, int, int], size: int = 40, seed: int = 7) -> bytes:
    """A photo-like JPEG: the colour with the same kind of noise as the training images."""
    noise = np.random.default_rng(seed).normal(0, 25, (size, size, 3))
    pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


# --- no project, no runs ---------------------------------------------------------------------


@pytest.mark.parametrize("page", ["views/prediction.py", "views/runs.py"])
def test_pages_ask_for_a_project_first(monkeypatch, tmp_path, page):
    at = open_page(monkeypatch, tmp_path / "empty", page, project=None)
    assert "Choose or create a project" in texts(at.info)


def test_pages_point_to_training_when_there_is_no_run(monkeypatch, tmp_path):
    tle.Workspace(tmp_path / "ws").ensure_project("fresh")
    at = open_page(monkeypatch, tmp_path / "ws", "views/prediction.py", project="fresh")
    assert "No completed run" in texts(at.info)
    assert not at.file_uploader
    at.switch_page("views/runs.py").run()
    assert not at.exception
    assert "No runs in this project yet" in texts(at.info)
    assert not at.dataframe


# --- runs --------------------------------------------------------------------------------------


def test_runs_table_comparison_and_evaluation(monkeypatch, demo_root):
    runs = runs_by_weights(tle.Workspace(demo_root))
    random, learned = runs["none"], runs["imagenet"]
    at = open_page(monkeypatch, demo_root, "views/runs.py", run=random.id)

    table = at.dataframe[0].value
    assert set(table["run"]) == {random.id, learned.id}
    assert list(table.columns) == ["run", "status", "model", "strategy", "epochs", "val acc",
                                   "last val acc", "top-k acc", "time", "started by",
                                   "created"]
    row = table.set_index("run").loc[learned.id]
    assert row["status"] == "completed" and row["epochs"].startswith("8 · ")
    assert row["model"] == "MobileNetV2-0.35 · ImageNet"
    assert row["val acc"] == pytest.approx(learned.val_accuracy)

    # Both completed runs are compared by default: only the settings that differ are listed.
    compared = at.table[0].value
    assert list(compared.columns) == [learned.id, random.id]  # newest first
    assert {"Starting weights", "Input size (px)", "Epochs"} <= set(compared.index)
    assert "Backbone" not in compared.index and "Strategy" not in compared.index
    assert compared.loc["Starting weights"].tolist() == ["imagenet", "none"]
    curves = plotly_specs(at)[0]
    assert {t["name"] for t in curves["data"]} >= {f"{learned.id} val", f"{random.id} train"}

    # The run in the URL is the one detailed: metrics, confusion matrix, per-class table.
    assert at.selectbox[0].value == random.id
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Val accuracy"] == f"{random.val_accuracy:.1%}"
    val = tle.evaluation(tle.Workspace(demo_root), random.id)["val"]
    heatmap = next(s for s in plotly_specs(at) if s["data"][0]["type"] == "heatmap")
    assert heatmap["data"][0]["z"] == val["confusion_matrix"]
    assert heatmap["data"][0]["x"] == ["blue", "green", "red"]
    per_class = next(d.value for d in at.dataframe if "precision" in d.value.columns)
    assert list(per_class.index) == ["blue", "green", "red"]
    assert per_class["support"].sum() == val["n_images"]
    # Its mistakes are shown with their stored images.
    assert f"Misclassified ({val['n_misclassified']})" in [t.label for t in at.tabs]
    assert val["n_misclassified"] > 0
    assert len(at.image) == min(12, val["n_misclassified"])
    mistake = val["misclassified"][0]
    assert f"**{mistake['true']}** → :red[{mistake['predicted']}]" in texts(at.markdown)


def test_choosing_another_run_updates_the_url_and_details(monkeypatch, demo_root):
    runs = runs_by_weights(tle.Workspace(demo_root))
    at = open_page(monkeypatch, demo_root, "views/runs.py", run=runs["none"].id)
    at.selectbox[0].select(runs["imagenet"].id).run()
    assert not at.exception
    assert at.query_params["run"] == runs["imagenet"].id
    assert {m.label: m.value for m in at.metric}["Epochs"] == "8"
    assert "Every validation image is classified correctly." in texts(at.success)


def test_delete_a_run_after_confirming(monkeypatch, ws):
    victim = runs_by_weights(ws)["none"]
    at = open_page(monkeypatch, ws.root, "views/runs.py", run=victim.id)
    assert at.button(key="delete_run").disabled
    at.checkbox(key=f"confirm_delete_{victim.id}").check().run()
    at.button(key="delete_run").click().run()
    assert not at.exception
    assert f"Deleted run {victim.id}." in texts(at.success)
    with pytest.raises(tle.NotFound):
        tle.get_run(ws, victim.id)
    assert not ws.run_dir(victim.id).exists()
    assert victim.id not in set(at.dataframe[0].value["run"])
    assert len(tle.list_runs(ws, "demo")) == 1


def test_an_active_run_is_listed_and_cannot_be_deleted(monkeypatch, ws):
    dataset = tle.list_datasets(ws, "demo")[0]
    spec = tle.RunSpec(backbone="MobileNetV2-0.35", weights="none", image_size=32, epochs=1)
    queued = tle.submit_run(ws, "demo", dataset.id, spec, start_worker=False).run_id
    at = open_page(monkeypatch, ws.root, "views/runs.py", run=queued)
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[queued, "status"] == "queued"
    assert "1 run queued or training" in texts(at.markdown)
    assert "waiting in the queue" in texts(at.info)
    assert "training" in {link.proto.page for link in at.get("page_link")}
    at.checkbox(key=f"confirm_delete_{queued}").check().run()
    at.button(key="delete_run").click().run()
    assert "cancel it before deleting it" in texts(at.error)
    assert tle.get_run(ws, queued).status == "queued"
    # Stopped, it can be resumed: the details say where.
    tle.cancel_run(ws, queued)
    at.run()
    assert "Resume it on Training" in {link.proto.label for link in at.get("page_link")}


def test_exports_are_prepared_on_request(monkeypatch, ws):
    learned = runs_by_weights(ws)["imagenet"]
    at = open_page(monkeypatch, ws.root, "views/runs.py", run=learned.id)
    labels = {b.key: b.label for b in at.get("download_button")}
    assert set(labels) == {"dl_labels", "dl_card"}  # small files at once; models on request
    assert at.button(key="prep_keras").label == "Prepare"
    at.button(key="prep_keras").click().run()
    assert not at.exception
    assert "dl_keras" in {b.key for b in at.get("download_button")}
    ((shown_run, _), prepared), = at.session_state["exports"].items()  # the run on screen
    assert shown_run == learned.id
    name, data = prepared["keras"]
    assert name == f"{learned.id}-model.keras"
    assert data == tle.export_bytes(ws, learned.id, "keras")[1]
    # Two formats asked for before the page could answer the first (a second click
    # restarts the page): both are prepared, none is dropped.
    at.button(key="prep_savedmodel").click()
    at.button(key="prep_tflite").click().run()  # converted from the SavedModel just made
    assert not at.exception
    assert {"dl_savedmodel", "dl_tflite"} <= {b.key for b in at.get("download_button")}
    assert not at.session_state["exports_wanted"]


def test_comparison_lists_only_differing_settings(demo_root):
    ws = tle.Workspace(demo_root)
    runs = list(runs_by_weights(ws).values())
    table = run_views.comparison_table(runs, {})
    assert "Dropout" not in table.index and "Starting weights" in table.index
    alone = run_views.comparison_table(runs[:1], {})
    assert "Starting weights" not in alone.index and "Val accuracy" in alone.index
    assert "Test accuracy" not in alone.index  # no run has a test split


# --- prediction --------------------------------------------------------------------------------


def test_prediction_of_uploads_with_a_bad_file(monkeypatch, demo_root):
    learned = runs_by_weights(tle.Workspace(demo_root))["imagenet"]
    at = open_page(monkeypatch, demo_root, "views/prediction.py")
    assert at.selectbox[0].value == learned.id  # the best run by default…
    assert "run" not in at.query_params  # …which is not put in the URL until chosen
    assert "Upload images" in texts(at.info)

    at.file_uploader[0].set_value([
        ("red.jpg", jpeg((210, 40, 40)), "image/jpeg"),
        ("x.jpg", b"this is text, not a picture", "image/jpeg"),
        ("green.jpg", jpeg((40, 190, 60)), "image/jpeg"),
    ]).run()
    assert not at.exception, at.exception
    # A card each, with its label or, for an image unlike the training ones or one the
    # model is not sure of (this small run may be, on the reddish one), saying so.
    predicted = [m.value for m in at.metric if m.label == "Prediction"]
    unfamiliar = [w for w in at.warning if run_views.UNFAMILIAR_TEXT in w.value]
    not_sure = [i for i in at.info if "Not sure" in i.value]
    assert len(predicted) + len(unfamiliar) + len(not_sure) == 2
    assert set(predicted) <= {"red", "green"}
    assert {m.label: m.value for m in at.metric}["Unreadable"] == "1"
    (error,) = at.error
    assert md_escape("x.jpg") in error.value
    table = at.dataframe[0].value
    assert table["path"].tolist() == ["red.jpg", "x.jpg", "green.jpg"]
    assert table["label"].tolist() == ["red", "", "green"]
    # The table's top-k is the run's fixed k (2 of 3 classes), whatever the slider says.
    assert table["top-k"][0].startswith("red ") and table["top-k"][0].count("·") == 1
    assert table["confidence"][0] > 0.5
    assert [b.label for b in at.get("download_button")] == ["Download CSV"]
    assert len(at.get("plotly_chart")) == len(predicted)  # no bars without a label

    at.slider[0].set_value(1).run()
    assert at.dataframe[0].value.equals(table)


def test_prediction_leaves_a_run_that_is_not_completed_in_the_url(monkeypatch, ws):
    dataset = tle.list_datasets(ws, "demo")[0]
    spec = tle.RunSpec(backbone="MobileNetV2-0.35", weights="none", image_size=32, epochs=1)
    queued = tle.submit_run(ws, "demo", dataset.id, spec, start_worker=False).run_id
    at = open_page(monkeypatch, ws.root, "views/prediction.py", run=queued)
    assert at.selectbox[0].value == runs_by_weights(ws)["imagenet"].id
    assert queued not in at.selectbox[0].options
    assert at.query_params["run"] == queued  # the Training page still follows it


def test_prediction_uses_the_run_in_the_url(monkeypatch, demo_root):
    runs = runs_by_weights(tle.Workspace(demo_root))
    random = runs["none"]
    at = open_page(monkeypatch, demo_root, "views/prediction.py", run=random.id)
    assert at.selectbox[0].value == random.id
    assert at.slider[0].value == 3 and at.slider[0].max == 3
    # This run learned only the class prior: its calibrated confidences are about 1/3, under
    # the default "not sure" threshold; with the threshold off the card gives its label.
    at.slider(key="not_sure_below").set_value(0).run()
    at.file_uploader[0].set_value(("red.jpg", jpeg((255, 0, 0)), "image/jpeg")).run()
    assert not at.exception
    (label,) = [m.value for m in at.metric if m.label == "Prediction"]
    expected = tle.predict_images(tle.Workspace(demo_root), random.id,
                                  [("red.jpg", jpeg((255, 0, 0)))])[0].label
    assert label == expected
    at.selectbox[0].select(runs["imagenet"].id).run()
    assert at.query_params["run"] == runs["imagenet"].id
    # Flat pure red is unlike the noisy training photos: the card says so, and names the
    # closest class only in small print.
    assert not [m for m in at.metric if m.label == "Prediction"]
    (warning,) = [w for w in at.warning if run_views.UNFAMILIAR_TEXT in w.value]
    assert "familiarity" in warning.value
    assert any("Closest class: red" in c.value for c in at.caption)


def _pager_app() -> None:
    import streamlit as st

    from dashboard import run_views

    st.write(list(run_views.paged(list(range(30)), key="pager", per_page=12)))


def test_long_lists_are_paged():
    at = AppTest.from_function(_pager_app, default_timeout=30).run()
    assert at.get("pagination")[0].value == 1
    assert "1–12 of 30" in texts(at.caption)
    assert json.loads(at.json[0].value) == list(range(12))
    at.get("pagination")[0].set_value(3).run()
    assert not at.exception
    assert "25–30 of 30" in texts(at.caption)
    assert json.loads(at.json[0].value) == list(range(24, 30))
