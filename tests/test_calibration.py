"""How far a confidence can be trusted: expected calibration error and temperature scaling on
synthetic predictions whose calibration is known, then on a trained run: stored with its
evaluation and summary, shown by `runs --json`, applied by prediction, drawn on the Runs
page, and the Prediction page's "not sure" threshold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import PROJECT_ROOT, open_app
from test_app_prediction_runs import jpeg, plotly_specs, texts

import tl_engine as tle
from tl_engine import calibration, runs


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray]:
    """5-class logits and labels drawn from softmax(logits): softmax(logits) is perfectly
    calibrated for them, by construction."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, (20_000, 5))
    true = softmax(logits)
    labels = (true.cumsum(axis=1) < rng.random((len(true), 1))).sum(axis=1)
    return logits, labels


# --- the measures ------------------------------------------------------------------------------


def test_ece_is_near_zero_for_calibrated_and_large_for_over_confident_predictions(synthetic):
    logits, labels = synthetic
    calibrated = tle.expected_calibration_error(labels, softmax(logits))
    over = tle.expected_calibration_error(labels, softmax(3 * logits))
    under = tle.expected_calibration_error(labels, softmax(logits / 3))
    print(f"\nECE (15 bins, 20 000 draws): calibrated {calibrated:.4f}, over-confident "
          f"(logits x3) {over:.4f}, under-confident (logits / 3) {under:.4f}")
    assert calibrated < 0.015  # sampling noise only
    assert over > 0.15 and under > 0.15


def test_reliability_bins_are_15_equal_widths_holding_every_prediction():
    probs = np.array([[0.95, 0.05], [0.55, 0.45], [0.5, 0.5], [0.3, 0.7], [0.1, 0.9]])
    labels = np.array([0, 1, 0, 1, 1])
    bins = tle.reliability(labels, probs)
    assert len(bins) == calibration.N_BINS == 15
    assert [b["low"] for b in bins] == pytest.approx([i / 15 for i in range(15)])
    assert sum(b["count"] for b in bins) == 5
    # 0.5 lies in (7/15, 8/15], 0.55 in (8/15, 9/15]; confidences are of the top class.
    assert (bins[7]["count"], bins[7]["accuracy"]) == (1, 1.0)
    assert (bins[8]["count"], bins[8]["accuracy"], bins[8]["confidence"]) == (1, 0.0, 0.55)
    assert bins[14]["count"] == 1 and bins[13]["count"] == 1 and bins[10]["count"] == 1
    assert bins[0] == {"low": 0.0, "high": 1 / 15, "count": 0, "confidence": None,
                       "accuracy": None}
    # |1 - 0.5| + |0 - 0.55| + |1 - 0.7| + |1 - 0.9| + |1 - 0.95|, over 5 images
    assert tle.expected_calibration_error(labels, probs) == pytest.approx(1.5 / 5)


@pytest.mark.parametrize("true_t", [3.0, 0.5, 1.7])
def test_the_search_recovers_a_known_temperature(synthetic, true_t):
    logits, labels = synthetic
    # Logits divided by T are calibrated: the NLL minimum lies at T.
    found = tle.fit_temperature(labels, softmax(logits * true_t))
    assert found == pytest.approx(true_t, rel=0.05)
    fixed = tle.apply_temperature(softmax(logits * true_t), found)
    assert tle.expected_calibration_error(labels, fixed) < 0.02


