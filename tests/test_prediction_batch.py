"""Prediction of batches on the Prediction page and in the engine: the same photo twice,
.zip archives and folders (relative paths kept, unsafe or non-image members refused one by
one), the analysis table (a probability column per class, a fixed top-k) and file names
that must show as typed."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_ROOT
from PIL import Image
from streamlit.testing.v1 import AppTest

import tl_engine as tle
from dashboard import run_views
from dashboard.text import md_escape

CLASSES = ["blue", "green", "red"]
PROBABILITY_COLUMNS = [f"p({label})" for label in CLASSES]


def jpeg(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png(colour: tuple[int, int, int], size: int = 36) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


RED, GREEN = jpeg((210, 40, 40)), jpeg((40, 190, 60))


def open_prediction_page(monkeypatch, trained_workspace) -> AppTest:
    ws, _, _ = trained_workspace
    monkeypatch.setenv("TL_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    at.query_params["project"] = "demo"
    at.run()
    at.switch_page("views/prediction.py").run()
    assert not at.exception, at.exception
    # This run learned only the class prior (about 1/3 each): at the default threshold every
    # card would say "not sure" (tests/test_calibration.py); these tests are about batches.
    at.slider(key="not_sure_below").set_value(0).run()
    return at


def upload(at: AppTest, files: list[tuple[str, bytes, str]]) -> AppTest:
    at.file_uploader(key="predict_uploads").set_value(files).run()
    assert not at.exception, at.exception
    return at


def table_of(at: AppTest) -> pd.DataFrame:
    (table,) = [d.value for d in at.dataframe if "path" in d.value.columns]
    return table


def card_count(at: AppTest) -> int:
    """Cards with a label, and cards of images like none of the training images."""
    return (sum(1 for m in at.metric if m.label == "Prediction")
            + sum(1 for w in at.warning if run_views.UNFAMILIAR_TEXT in w.value))


def shown(elements) -> list[str]:
    return [str(e.value) for e in elements]


# --- the same photo twice ---------------------------------------------------------------------


@pytest.mark.parametrize("names", [("red.jpg", "red.jpg"), ("red.jpg", "copy of red.jpg")])
@pytest.mark.bad_input
def test_the_same_photo_twice_gets_two_cards(monkeypatch, trained_workspace, names):
    at = open_prediction_page(monkeypatch, trained_workspace)
    upload(at, [(name, RED, "image/jpeg") for name in names])
    assert card_count(at) == 2
    assert len(at.get("plotly_chart")) == 2
    assert len(at.image) == 2
    assert table_of(at)["path"].tolist() == list(names)
    # Moving the slider re-renders both cards with fewer bars, still without a clash.
    at.slider[0].set_value(1).run()
    assert not at.exception, at.exception
    assert card_count(at) == 2 and len(at.get("plotly_chart")) == 2


# --- the analysis table -----------------------------------------------------------------------


def test_the_table_has_a_probability_per_class_and_a_fixed_top_k(monkeypatch,
                                                                 trained_workspace):
    at = open_prediction_page(monkeypatch, trained_workspace)
    upload(at, [("red.jpg", RED, "image/jpeg"), ("x.jpg", b"not a picture", "image/jpeg"),
                ("green.png", png((40, 190, 60)), "image/png")])
    table = table_of(at)
    assert list(table.columns) == ["path", "label", "confidence", "top-k",
                                   *PROBABILITY_COLUMNS, "familiarity", "unfamiliar", "not_sure",
                                   "error"]
    assert table["path"].tolist() == ["red.jpg", "x.jpg", "green.png"]
    good = table[table["error"] == ""]
    assert len(good) == 2
    probabilities = good[PROBABILITY_COLUMNS]
    assert all(pd.api.types.is_float_dtype(probabilities[c]) for c in PROBABILITY_COLUMNS)
    assert ((probabilities >= 0) & (probabilities <= 1)).all().all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    # The label is the most likely class, the confidence its probability.
    for _, row in good.iterrows():
        best = max(CLASSES, key=lambda label: row[f"p({label})"])
        assert row["label"] == best
        assert row["confidence"] == pytest.approx(row[f"p({best})"])
    assert "x.jpg" in table.loc[1, "error"] and np.isnan(table.loc[1, "p(red)"])
    # How much each image looks like the training images; nothing for an unreadable one.
    assert ((good["familiarity"] >= 0) & (good["familiarity"] <= 1)).all()
    assert np.isnan(table.loc[1, "familiarity"]) and not table.loc[1, "unfamiliar"]

    # The CSV written from that table reads back as numbers, one row per image.
    csv = pd.read_csv(io.BytesIO(run_views.predictions_table(
        tle.predict_images(trained_workspace[0], trained_workspace[2].id,
                           [("red.jpg", RED), ("x.jpg", b"not a picture")]),
        CLASSES).to_csv(index=False).encode()))
    assert csv.columns.tolist() == list(table.columns)
    assert csv.loc[0, PROBABILITY_COLUMNS].astype(float).sum() == pytest.approx(1.0, abs=1e-4)
    assert csv.loc[0, PROBABILITY_COLUMNS].tolist() == pytest.approx(
        table.loc[0, PROBABILITY_COLUMNS].tolist())


def test_the_top_k_column_does_not_follow_the_slider(monkeypatch, trained_workspace):
    at = open_prediction_page(monkeypatch, trained_workspace)
    upload(at, [("red.jpg", RED, "image/jpeg"), ("green.jpg", GREEN, "image/jpeg")])
    k = tle.top_k_for(len(CLASSES))
    before = table_of(at)["top-k"].tolist()
    assert all(text.count("·") == k - 1 for text in before)
    bars_before = [len(spec["data"][0]["y"]) for spec in _plotly_specs(at)]
    assert bars_before == [3, 3]

    at.slider[0].set_value(1).run()
    assert not at.exception, at.exception
    assert table_of(at)["top-k"].tolist() == before
    assert [len(spec["data"][0]["y"]) for spec in _plotly_specs(at)] == [1, 1]


def _plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def test_prediction_to_dict_adds_every_class_probability(trained_workspace):
    ws, _, run = trained_workspace
    good, bad = tle.predict_images(ws, run.id, [("red.jpg", RED), ("bad.jpg", b"nope")],
                                   top_k=1)
    record = good.to_dict()
    assert {"image", "label", "confidence", "top", "error"} <= set(record)
    assert list(record["probabilities"]) == CLASSES
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert record["probabilities"][record["label"]] == pytest.approx(record["confidence"])
    assert len(record["top"]) == 1
    assert bad.to_dict()["probabilities"] == {} and "bad.jpg" in bad.to_dict()["error"]


# --- archives and folders ---------------------------------------------------------------------


def test_a_zip_is_predicted_with_its_relative_paths(monkeypatch, trained_workspace):
    archive = zip_of({
        "shots/ants/a.jpg": RED,
        "shots/bees/deep/b.png": png((40, 190, 60)),
        "__MACOSX/shots/ants/._a.jpg": b"resource fork",
        "shots/.DS_Store": b"junk",
    })
    at = open_prediction_page(monkeypatch, trained_workspace)
    upload(at, [("loose.jpg", GREEN, "image/jpeg"),
                ("batch.zip", archive, "application/zip")])
    table = table_of(at)
    assert table["path"].tolist() == ["loose.jpg", "shots/ants/a.jpg", "shots/bees/deep/b.png"]
    assert (table["error"] == "").all()
    assert card_count(at) == 3
    assert "shots/bees/deep/b.png" in shown(at.text)


@pytest.mark.bad_input
def test_unsafe_and_non_image_members_are_refused_one_by_one(monkeypatch, trained_workspace):
    archive = zip_of({"../evil.jpg": RED, "notes/readme.txt": b"hello",
                      "photos/red.jpg": RED, "photos/fake.jpg": b"not an image"})
    at = open_prediction_page(monkeypatch, trained_workspace)
    upload(at, [("mixed.zip", archive, "application/zip")])
    table = table_of(at).set_index("path")
    assert list(table.index) == ["../evil.jpg", "notes/readme.txt", "photos/red.jpg",
                                 "photos/fake.jpg"]
    assert "unsafe path" in table.loc["../evil.jpg", "error"]
    assert "not an image file (.txt)" in table.loc["notes/readme.txt", "error"]
    assert table.loc["photos/fake.jpg", "error"].startswith("photos/fake.jpg: ")
    assert table.loc["photos/red.jpg", "error"] == ""
    assert {m.label: m.value for m in at.metric}["Unreadable"] == "3"
    assert card_count(at) == 1 and len(at.error) == 3


@pytest.mark.bad_input
def test_images_in_zip_refuses_members_before_reading_them(monkeypatch):
    bomb = b"\0" * (11 * 1024**2)  # deflates ~1000x: over the bomb ratio, never unpacked
    archive = zip_of({"/abs.jpg": RED, "big.jpg": bomb, "ok/red.jpg": RED, "ok/": b""})
    batch = tle.images_in_zip(archive, "set.zip")
    assert batch[0] == tle.Refused("/abs.jpg", batch[0].reason)
    assert "unsafe path" in batch[0].reason
    assert isinstance(batch[1], tle.Refused) and "compression bomb" in batch[1].reason
    assert batch[2] == ("ok/red.jpg", RED)
    assert len(batch) == 3

    # The archive's declared size over the limit: one refusal naming the archive, no crash.
    monkeypatch.setenv("TL_MAX_ARCHIVE_BYTES", "1000")
    with pytest.raises(tle.DatasetError, match="set.zip would unpack to"):
        tle.images_in_zip(archive, "set.zip")
    (refused,) = tle.prediction_batch([("set.zip", archive)])
    assert refused.name == "set.zip" and "TL_MAX_ARCHIVE_BYTES" in refused.reason
    (damaged,) = tle.prediction_batch([("broken.zip", b"PK not really")])
    assert "not a readable .zip" in damaged.reason


def test_a_folder_upload_keeps_relative_paths(monkeypatch, trained_workspace):
    at = open_prediction_page(monkeypatch, trained_workspace)
    uploader = at.file_uploader(key="predict_folder")
    assert uploader.accept_directory
    uploader.set_value([("trip/day1/red.jpg", RED, "image/jpeg"),
                        ("trip/day2/late/green.png", png((40, 190, 60)), "image/png"),
                        ("trip/../escape.jpg", RED, "image/jpeg")]).run()
    assert not at.exception, at.exception
    table = table_of(at)
    assert table["path"].tolist() == ["trip/day1/red.jpg", "trip/day2/late/green.png",
                                      "trip/../escape.jpg"]
    assert table["error"].tolist()[:2] == ["", ""]
    assert "unsafe path" in table["error"][2]
    assert card_count(at) == 2


# --- names shown as typed ---------------------------------------------------------------------


@pytest.mark.bad_input
def test_hostile_file_names_are_shown_literally(monkeypatch, trained_workspace):
    names = ["**bold**.jpg", "<b>x</b>.png", ":red[alarm] $x$.jpg"]
    at = open_prediction_page(monkeypatch, trained_workspace)
    upload(at, [(names[0], RED, "image/jpeg"), (names[1], b"broken", "image/png"),
                (names[2], GREEN, "image/jpeg")])
    assert table_of(at)["path"].tolist() == names
    texts = shown(at.text)
    assert all(name in texts for name in names)
    # No element that renders Markdown carries a name unescaped, image captions included.
    markdown = shown(at.markdown) + shown(at.caption) + shown(at.error)
    assert not any(name in value for name in names for value in markdown)
    assert all(not caption for image in at.image for caption in image.captions)
    (error,) = at.error
    assert error.value.startswith(md_escape(names[1]))


def test_md_escape_escapes_every_markdown_mark():
    escaped = md_escape("**a** <b>_c_</b> :red[d] $e$ `f` [g](h)")
    assert escaped == (r"\*\*a\*\* \<b\>\_c\_\</b\> \:red\[d\] \$e\$ \`f\` \[g\]\(h)")


def test_prediction_batch_keeps_order_and_skips_junk():
    batch = tle.prediction_batch([
        ("a.jpg", RED), ("set.zip", zip_of({"x/b.jpg": GREEN, "x/c.gif": RED})),
        ("dir/.hidden.jpg", RED), ("dir/readme", b"text"),
    ])
    assert [item[0] if isinstance(item, tuple) else item.name for item in batch] == [
        "a.jpg", "x/b.jpg", "x/c.gif", "dir/readme"]
    assert isinstance(batch[3], tle.Refused) and "no extension" in batch[3].reason


def test_a_batch_larger_than_one_chunk_keeps_every_image_in_order(trained_workspace):
    ws, _, run = trained_workspace
    images = [(f"{i:03d}.jpg", RED if i % 2 else GREEN) for i in range(300)]
    images[256] = ("256.jpg", b"broken")
    predictions = tle.predict_images(ws, run.id, images, top_k=1)
    assert [p.name for p in predictions] == [name for name, _ in images]
    assert [i for i, p in enumerate(predictions) if p.error] == [256]
    assert list(predictions[257].probabilities.values()) == pytest.approx(
        list(predictions[1].probabilities.values()), abs=1e-5)
    assert predictions[300 - 1].label == predictions[1].label
