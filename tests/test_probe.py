"""The transferability probe: its scores on synthetic features (LogME against the exact
marginal likelihood, the linear probe, k-NN, Kendall's tau), and probe jobs on real
images through the queue: summary, reuse, cancel, the ranked table and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tl_engine import runs
from tl_engine.jobs import run_job, submit_job, worker_main
from tl_engine.probe import (
    PROBE_KIND,
    ProbeChoice,
    parse_choices,
    probe_spec,
    probe_table,
    submit_probes,
    with_references,
)
from tl_engine.runs import RunStatus
from tl_engine.transfer_scores import (
    encode_labels,
    kendall_tau,
    knn_accuracy,
    linear_probe,
    logme,
    logme_per_class,
    stratified_folds,
)


def clusters(n_per_class: int, n_classes: int, dim: int, spread: float, seed: int = 0):
    """Features around one random centre per class; `spread` is the noise's scale."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(0, spread, (len(y), dim)), y


def exact_log_evidence(f: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """log N(target | 0, I/beta + F F'/alpha) per image: the marginal likelihood of the
    Bayesian linear model with weights ~ N(0, I/alpha) and noise precision beta."""
    n = len(target)
    cov = np.eye(n) / beta + f @ f.T / alpha
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    quad = target @ np.linalg.solve(cov, target)
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + quad) / n)


@pytest.mark.parametrize("shape", [(60, 8), (30, 50)])  # more images than features, and fewer
def test_logme_is_the_maximised_log_marginal_likelihood(shape):
    n, d = shape
    f, y = clusters(n // 3, 3, d, spread=0.8)
    for label, found in zip(range(3), logme_per_class(f, y), strict=True):
        target = (y == label).astype(float)
        exact = exact_log_evidence(f, target, found.alpha, found.beta)
        assert found.value == pytest.approx(exact, abs=1e-6)
        # The fixed point is a maximum: moving either precision does not raise the evidence
        # by more than the paper's stopping rule (1 % on alpha/beta) leaves. With fewer
        # images than features the supremum lies at noise-free beta, and is this flat.
        for a, b in [(1.5, 1), (1 / 1.5, 1), (1, 1.5), (1, 1 / 1.5), (1, 100)]:
            assert exact_log_evidence(f, target, found.alpha * a, found.beta * b) < exact + 1e-3


def test_logme_ranks_separable_features_above_noise_and_ignores_scale():
    separable, y = clusters(40, 4, 32, spread=0.3)
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 1, separable.shape)
    half = clusters(40, 4, 32, spread=2.0)[0]
    scores = [logme(separable, y), logme(half, y), logme(noise, y)]
    print(f"LogME separable {scores[0]:.3f} · noisy {scores[1]:.3f} · noise {scores[2]:.3f}")
    assert scores[0] > scores[1] > scores[2]
    assert logme(100.0 * separable, y) == pytest.approx(scores[0], abs=1e-6)


def test_folds_are_stratified_and_shrink_for_tiny_classes():
    y = np.array([0] * 20 + [1] * 10 + [2] * 3)
    folds = stratified_folds(y)
    assert len(folds) == 3  # the smallest class has three images
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(y)))
    for fold in folds:
        assert set(y[fold]) == {0, 1, 2}
    assert len(stratified_folds(np.array([0] * 50 + [1] * 50)) ) == 5
    assert [f.tolist() for f in stratified_folds(y, seed=3)] == \
        [f.tolist() for f in stratified_folds(y, seed=3)]


def test_linear_probe_and_knn_tell_separable_from_noise():
    f, y = clusters(30, 3, 64, spread=0.5)
    folds = stratified_folds(y)
    assert linear_probe(f, y, 3, folds) > 0.95
    assert knn_accuracy(f, y) > 0.95
    noise = np.random.default_rng(2).normal(0, 1, f.shape)
    assert linear_probe(noise, y, 3, folds) < 0.6
    assert knn_accuracy(noise, y) < 0.6
    # k-NN in small chunks is the same as in one piece.
    assert knn_accuracy(f, y, chunk=7) == knn_accuracy(f, y)


