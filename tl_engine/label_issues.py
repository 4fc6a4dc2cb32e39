"""Which labels are wrong: confident learning on a linear probe's out-of-fold predictions.

Confident learning (Northcutt, Jiang and Chuang, JAIR 2021) needs only predicted
probabilities that the model made without seeing the example's own label. A small
softmax regression on cached backbone features, fitted k times on k-1 folds, gives them
in seconds. From those probabilities:

- each class's threshold is the mean probability the model gives that class on the
  images labelled with it (the model's own confidence, so no hyper-parameter);
- the confident joint counts, per given label, the images whose probability of another
  class reaches that class's threshold; calibrated to the class sizes, it estimates how
  many images of class i really belong to class j;
- prune by noise rate: for each pair (i, j) that many images of given label i, those with
  the largest margin p(j) - p(i), are suspects; only those whose confident label is not
  the given one and where the probe does not agree with the given label are kept.

The `label-issues` job (registered in job_kinds.py) runs it over a dataset's cached
features and stores the ranked suspects in the run's summary and the dataset map
(dataset_map.py) in the run folder. NumPy only: cleanlab would add a dependency tree for
the forty lines below.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import runs
from .datasets import ImageRecord, load_dataset
from .progress import Progress
from .runs import RunRecord, RunStatus
from .spec import RunSpec
from .store import Workspace
from .transfer_scores import out_of_fold_probabilities, stratified_folds

KIND = "label-issues"
MAP_FILE = "map.json"
FOLDS = 5
# The L2 penalty on the mean loss, per feature dimension, on standardised features: the
# logits are sums over every dimension, so the penalty grows with them. Strong, because
# there are more dimensions than images. Chosen on the ants/bees photos with 10 % of the
# labels flipped (precision of the suspects 0.30 at a hundredth of this, 0.56 here,
# recall about 0.9 throughout).
L2_PER_FEATURE = 1 / 160


# --- the probe ----------------------------------------------------------------------------


def probe_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int,
                        seed: int = 42) -> np.ndarray:
    """Out-of-fold probabilities of the transferability probe's linear model, with the
    stronger penalty that suits noisy labels (L2_PER_FEATURE per dimension and image)."""
    features = np.asarray(features, dtype=np.float64)
    folds = stratified_folds(labels, FOLDS, seed)
    n_train = len(labels) * (len(folds) - 1) / len(folds)
    return out_of_fold_probabilities(features, labels, n_classes, folds,
                                     l2=L2_PER_FEATURE * features.shape[1] * n_train)


# --- confident learning -------------------------------------------------------------------


def class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class, the mean probability of that class over the images labelled with it."""
    n_classes = probs.shape[1]
    return np.array([probs[labels == k, k].mean() if (labels == k).any() else 1.0
                     for k in range(n_classes)])


