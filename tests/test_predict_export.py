"""Prediction and export of a completed run: top-k from the engine, the model cache, bad
files in a batch, and exports that predict what the engine predicts: the calibrated
probabilities, with the run's temperature folded into every export."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, TINY_CLASSES, train_tiny_run, write_color_classes
from PIL import Image

import tl_engine as tle
from tl_engine.jobs import submit_run
from tl_engine.spec import RunSpec

CLASSES = sorted(TINY_CLASSES)


def _jpeg(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def learned(shared_dir, tmp_path_factory):
    """A run that has learned the colours. The 3-epoch `trained_workspace` run does not:
    MobileNetV2 with random weights and BatchNormalization in inference mode shrinks every
    input to ~1e-11 features, so its head can only learn the class prior (see the report).
    ImageNet weights (cached in the shared folder) separate the colours in a few epochs."""
    root = tmp_path_factory.mktemp("learned")
    ws = tle.Workspace(root / "ws")
    data = write_color_classes(root / "data", TINY_CLASSES, per_class=10)
    dataset = tle.ingest_folder(ws, data, project="demo")
    run = train_tiny_run(ws, dataset, weights="imagenet", image_size=64, epochs=8)
    assert run.status == "completed", run.error
    assert run.val_accuracy >= 0.8
    return ws, dataset, run


STORED_T = 2.5


@pytest.fixture(scope="module")
def calibrated(learned, tmp_path_factory):
    """A copy of the learned run with temperature 2.5 stored with its model. The run's own
    fit is T = 1: none of its 6 validation images is wrong, so nothing says how far to trust
    it (see tl_engine.calibration). A T far from 1 shows the folding in every export."""
    source, dataset, run = learned
    root = tmp_path_factory.mktemp("calibrated") / "ws"
    shutil.copytree(source.root, root)
    ws = tle.Workspace(root)
    path = ws.run_dir(run.id) / "evaluation.json"
    evaluation = json.loads(path.read_text())
    assert evaluation["calibration"]["temperature"] == 1.0
    evaluation["calibration"]["temperature"] = STORED_T
    path.write_text(json.dumps(evaluation))
    return ws, dataset, run


@pytest.fixture(scope="module")
def red_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("red") / "pure_red.jpg"
    path.write_bytes(_jpeg((255, 0, 0)))
    return path


# --- prediction ---------------------------------------------------------------------------


def test_predictions_are_top_k_probabilities_with_label_the_argmax(trained_workspace):
    ws, dataset, run = trained_workspace
    paths = [ws.image_path(r.hash) for r in dataset.records[:6]]
    predictions = tle.predict_images(ws, run.id, paths, top_k=3)
    predictor = tle.load_predictor(ws, run.id)
    probs = predictor.probabilities(np.stack([predictor.pixels(p)[1] for p in paths]))
    assert [p.name for p in predictions] == [p.name for p in paths]
    for prediction, row in zip(predictions, probs, strict=True):
        assert prediction.error is None
        assert [label for label, _ in prediction.top] == [CLASSES[i] for i in np.argsort(-row)]
        values = [p for _, p in prediction.top]
        assert values == sorted(values, reverse=True)
        assert sum(values) <= 1 + 1e-5
        assert prediction.label == CLASSES[int(row.argmax())]
        assert prediction.confidence == pytest.approx(float(row.max()))
    two = tle.predict_images(ws, run.id, paths[:1], top_k=2)[0]
    assert len(two.top) == 2 and sum(p for _, p in two.top) < 1
    # top_k is clamped to the number of classes, and to at least 1.
    assert len(tle.predict_images(ws, run.id, paths[:1], top_k=50)[0].top) == 3
    assert len(tle.predict_images(ws, run.id, paths[:1], top_k=0)[0].top) == 1


def test_a_new_red_image_is_predicted_red(learned, red_file):
    ws, _, run = learned
    by_path, by_bytes = tle.predict_images(
        ws, run.id, [red_file, ("upload.jpg", red_file.read_bytes())], top_k=3
    )
    assert by_path.name == "pure_red.jpg" and by_bytes.name == "upload.jpg"
    for prediction in (by_path, by_bytes):
        assert prediction.label == "red", prediction.top
        assert prediction.confidence > 0.5
    assert by_path.top == by_bytes.top


def test_an_unreadable_file_is_named_and_the_rest_of_the_batch_is_predicted(
    learned, red_file, tmp_path
):
    ws, _, run = learned
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"this is text, not a picture\n")
    results = tle.predict_images(
        ws, run.id, [red_file, bad, ("notes.png", b"hello"), ("again.jpg", _jpeg((255, 0, 0)))]
    )
    assert [r.name for r in results][::2] == ["pure_red.jpg", "notes.png"]
    assert results[1].name.endswith("x.jpg") and results[3].name == "again.jpg"
    assert "x.jpg" in results[1].error and results[1].top == [] and results[1].label is None
    assert "notes.png" in results[2].error and results[2].confidence is None
    assert results[0].label == "red" and results[0].error is None
    assert results[3].label == "red" and results[3].error is None
    assert results[1].to_dict()["error"] == results[1].error


def test_a_batch_of_only_unreadable_files_gives_only_errors(trained_workspace):
    ws, _, run = trained_workspace
    (result,) = tle.predict_images(ws, run.id, [("bad.jpg", b"nope")])
    assert result.top == [] and "bad.jpg" in result.error


def test_the_model_is_loaded_once_per_process(trained_workspace):
    ws, _, run = trained_workspace
    first = tle.load_predictor(ws, run.id)
    assert tle.load_predictor(tle.Workspace(ws.root), run.id) is first


def test_a_run_without_a_model_cannot_predict_or_export(trained_workspace, tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    dataset = tle.ingest_folder(ws, write_color_classes(tmp_path / "data", TINY_CLASSES, 4),
                                project="demo")
    spec = RunSpec(backbone="MobileNetV2-0.35", weights="none", image_size=32, epochs=1)
    queued = submit_run(ws, "demo", dataset.id, spec, start_worker=False)
    with pytest.raises(tle.RunNotReady, match=queued.run_id):
        tle.predict_images(ws, queued.run_id, [("a.jpg", _jpeg((1, 2, 3)))])
    with pytest.raises(tle.RunNotReady, match="completed"):
        tle.export_run(ws, queued.run_id, "tflite")
    with pytest.raises(tle.NotFound, match="nope"):
        tle.load_predictor(ws, "nope")
    source, _, run = trained_workspace
    with pytest.raises(tle.SpecError, match="onnx"):  # checked before anything is written
        tle.export_run(source, run.id, "onnx")


# --- exports ------------------------------------------------------------------------------


def test_prediction_applies_the_runs_temperature(learned, calibrated, red_file):
    """p ** (1 / T), renormalised: the model with T folded into its last layer gives it."""
    (raw,), (scaled,) = (tle.predict_images(ws, run.id, [red_file])
                         for ws, _, run in (learned, calibrated))
    assert tle.load_predictor(calibrated[0], calibrated[2].id).temperature == STORED_T
    assert tle.load_predictor(learned[0], learned[2].id).temperature == 1.0
    labels = list(raw.probabilities)
    expected = tle.apply_temperature([[raw.probabilities[c] for c in labels]], STORED_T)[0]
    np.testing.assert_allclose([scaled.probabilities[c] for c in labels], expected, atol=1e-5)
    assert scaled.label == raw.label and scaled.confidence < raw.confidence


def test_an_export_of_a_run_with_nothing_to_fold_is_its_model_file(learned):
    ws, _, run = learned
    path = tle.export_run(ws, run.id, "keras")
    assert path.read_bytes() == (ws.run_dir(run.id) / "model.keras").read_bytes()


@pytest.fixture(scope="module")
def exported(calibrated):
    """Every export of the calibrated run (written under its run folder, in our own
    workspace)."""
    ws, _, run = calibrated
    return {fmt: tle.export_run(ws, run.id, fmt) for fmt in tle.EXPORT_FORMATS}


@pytest.fixture(scope="module")
def pixels_and_probs(calibrated, red_file):
    """The uint8 model inputs of a few images, as float32, and the engine's (calibrated)
    probabilities."""
    ws, dataset, run = calibrated
    predictor = tle.load_predictor(ws, run.id)
    sources = [ws.image_path(r.hash) for r in dataset.records[::4]] + [red_file]
    x = np.stack([predictor.pixels(s)[1] for s in sources]).astype(np.float32)
    return x, predictor.probabilities(x)


# Tolerances against the engine's own probabilities (float32 softmax outputs):
#  .keras             1e-6  the same file, same Keras runtime: only run-to-run float noise
#  SavedModel         1e-5  same graph traced by TensorFlow, possibly fused differently
#  TFLite float32     1e-4  different kernels (XNNPACK), same float32 weights
#  TFLite quantized   argmax identical, max |diff| <= 0.15 and mean |diff| <= 0.03.
#                     Dynamic-range int8 weights perturb every layer; MobileNetV2-0.35 (thin
#                     depthwise layers) is hit hard: this run measures max 0.097, mean 0.013,
#                     so the 0.05 first planned does not hold (float16 would: <= 0.025).
#                     The decision must not change: these images' top-2 margins are >= 0.18.


def test_keras_export_predicts_like_the_engine(exported, pixels_and_probs):
    import keras

    x, expected = pixels_and_probs
    model = keras.saving.load_model(str(exported["keras"]), compile=False)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-6)


def test_savedmodel_export_predicts_like_the_engine(exported, pixels_and_probs):
    import tensorflow as tf

    x, expected = pixels_and_probs
    loaded = tf.saved_model.load(str(exported["savedmodel"]))  # keep it alive while serving
    np.testing.assert_allclose(np.asarray(loaded.serve(tf.constant(x))), expected, atol=1e-5)


def _tflite_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.float32 and list(inp["shape"][1:]) == list(x.shape[1:])
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def test_tflite_export_predicts_like_the_engine(exported, pixels_and_probs):
    x, expected = pixels_and_probs
    np.testing.assert_allclose(_tflite_predict(exported["tflite"], x), expected, atol=1e-4)


def test_quantized_tflite_export_decides_like_the_engine(exported, pixels_and_probs):
    x, expected = pixels_and_probs
    got = _tflite_predict(exported["tflite-quant"], x)
    diff = np.abs(got - expected)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert diff.max() <= 0.15 and diff.mean() <= 0.03
    assert exported["tflite-quant"].stat().st_size < exported["tflite"].stat().st_size


def test_labels_and_model_card(calibrated, exported):
    ws, dataset, run = calibrated
    assert exported["labels"].read_text().splitlines() == CLASSES
    card = json.loads(exported["card"].read_text())
    assert card["run_id"] == run.id and card["labels"] == CLASSES
    assert card["backbone"]["key"] == "MobileNetV2-0.35"
    assert card["backbone"]["keras_application"]
    assert card["weights"] == "imagenet"
    assert card["strategy"]["name"] == "frozen"
    assert card["strategy"]["trainable_params"] < card["strategy"]["frozen_params"]
    assert [(p["name"], p["trains"]) for p in card["strategy"]["phases"]] == [
        ("head", "head only")]
    assert card["data"]["classes"] == CLASSES
    assert card["data"]["images_per_class"] == {c: 10 for c in CLASSES}
    assert card["data"]["content_hash"] == dataset.content_hash
    assert card["data"]["n_train"] + card["data"]["n_val"] == 30
    assert card["metrics"]["val_accuracy"] == pytest.approx(run.val_accuracy)
    assert card["metrics"]["epochs_run"] == 8
    assert card["input"]["shape"] == [64, 64, 3] and card["input"]["dtype"] == "float32"
    assert "0-255" in card["input"]["range"]
    assert card["output"]["shape"] == [3]
    assert card["output"]["temperature"] == STORED_T and "calibrated" in card["output"]["meaning"]


def test_export_bytes_and_copies(calibrated, exported, tmp_path):
    ws, _, run = calibrated
    name, data = tle.export_bytes(ws, run.id, "tflite")
    assert name == f"{run.id}-model.tflite" and data == exported["tflite"].read_bytes()
    name, data = tle.export_bytes(ws, run.id, "savedmodel")
    assert name == f"{run.id}-savedmodel.zip"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert "savedmodel/saved_model.pb" in archive.namelist()
    copied = tle.export_run(ws, run.id, "savedmodel", tmp_path / "out" / "sm")
    assert (copied / "saved_model.pb").is_file()
    # Replaced with overwrite, a SavedModel folder takes nothing else with it.
    assert tle.export_run(ws, run.id, "savedmodel", copied, overwrite=True) == copied
    (copied / "my_notes.txt").write_text("keep me")
    with pytest.raises(tle.SpecError, match=r"other files \(my_notes.txt\): --force would "
                                            r"remove them too"):
        tle.export_run(ws, run.id, "savedmodel", copied, overwrite=True)
    assert (copied / "my_notes.txt").read_text() == "keep me"
    # Keras loads a model only from a .keras file: no export that it cannot load.
    with pytest.raises(tle.SpecError, match=r"must end in \.keras .* say model\.keras"):
        tle.export_run(ws, run.id, "keras", tmp_path / "out" / "model")
    assert not (tmp_path / "out" / "model").exists()
    name, data = tle.export_bytes(ws, run.id, "labels")
    assert name.endswith("labels.txt") and data.decode().split() == CLASSES


# --- the command line ---------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run([sys.executable, "-m", "tl_engine", *args], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_cli_predict_and_export(calibrated, exported, red_file, tmp_path):
    ws, _, run = calibrated
    result = _cli("predict", "--run", run.id, str(red_file), "--json", "--workspace", str(ws.root))
    assert result.returncode == 0, result.stderr
    (prediction,) = json.loads(result.stdout)
    assert prediction["image"] == str(red_file) and prediction["label"] == "red"
    assert [t["label"] for t in prediction["top"]][0] == "red" and prediction["error"] is None
    (engine,) = tle.predict_images(ws, run.id, [red_file])  # calibrated, as the app shows
    assert prediction["confidence"] == pytest.approx(engine.confidence, abs=1e-5)
    # "not sure" below the default 0.6 unless told otherwise.
    assert prediction["not_sure"] is (engine.confidence < tle.DEFAULT_NOT_SURE_BELOW)
    # In words (a training image: flat red is unfamiliar, which the line says first).
    photo = ws.image_path(tle.load_dataset(ws, run.dataset_id).records[0].hash)
    result = _cli("predict", "--run", run.id, str(photo), "--workspace", str(ws.root),
                  "--not-sure-below", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{photo}: not sure (below 1): ")

    out = tmp_path / "phone" / "model.tflite"
    result = _cli("export", "--run", run.id, "--format", "tflite", "--out", str(out),
                  "--workspace", str(ws.root))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert out.read_bytes() == exported["tflite"].read_bytes()


@pytest.mark.parametrize("command", [
    ["predict", "--run", "nope", "IMAGE", "--json"],
    ["export", "--run", "nope", "--format", "tflite", "--out", "OUT"],
])
def test_cli_unknown_run_is_one_line_and_exit_2(trained_workspace, red_file, tmp_path, command):
    ws, _, _ = trained_workspace
    args = [str(red_file) if a == "IMAGE" else str(tmp_path / "x") if a == "OUT" else a
            for a in command]
    result = _cli(*args, "--workspace", str(ws.root))
    assert result.returncode == 2
    message = f"Run 'nope' is not in workspace {ws.root}: list runs with `runs`."
    # With --json the reason is also stdout's one line, for scripts; without, stdout is empty.
    assert result.stdout == (json.dumps({"error": message, "exit_code": 2}) + "\n"
                             if "--json" in command else "")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {message}"]
    assert "Traceback" not in result.stderr