def test_encode_labels_sorts_the_classes():
    y, classes = encode_labels(["bees", "ants", "bees"])
    assert classes == ["ants", "bees"] and y.tolist() == [1, 0, 1]


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with a tie: 5 pairs ordered in x, 6 in y; the 5 agree.
    assert kendall_tau([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / np.sqrt(5 * 6))
    with pytest.raises(ValueError):
        kendall_tau([1], [1])


def test_choices_add_random_references_once():
    choices = with_references([ProbeChoice("MobileNet-0.25"), ProbeChoice("MobileNet-0.25"),
                               ProbeChoice("MobileNetV2-0.35", "none")])
    assert choices == [ProbeChoice("MobileNet-0.25", "imagenet"),
                       ProbeChoice("MobileNet-0.25", "none"),
                       ProbeChoice("MobileNetV2-0.35", "none")]
    parsed = parse_choices("MobileNet-0.25, MobileNetV2-0.35:none", image_size=64)
    assert [(c.backbone, c.weights, c.image_size) for c in parsed] == [
        ("MobileNet-0.25", "imagenet", 64), ("MobileNet-0.25", "none", 64),
        ("MobileNetV2-0.35", "none", 64)]
    with pytest.raises(Exception, match="Unknown backbone"):
        parse_choices("NoSuchNet")
    with pytest.raises(Exception, match="no weights file"):
        parse_choices("MobileNet-0.25:missing.weights.h5")


# --- probe jobs on real images ----------------------------------------------------------
def test_probe_job_scores_reuses_and_ranks(workspace, tiny_dataset, keras_home):
    choices = [ProbeChoice("MobileNet-0.25", "imagenet", 32),
               ProbeChoice("MobileNet-0.25", "none", 32)]
    first = submit_probes(workspace, "test", tiny_dataset.id, choices, start_worker=False)
    assert not any(s.cached for s in first)
    assert worker_main(workspace) == 2
    for submission in first:
        run = runs.get_run(workspace, submission.run_id)
        assert run.kind == PROBE_KIND and run.status == RunStatus.COMPLETED, run.error
        assert set(run.summary) >= {"probe_accuracy", "knn_accuracy", "evidence", "seconds",
                                    "n_images", "train_seconds"}
        assert run.summary["n_images"] == 30 and run.summary["features_computed"] == 30
    # The identical probe is never redone: the same job comes back, completed.
    again = submit_probes(workspace, "test", tiny_dataset.id, choices, start_worker=False)
    assert [s.run_id for s in again] == [s.run_id for s in first]
    assert all(s.cached for s in again)
    assert worker_main(workspace) == 0
    rows = probe_table(workspace, tiny_dataset.id)
    assert [r.evidence for r in rows] == sorted((r.evidence for r in rows), reverse=True)
    assert {(r.backbone, r.weights) for r in rows} == {("MobileNet-0.25", "imagenet"),
                                                       ("MobileNet-0.25", "none")}
    for row in rows:
        assert 0.0 <= row.probe_accuracy <= 1.0 and 0.0 <= row.knn_accuracy <= 1.0
        assert row.n_images == 30 and row.seconds > 0 and row.image_size == 32
    by_probe = probe_table(workspace, tiny_dataset.id, by="probe_accuracy")
    assert by_probe[0].probe_accuracy == max(r.probe_accuracy for r in rows)
    assert probe_table(workspace, tiny_dataset.id, image_size=64) == []


def test_probe_reports_time_against_a_frozen_training(workspace, tiny_dataset):
    from conftest import train_tiny_run

    trained = train_tiny_run(workspace, tiny_dataset, strategy="frozen", epochs=1)
    assert trained.status == RunStatus.COMPLETED, trained.error
    submit_probes(workspace, "test", tiny_dataset.id,
                  [ProbeChoice("MobileNetV2-0.35", "none", 32)], start_worker=False)
    worker_main(workspace)
    row = next(r for r in probe_table(workspace, tiny_dataset.id) if r.weights == "none")
    assert row.train_run_id == trained.id and row.train_seconds == trained.seconds
    assert row.faster_than_training == pytest.approx(trained.seconds / row.seconds)
    # Training used the same frozen backbone: the probe read its features from the cache.
    assert runs.get_run(workspace, row.run_id).summary["features_reused"] == 30


def test_cancel_stops_a_running_probe(workspace, tiny_dataset):
    spec = probe_spec(ProbeChoice("MobileNet-0.25", "none", 48))
    submission = submit_job(workspace, "test", tiny_dataset.id, spec, kind=PROBE_KIND,
                            start_worker=False)
    run_id = runs.claim_next_run(workspace)
    assert run_id == submission.run_id
    assert runs.request_cancel(workspace, run_id) == RunStatus.RUNNING  # asked, not yet done
    assert run_job(workspace, run_id) == RunStatus.CANCELLED
    assert runs.get_run(workspace, run_id).status == RunStatus.CANCELLED
    assert probe_table(workspace, tiny_dataset.id) == []
    # A cancelled probe is not reused: submitting it again queues fresh work.
    again = submit_job(workspace, "test", tiny_dataset.id, spec, kind=PROBE_KIND,
                       start_worker=False)
    assert again.run_id != run_id and not again.cached


def test_cli_probe_json_rows(tmp_path, tiny_data_dir, keras_home, capsys):
    from tl_engine.cli import main

    code = main(["--workspace", str(tmp_path / "ws"), "probe", "--data", str(tiny_data_dir),
                 "--backbones", "MobileNet-0.25", "--image-size", "32", "--json",
                 "--no-progress"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = result["rows"]
    assert sorted((r["backbone"], r["weights"]) for r in rows) == [
        ("MobileNet-0.25", "imagenet"), ("MobileNet-0.25", "none")]
    for row in rows:
        assert {"backbone", "weights", "probe_accuracy", "knn_accuracy", "evidence",
                "seconds"} <= set(row)
        assert 0.0 <= row["probe_accuracy"] <= 1.0 and row["seconds"] > 0
    assert result["ranked_by"] == "evidence" and rows[0]["evidence"] >= rows[1]["evidence"]