def confident_labels(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Each example's confident label: the likeliest class among those whose probability
    reaches their threshold; -1 where none does."""
    above = probs >= thresholds - 1e-9
    masked = np.where(above, probs, -np.inf)
    best = masked.argmax(axis=1)
    return np.where(above.any(axis=1), best, -1)


def confident_joint(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Counts C[given, confident]: how many images labelled i are confidently j."""
    n_classes = probs.shape[1]
    confident = confident_labels(probs, class_thresholds(probs, labels))
    joint = np.zeros((n_classes, n_classes), dtype=np.int64)
    known = confident >= 0
    np.add.at(joint, (labels[known], confident[known]), 1)
    return joint


def noise_matrix(joint: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The confident joint calibrated so each row sums to its class's size, as a share of
    all images: Q[i, j] estimates the share of images labelled i that truly are j."""
    counts = np.bincount(labels, minlength=joint.shape[0]).astype(np.float64)
    rows = joint.sum(axis=1, keepdims=True).astype(np.float64)
    calibrated = np.where(rows > 0, joint / np.maximum(rows, 1) * counts[:, None], 0.0)
    total = calibrated.sum()
    return calibrated / total if total else calibrated


def find_label_issues(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of the likely mislabelled examples, most suspicious (lowest probability of
    the given label) first."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    n, n_classes = probs.shape
    joint = confident_joint(probs, labels)
    prune = np.rint(noise_matrix(joint, labels) * n).astype(int)
    issues = np.zeros(n, dtype=bool)
    for given in range(n_classes):
        members = np.flatnonzero(labels == given)
        # Never empty a class: at least one of its images keeps its label.
        budget = max(0, len(members) - 1)
        for other in range(n_classes):
            count = min(prune[given, other], budget) if other != given else 0
            if count <= 0:
                continue
            margin = probs[members, other] - probs[members, given]
            issues[members[np.argsort(-margin, kind="stable")[:count]]] = True
    confident = confident_labels(probs, class_thresholds(probs, labels))
    issues &= (confident >= 0) & (confident != labels)  # cleanlab's filter_by="both"
    issues &= probs.argmax(axis=1) != labels
    found = np.flatnonzero(issues)
    return found[np.argsort(probs[found, labels[found]], kind="stable")]


# --- suspects of a dataset ----------------------------------------------------------------


@dataclass(frozen=True)
class Suspect:
    hash: str
    filename: str  # as the dataset keeps it: the path inside the folder or zip
    given: str
    suggested: str
    score: float  # 1 - the probe's probability of the given label: higher, more suspicious

    def to_dict(self) -> dict[str, Any]:
        return {"hash": self.hash, "file": self.filename, "given": self.given,
                "suggested": self.suggested, "score": round(self.score, 4)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Suspect:
        return cls(data["hash"], data["file"], data["given"], data["suggested"],
                   float(data["score"]))


@dataclass(frozen=True)
class LabelIssues:
    suspects: list[Suspect]
    probe_accuracy: float  # out-of-fold accuracy of the probe against the given labels
    noise_share: float  # estimated share of wrong labels (off-diagonal of the noise matrix)


def label_issues_of(records: Sequence[ImageRecord], classes: Sequence[str],
                    features: np.ndarray, seed: int = 42) -> LabelIssues:
    """Suspects among `records` (rows of `features` in the same order)."""
    index = {label: i for i, label in enumerate(classes)}
    labels = np.array([index[r.label] for r in records])
    probs = probe_probabilities(features, labels, len(classes), seed=seed)
    found = find_label_issues(probs, labels)
    confident = confident_labels(probs, class_thresholds(probs, labels))
    suspects = []
    for i in found:
        others = probs[i].copy()
        others[labels[i]] = -1.0
        suggested = confident[i] if confident[i] >= 0 else int(others.argmax())
        record = records[i]
        suspects.append(Suspect(record.hash, record.filename, record.label,
                                classes[suggested], float(1.0 - probs[i, labels[i]])))
    q = noise_matrix(confident_joint(probs, labels), labels)
    return LabelIssues(suspects, float((probs.argmax(axis=1) == labels).mean()),
                       float(q.sum() - np.trace(q)))


# --- the job --------------------------------------------------------------------------------


def label_issues_spec(backbone: str = "MobileNetV2-0.35", weights: str = "imagenet",
                      image_size: int = 0, seed: int = 42, batch_size: int = 32) -> RunSpec:
    """The spec of a label-issues job: only what the features and the folds depend on, the
    rest at defaults, so identical work has one cache key whatever the training draft."""
    return RunSpec(backbone=backbone, weights=weights, image_size=image_size, seed=seed,
                   batch_size=batch_size).normalized()


def submit_label_issues(ws: Workspace, project: str, dataset_id: str, spec: RunSpec,
                        started_by: str | None = None, start_worker: bool = True,
                        force: bool = False) -> Any:
    """Queue (or reuse) a label-issues job for the dataset; returns the jobs.Submission."""
    from .jobs import submit_job

    spec = label_issues_spec(spec.backbone, spec.weights, spec.image_size, spec.seed,
                             spec.batch_size)
    return submit_job(ws, project, dataset_id, spec, kind=KIND, force=force,
                      started_by=started_by, start_worker=start_worker)


def latest_label_issues(ws: Workspace, dataset_id: str) -> RunRecord | None:
    """The dataset's label-issues job to show: the newest completed one, else the newest."""
    rows = ws.query("SELECT * FROM runs WHERE dataset_id = ? ORDER BY created_at DESC",
                    (dataset_id,))
    # Kinds filtered here, not in SQL: a read-only workspace's index may lack the column.
    jobs = [run for run in (runs._record(ws, row) for row in rows) if run.kind == KIND]
    done = [run for run in jobs if run.status == RunStatus.COMPLETED]
    return (done or jobs or [None])[0]


def suspects_of(run: RunRecord) -> list[Suspect]:
    return [Suspect.from_dict(item) for item in run.summary.get("suspects", [])]


def map_of(ws: Workspace, run: RunRecord) -> dict[str, Any] | None:
    """The dataset map a completed label-issues job stored, or None."""
    import json

    path = ws.run_dir(run.id) / MAP_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def execute_label_issues(ws: Workspace, run_id: str) -> RunStatus:
    """The `label-issues` job: features (cached), the probe's folds, the suspects, the map."""
    from .dataset_map import dataset_map
    from .features import FeaturesCancelled, extract_features, feature_extractor

    started = time.time()
    run = runs.get_run(ws, run_id)
    spec = run.spec
    dataset = load_dataset(ws, run.dataset_id)
    records = list(dataset.records)

    def report(progress: Progress) -> bool:
        # Features are most of the work; the folds and the map take the last tenth.
        return runs.heartbeat(ws, run_id, dataclasses.replace(
            progress, fraction=0.9 * float(progress.fraction or 0.0)))

    if report(Progress(phase="features", fraction=0.0)):
        runs.finish_run(ws, run_id, RunStatus.CANCELLED)
        return RunStatus.CANCELLED
    try:
        from .device import clear_keras_session

        extractor = feature_extractor(spec.backbone, spec.weights, spec.image_size, spec.seed)
        try:
            found = extract_features(ws, extractor.model, extractor.key,
                                     [("all images", records)], spec.batch_size, report)
        finally:
            clear_keras_session()
    except FeaturesCancelled:
        runs.finish_run(ws, run_id, RunStatus.CANCELLED)
        return RunStatus.CANCELLED
    features = found.matrices[0]
    if runs.heartbeat(ws, run_id, Progress(phase="label issues", fraction=0.92)):
        runs.finish_run(ws, run_id, RunStatus.CANCELLED)
        return RunStatus.CANCELLED
    issues = label_issues_of(records, dataset.classes, features, seed=spec.seed)
    points = dataset_map(records, features, {s.hash for s in issues.suspects})
    ws.write_json_atomic(ws.run_dir(run_id) / MAP_FILE, points)
    summary = {
        "suspects": [s.to_dict() for s in issues.suspects],
        "n_images": len(records),
        "n_suspects": len(issues.suspects),
        "n_outliers": sum(1 for p in points["points"] if p["outlier"]),
        "probe_accuracy": round(issues.probe_accuracy, 4),
        "noise_share": round(issues.noise_share, 4),
        "features_computed": found.computed,
        "features_reused": found.reused,
        "seconds": round(time.time() - started, 2),
    }
    runs.finish_run(ws, run_id, RunStatus.COMPLETED, summary=summary)
    return RunStatus.COMPLETED
