"""The Prediction page's "Why?" (Grad-CAM of the predicted or a chosen class) and the Runs
page's confusion-matrix drill-down and Grad-CAM of each mistake, through app.py."""

from __future__ import annotations

import io

import numpy as np
from conftest import PROJECT_ROOT
from PIL import Image
from streamlit.testing.v1 import AppTest

import tl_engine as tle
from dashboard import explain_views
from dashboard.text import md_escape


def training_photo(ws: tle.Workspace, label: str) -> bytes:
    """One of the run's own training photos of `label`: familiar, and confidently named."""
    (dataset,) = tle.list_datasets(ws, "demo")
    record = next(r for r in dataset.records if r.label == label)
    return ws.image_path(record.hash).read_bytes()


def open_page(monkeypatch, ws: tle.Workspace, page: str, **query: str) -> AppTest:
    monkeypatch.setenv("TL_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    at.query_params["project"] = "demo"
    for name, value in query.items():
        at.query_params[name] = value
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def jpeg(colour: tuple[int, int, int], size: int = 40) -> bytes:
    noise = np.random.default_rng(3).normal(0, 25, (size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(
        buffer, "JPEG")
    return buffer.getvalue()


def captions(at: AppTest) -> str:
    return "\n".join(str(c.value) for c in at.caption)


def test_why_shows_grad_cam_of_the_predicted_then_a_chosen_class(monkeypatch,
                                                                 trained_workspace):
    ws, _, run = trained_workspace
    at = open_page(monkeypatch, ws, "views/prediction.py", run=run.id)
    at.file_uploader(key="predict_uploads").set_value(
        [("red.jpg", training_photo(ws, "red"), "image/jpeg")]).run()
    at.slider(key="not_sure_below").set_value(0).run()  # a 3-epoch model: always a label
    assert not at.exception, at.exception
    predicted = next(m.value for m in at.metric if m.label == "Prediction")
    images = len(at.image)
    assert "Grad-CAM for" not in captions(at)  # computed only on request

    at.toggle(key="why_0").set_value(True).run()
    assert not at.exception, at.exception
    assert len(at.image) == images + 1
    assert at.selectbox(key="why_class_0").value == predicted
    assert f"Grad-CAM for {predicted} (" in captions(at)

    other = next(c for c in run.result.classes if c != predicted)
    at.selectbox(key="why_class_0").select(other).run()
    assert not at.exception, at.exception
    assert f"Grad-CAM for {other} (" in captions(at)
    assert len(at.image) == images + 1


def test_runs_page_drills_into_a_cell_and_explains_each_mistake(monkeypatch,
                                                                trained_workspace):
    ws, _, run = trained_workspace
    val = tle.evaluation(ws, run.id)["val"]
    assert val["n_misclassified"] > 0
    at = open_page(monkeypatch, ws, "views/runs.py", run=run.id)
    images = len(at.image)
    cell = at.selectbox(key=f"cell_{run.id}")
    assert cell.value is None  # nothing shown until a cell is clicked or chosen
    # Mistakes first, the most frequent first.
    true, predicted, count = tle.confused_pairs(val)[0]
    classes = val["classes"]
    first = f"{classes.index(true)}:{classes.index(predicted)}"
    assert cell.options[0] == f"{true} → predicted {predicted} · {count} " + (
        "images" if count != 1 else "image")

    cell.set_value(first).run()
    assert not at.exception, at.exception
    shown = min(count, explain_views.CELL_IMAGES_PER_PAGE)
    assert len(at.image) == images + shown
    marks = [str(m.value) for m in at.markdown if str(m.value).startswith(":red[")]
    assert len(marks) == shown and all(m.startswith(f":red[{predicted}]") for m in marks)

    at.toggle(key=f"cell_cams_{run.id}").set_value(True).run()
    assert not at.exception, at.exception
    assert len(at.image) == images + shown  # the same cards, now as Grad-CAM overlays

    # A correct cell lists its images too.
    diagonal = next(i for i in range(len(classes)) if val["confusion_matrix"][i][i])
    at.selectbox(key=f"cell_{run.id}").set_value(f"{diagonal}:{diagonal}").run()
    assert not at.exception, at.exception
    marks = [str(m.value) for m in at.markdown if str(m.value).startswith(":green[")]
    assert len(marks) == min(val["confusion_matrix"][diagonal][diagonal],
                             explain_views.CELL_IMAGES_PER_PAGE)

    # Each mistake's Grad-CAM: the class chosen and the class missed, 8 per page.
    at.selectbox(key=f"cell_{run.id}").set_value(None).run()
    before = len(at.image)
    mistakes_shown = min(val["n_misclassified"], 12)
    at.toggle(key=f"cams_{run.id}").set_value(True).run()
    assert not at.exception, at.exception
    cams = min(len(val["misclassified"]), explain_views.CAMS_PER_PAGE)
    assert len(at.image) == before - mistakes_shown + 2 * cams
    mistake = val["misclassified"][0]
    assert md_escape(f"chose: {mistake['predicted']} (") in captions(at)
    assert md_escape(f"missed: {mistake['true']} (") in captions(at)
