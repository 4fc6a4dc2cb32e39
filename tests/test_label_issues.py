"""Which labels are wrong, and the dataset as a map: confident learning on synthetic
probabilities, the label-issues job on real images, dataset versions, the CLI and the
Dataset page."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, TINY_CLASSES, open_app, train_tiny_run, write_color_classes

import tl_engine as tle
from tl_engine.dataset_map import dataset_map
from tl_engine.jobs import worker_main
from tl_engine.label_issues import (
    class_thresholds,
    confident_joint,
    find_label_issues,
    noise_matrix,
    probe_probabilities,
)
from tl_engine.transfer_scores import stratified_folds

# The tiny colour set at 32 px through ImageNet weights: colours separate cleanly.
TINY_JOB = {"backbone": "MobileNetV2-0.35", "weights": "imagenet", "image_size": 32}


# --- confident learning on synthetic probabilities ------------------------------------------


def test_thresholds_and_confident_joint_by_hand():
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8],  # labelled 0
                      [0.1, 0.9], [0.3, 0.7], [0.95, 0.05]])  # labelled 1
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert class_thresholds(probs, labels) == pytest.approx([0.6, 0.55])
    # Row 2 reaches class 1's threshold only; row 5 class 0's only.
    assert confident_joint(probs, labels).tolist() == [[2, 1], [1, 2]]
    q = noise_matrix(confident_joint(probs, labels), labels)
    assert q.sum() == pytest.approx(1.0) and q[0, 1] == pytest.approx(1 / 6)
    assert find_label_issues(probs, labels).tolist() == [5, 2]  # most suspicious first


def test_no_issues_when_the_probe_agrees_with_every_label():
    probs = np.array([[0.8, 0.2], [0.9, 0.1], [0.3, 0.7], [0.1, 0.9]])
    assert find_label_issues(probs, np.array([0, 0, 1, 1])).tolist() == []


def test_flipped_labels_of_separable_classes_are_found():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    features = rng.normal(0, 3, (3, 40))[truth] + rng.normal(0, 1, (300, 40))
    given = truth.copy()
    flipped = rng.choice(300, 30, replace=False)
    given[flipped] = (given[flipped] + rng.integers(1, 3, 30)) % 3
    probs = probe_probabilities(features, given, 3)
    found = set(find_label_issues(probs, given).tolist())
    assert len(found & set(flipped)) >= 27 and len(found - set(flipped)) <= 3


def test_folds_spread_every_class():
    labels = np.array([0] * 10 + [1] * 7 + [2] * 3)
    folds = stratified_folds(labels, 5, seed=1)  # shrinks to the smallest class: 3 folds
    fold_of = np.empty(len(labels), dtype=int)
    for number, held_out in enumerate(folds):
        fold_of[held_out] = number
    for label, size in ((0, 10), (1, 7), (2, 3)):
        counts = np.bincount(fold_of[labels == label], minlength=len(folds))
        assert counts.max() - counts.min() <= 1 and counts.sum() == size


def test_map_marks_an_image_far_from_its_class():
    rng = np.random.default_rng(2)
    records = [tle.ImageRecord(f"h{i}", "a" if i < 30 else "b", f"x/{i}.jpg", "", 9, 9)
               for i in range(60)]
    features = rng.normal(0, 1, (60, 16)) + np.where(np.arange(60) < 30, 0, 4)[:, None]
    features[7] += 25
    points = dataset_map(records, features, suspects={"h3"})
    assert [p["hash"] for p in points["points"] if p["outlier"]] == ["h7"]
    assert [p["hash"] for p in points["points"] if p["suspect"]] == ["h3"]
    assert len(points["explained"]) == 2 and points["explained"][0] > 0.3


def test_map_figure_has_a_trace_per_class_and_escapes_names():
    from dashboard.label_views import dataset_map_figure

    points = [{"hash": "h1", "file": "<b>x</b>.jpg", "label": "<i>a</i>", "x": 0, "y": 1,
               "suspect": True, "outlier": False},
              {"hash": "h2", "file": "y.jpg", "label": "b", "x": 1, "y": 0, "suspect": False,
               "outlier": True}]
    figure = dataset_map_figure(points, ["<i>a</i>", "b"], [0.4, 0.2])
    names = [trace.name for trace in figure.data]
    assert names == ["&lt;i&gt;a&lt;/i&gt;", "b", "suspected wrong label", "outlier in its class"]
    assert "<b>" not in figure.data[0].hovertext[0] and figure.data[0].customdata[0] == "h1"
    assert [trace.marker.symbol for trace in figure.data[2:]] == ["x", "diamond-open"]


# --- the job on real images ------------------------------------------------------------------


def flipped_colour_set(root: Path) -> Path:
    """The tiny colour classes with two images in the wrong class folder."""
    data = write_color_classes(root, TINY_CLASSES, per_class=12)
    shutil.move(data / "red" / "red_000.jpg", data / "green" / "red_000.jpg")
    shutil.move(data / "blue" / "blue_001.jpg", data / "red" / "blue_001.jpg")
    return data


@pytest.fixture
def flipped_job(workspace, tmp_path, keras_home):
    dataset = tle.ingest_folder(workspace, flipped_colour_set(tmp_path / "flipped"),
                                project="demo")
    submission = tle.submit_label_issues(workspace, "demo", dataset.id, tle.RunSpec(**TINY_JOB),
                                         start_worker=False)
    worker_main(workspace)
    return workspace, dataset, tle.get_run(workspace, submission.run_id)


def test_job_finds_the_moved_images_reuses_its_work_and_stays_off_the_runs_list(flipped_job):
    ws, dataset, run = flipped_job
    assert run.status == "completed", run.error
    assert run.kind == "label-issues"
    found = {(s.filename, s.given, s.suggested) for s in tle.suspects_of(run)}
    assert found == {("green/red_000.jpg", "green", "red"), ("red/blue_001.jpg", "red", "blue")}
    stored = tle.map_of(ws, run)
    assert len(stored["points"]) == len(dataset.records)
    assert sum(p["suspect"] for p in stored["points"]) == 2
    # Another draft's training settings do not matter: the same job is reused.
    again = tle.submit_label_issues(ws, "demo", dataset.id,
                                    tle.RunSpec(**TINY_JOB, epochs=9, learning_rate=0.1))
    assert again.cached and again.run_id == run.id
    assert tle.latest_label_issues(ws, dataset.id).id == run.id
    assert tle.list_runs(ws, "demo") == [] and tle.active_runs(ws, "demo") == []
    assert [r.id for r in tle.list_runs(ws, "demo", kind=None)] == [run.id]


def test_cancelled_before_it_starts(workspace, tiny_dataset):
    submission = tle.submit_label_issues(workspace, "test", tiny_dataset.id,
                                         tle.RunSpec(**{**TINY_JOB, "weights": "none"}),
                                         start_worker=False)
    tle.cancel_run(workspace, submission.run_id)
    worker_main(workspace)
    assert tle.get_run(workspace, submission.run_id).status == "cancelled"


# --- dataset versions ------------------------------------------------------------------------


def test_revising_makes_a_new_version_and_leaves_the_old_one_and_its_runs(workspace,
                                                                           tiny_dataset):
    run = train_tiny_run(workspace, tiny_dataset, epochs=1)
    before = tle.load_dataset(workspace, tiny_dataset.id)
    red = sorted(r.hash for r in before.records if r.label == "red")
    revised = tle.revise_dataset(workspace, tiny_dataset.id, relabel={red[0]: "blue"},
                                 remove={red[1]})
    assert revised.id != tiny_dataset.id and revised.project == "test"
    assert revised.name == f"{before.name} · v2"
    assert revised.parent == {"id": tiny_dataset.id, "version": 2,
                              "relabelled": {red[0]: ["red", "blue"]}, "removed": [red[1]]}
    labels = {r.hash: r.label for r in revised.records}
    assert labels[red[0]] == "blue" and red[1] not in labels
    assert revised.counts() == {"blue": 11, "green": 10, "red": 8}
    assert revised.health.n_images == 29 and revised.health.classes["red"]["count"] == 8
    # The old version and its run are exactly as they were.
    assert tle.load_dataset(workspace, tiny_dataset.id) == before
    assert tle.get_run(workspace, run.id).dataset_id == tiny_dataset.id
    assert {d.id for d in tle.list_datasets(workspace, "test")} == {tiny_dataset.id, revised.id}
    # A version of a version counts on; the same revision again is the same dataset.
    third = tle.revise_dataset(workspace, revised.id, remove={red[2]})
    assert third.name == f"{before.name} · v3" and third.parent["id"] == revised.id
    assert tle.revise_dataset(workspace, tiny_dataset.id, relabel={red[0]: "blue"},
                              remove={red[1]}).id == revised.id


def test_revisions_that_cannot_be_made_are_refused(workspace, tiny_dataset):
    reds = [r.hash for r in tiny_dataset.records if r.label == "red"]
    with pytest.raises(tle.DatasetError, match="not a class"):
        tle.revise_dataset(workspace, tiny_dataset.id, relabel={reds[0]: "purple"})
    with pytest.raises(tle.DatasetError, match="not in dataset"):
        tle.revise_dataset(workspace, tiny_dataset.id, remove={"f" * 64})
    with pytest.raises(tle.DatasetError, match="Nothing to change"):
        tle.revise_dataset(workspace, tiny_dataset.id, relabel={reds[0]: "red"})
    with pytest.raises(tle.DatasetError, match="class 'red' has no usable images"):
        tle.revise_dataset(workspace, tiny_dataset.id, remove=set(reds))
    assert len(tle.list_datasets(workspace, "test")) == 1


# --- the CLI -----------------------------------------------------------------------------


def test_cli_label_issues_json(tmp_path, keras_home):
    data = flipped_colour_set(tmp_path / "flipped")
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "tl_engine", "--workspace", str(tmp_path / "ws"), "label-issues",
         "--data", str(data), "--image-size", "32", "--json", "--no-progress"],
        capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    issues = json.loads(result.stdout.strip().splitlines()[-1])["issues"]
    assert {(i["file"], i["given"], i["suggested"]) for i in issues} == {
        ("green/red_000.jpg", "green", "red"), ("red/blue_001.jpg", "red", "blue")}
    assert all(set(i) == {"file", "given", "suggested", "score"} and 0 < i["score"] <= 1
               for i in issues)
    assert all((data / i["file"]).is_file() for i in issues)


# --- the Dataset page ------------------------------------------------------------------------


def test_dataset_page_relabels_one_removes_one_and_draws_the_map(monkeypatch, flipped_job):
    ws, dataset, run = flipped_job
    at = open_app(monkeypatch, ws.root, project="demo", page="views/dataset.py")
    assert any(m.label == "Suspects" and m.value == "2" for m in at.metric)
    charts = at.get("plotly_chart")
    spec = json.loads(charts[-1].proto.spec)
    assert [t["name"] for t in spec["data"]] == [*dataset.classes, "suspected wrong label",
                                                 "outlier in its class"]
    first, second = tle.suspects_of(run)
    radios = [r for r in at.radio if str(r.key).startswith(f"suspect_{dataset.id}_")]
    assert len(radios) == 2
    at.radio(key=f"suspect_{dataset.id}_{first.hash[:16]}").set_value("Relabel")
    at.radio(key=f"suspect_{dataset.id}_{second.hash[:16]}").set_value("Remove").run()
    at.button(key="suspects_save").click().run()
    assert not at.exception, at.exception
    versions = tle.list_datasets(ws, "demo")
    assert len(versions) == 2
    (revised,) = [d for d in versions if d.id != dataset.id]
    assert revised.parent["relabelled"] == {first.hash: [first.given, first.suggested]}
    assert revised.parent["removed"] == [second.hash]
    assert tle.load_dataset(ws, dataset.id) == dataset
    assert "Saved" in "\n".join(str(s.value) for s in at.success)
    assert any("Version 2" in str(c.value) for c in at.caption)  # the new version is shown