def test_scaling_is_p_to_the_one_over_t_and_none_is_identity():
    probs = np.array([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    scaled = tle.apply_temperature(probs, 2.0)
    expected = np.sqrt(probs) / np.sqrt(probs).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(scaled, expected, atol=1e-12)
    assert (scaled.argmax(axis=1) == probs.argmax(axis=1)).all()
    assert tle.apply_temperature(probs, None) is not None
    np.testing.assert_array_equal(tle.apply_temperature(probs, None), probs)


def test_no_mistake_to_learn_from_leaves_t_at_one():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert tle.fit_temperature([0, 1, 0], probs) == 1.0  # the NLL falls on as T -> 0
    assert tle.fit_temperature([], np.zeros((0, 2))) == 1.0


def test_the_report_says_which_split_it_measured(synthetic):
    logits, labels = synthetic
    over = softmax(2 * logits)
    val, test = (labels[:5000], over[:5000]), (labels[5000:], over[5000:])
    report = tle.calibration_report(val, test)
    assert report["split"] == "test" and report["n_images"] == 15_000
    assert report["temperature"] == pytest.approx(2.0, rel=0.1)
    assert report["ece_calibrated"] < report["ece"] / 4
    assert report["nll_calibrated"] < report["nll"]
    assert [len(report["reliability"][k]) for k in ("before", "after")] == [15, 15]
    no_test = tle.calibration_report(val, (labels[:0], over[:0]))
    assert no_test["split"] == "val" and no_test["n_images"] == 5000


def test_not_sure_is_below_the_threshold_only():
    assert calibration.is_not_sure(0.59, 0.6) and not calibration.is_not_sure(0.6, 0.6)
    assert not calibration.is_not_sure(0.1, None) and not calibration.is_not_sure(0.1, 0)
    assert not calibration.is_not_sure(None, 0.6)  # an unreadable image is not "not sure"


def test_the_summary_keeps_calibration_as_one_group():
    summary = tle.RunSummary(val_accuracy=0.9, temperature=1.8, ece=0.12, ece_calibrated=0.03,
                             ece_split="test")
    stored = summary.to_dict()
    assert list(stored)[-4:] == ["temperature", "ece", "ece_calibrated", "ece_split"]
    assert tle.RunSummary.from_dict(stored) == summary
    assert "temperature" not in tle.RunSummary(val_accuracy=0.9).to_dict()
    old = tle.RunSummary.from_dict({"val_accuracy": 0.9})
    assert (old.temperature, old.ece, old.ece_calibrated) == (None, None, None)


# --- a trained run ------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run([sys.executable, "-m", "tl_engine", *args], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_a_trained_run_stores_its_temperature_and_ece(trained_workspace):
    ws, dataset, run = trained_workspace
    report = runs.evaluation(ws, run.id)["calibration"]
    result = run.result
    # No test split: measured on the validation images T was fitted to.
    assert report["split"] == result.ece_split == "val"
    assert report["n_images"] == result.n_val
    assert (result.temperature, result.ece, result.ece_calibrated) == (
        report["temperature"], report["ece"], report["ece_calibrated"])
    low, high = (np.exp(b) for b in calibration.LOG_T_BOUNDS)
    assert low <= result.temperature <= high
    # On the split it was fitted on, scaling lowers the NLL, and here the ECE.
    assert report["nll_calibrated"] <= report["nll"] + 1e-9
    assert result.ece_calibrated <= result.ece + 1e-9
    before = report["reliability"]["before"]
    assert sum(b["count"] for b in before) == result.n_val
    # Prediction uses it.
    predictor = tle.load_predictor(ws, run.id)
    assert predictor.temperature == result.temperature

    listed = _cli("runs", "--json", "--workspace", str(ws.root))
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in json.loads(listed.stdout.splitlines()[-1]) if r["run_id"] == run.id]
    assert {k: row["summary"][k] for k in ("temperature", "ece", "ece_calibrated")} == {
        "temperature": result.temperature, "ece": result.ece,
        "ece_calibrated": result.ece_calibrated}


def test_the_predictor_gives_the_scaled_probabilities_of_the_model(trained_workspace):
    ws, dataset, run = trained_workspace
    predictor = tle.load_predictor(ws, run.id)
    x = np.stack([predictor.pixels(ws.image_path(r.hash))[1] for r in dataset.records[:5]])
    from tl_engine.model_file import load_run_model

    raw = load_run_model(ws, run.id).predict_on_batch(x.astype(np.float32))
    np.testing.assert_allclose(predictor.probabilities(x),
                               tle.apply_temperature(raw, predictor.temperature), atol=1e-5)


@pytest.fixture(scope="module")
def app_root(trained_workspace, tmp_path_factory):
    """The trained workspace's run, and a copy of it as stored before calibration existed."""
    source, _, run = trained_workspace
    root = tmp_path_factory.mktemp("calibration_app") / "ws"
    shutil.copytree(source.root, root)
    ws = tle.Workspace(root)
    shutil.copytree(root, root.parent / "old")
    old = tle.Workspace(root.parent / "old")
    path = old.run_dir(run.id) / "evaluation.json"
    evaluation = json.loads(path.read_text())
    del evaluation["calibration"]
    path.write_text(json.dumps(evaluation))
    summary = {k: v for k, v in run.summary.items() if k not in calibration.SUMMARY_FIELDS}
    runs.update_run(old, run.id, summary=summary)
    return ws, old, run


def test_the_runs_page_draws_the_reliability_diagram(monkeypatch, app_root):
    ws, old, run = app_root
    at = open_app(monkeypatch, ws.root, "views/runs.py", project="demo")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Temperature T"] == f"{run.result.temperature:.2f}"
    assert metrics["ECE before"] == f"{run.result.ece:.1%}"
    assert metrics["ECE after"] == f"{run.result.ece_calibrated:.1%}"
    [diagram] = [s for s in plotly_specs(at) if any(
        t.get("name") == "perfectly calibrated" for t in s["data"])]
    names = [t["name"] for t in diagram["data"]]
    assert names == ["before temperature scaling", "perfectly calibrated",
                     "after temperature scaling", "perfectly calibrated"]
    report = runs.evaluation(ws, run.id)["calibration"]
    for trace, name in zip(diagram["data"][::2], ("before", "after"), strict=True):
        bins = [b for b in report["reliability"][name] if b["count"]]
        assert trace["y"] == pytest.approx([b["accuracy"] for b in bins])
        assert sum(c[3] for c in trace["customdata"]) == report["n_images"]
    assert "validation images" in texts(at.caption)

    at = open_app(monkeypatch, old.root, "views/runs.py", project="demo")
    assert "trained before calibration" in texts(at.info)
    assert "Temperature T" not in [m.label for m in at.metric]


def test_the_prediction_page_says_not_sure_below_the_threshold(monkeypatch, app_root):
    ws, old, run = app_root
    at = open_app(monkeypatch, ws.root, "views/prediction.py", project="demo")
    threshold = at.slider(key="not_sure_below")
    assert threshold.value == 60 and "T = " in threshold.help
    at.file_uploader[0].set_value([("red.jpg", jpeg((210, 40, 40)), "image/jpeg"),
                                   ("bad.jpg", b"not a picture", "image/jpeg")]).run()
    assert not at.exception, at.exception
    # This run learned only the class prior: about 1/3 each, far below 60 %.
    (prediction,) = tle.predict_images(ws, run.id, [("red.jpg", jpeg((210, 40, 40)))])
    assert prediction.confidence < 0.6
    assert not [m for m in at.metric if m.label == "Prediction"]
    assert "**Not sure**" in texts(at.info)
    assert any(c.value.startswith("Top classes: " + prediction.label) for c in at.caption)
    assert {m.label: m.value for m in at.metric}["Not sure"] == "1"
    table = at.dataframe[0].value
    assert table["not_sure"].tolist() == [True, False]  # an unreadable file is not judged
    assert table["confidence"][0] == pytest.approx(prediction.confidence)

    threshold.set_value(0).run()
    (label,) = [m.value for m in at.metric if m.label == "Prediction"]
    assert label == prediction.label
    assert at.dataframe[0].value["not_sure"].tolist() == [False, False]

    # A run stored before calibration: raw confidences, and the slider says so.
    at = open_app(monkeypatch, old.root, "views/prediction.py", project="demo")
    assert "not calibrated" in at.slider(key="not_sure_below").help
