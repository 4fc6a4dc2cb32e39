"""Will it transfer? A probe job scores one backbone (with one set of starting weights, at
one input size) on a dataset from its cached features, before any training.

Each probe is a job of kind "probe" in the shared queue: progress and cancel come from the
feature extraction, and an identical probe (same backbone, weights, size and images) is
never run twice. Each backbone is probed with its pretrained weights and with random
ones, so the table shows what the pretraining is worth for these images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import runs
from .datasets import ImageRecord, load_dataset, split_records
from .device import clear_keras_session
from .errors import SpecError
from .progress import Progress
from .registry import get_backbone, list_backbones
from .runs import RunStatus
from .spec import RunSpec
from .store import Workspace

PROBE_KIND = "probe"
RANKED_BY = "evidence"  # LogME; probe_accuracy is the other order the tests measure
PROBE_BATCH = 32


@dataclass(frozen=True)
class ProbeChoice:
    """One row the probe fills: a backbone, its starting weights, an input size (0: the
    backbone's own)."""

    backbone: str
    weights: str = "imagenet"
    image_size: int = 0


@dataclass(frozen=True)
class ProbeResult:
    probe_accuracy: float  # cross-validated linear probe
    knn_accuracy: float  # leave-one-out cosine k-NN
    evidence: float  # LogME, per image, mean over classes
    seconds: float  # the whole job: features (computed or read) and scores
    n_images: int
    n_classes: int
    folds: int
    features_computed: int
    features_reused: int


@dataclass(frozen=True)
class ProbeRow:
    run_id: str
    backbone: str
    weights: str  # "imagenet", "none", or a weights file's path
    weights_label: str  # "imagenet", "none", or the file's name
    image_size: int
    probe_accuracy: float
    knn_accuracy: float
    evidence: float
    seconds: float
    n_images: int
    train_seconds: float | None  # a completed frozen training of the same model, if any
    train_run_id: str | None

    @property
    def faster_than_training(self) -> float | None:
        """How many times faster the probe was than that training."""
        if not self.train_seconds or not self.seconds:
            return None
        return self.train_seconds / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "faster_than_training": self.faster_than_training}


def weights_label(weights: str) -> str:
    return weights if weights in ("imagenet", "none") else Path(weights).name


def probe_spec(choice: ProbeChoice, seed: int = 42) -> RunSpec:
    """The spec a probe job stores: only backbone, weights, size and seed matter, every
    other setting stays at its default so equal probes have equal cache keys."""
    return RunSpec(backbone=choice.backbone, weights=choice.weights,
                   image_size=choice.image_size, seed=seed).normalized()


def probe_records(ws: Workspace, dataset_id: str) -> list[ImageRecord]:
    """The images a probe scores: training and validation ones. A given test split stays
    untouched, as model choice must not look at it."""
    parts = split_records(load_dataset(ws, dataset_id), 0.2, 0.0)
    return sorted(parts["train"] + parts["val"], key=lambda r: (r.label, r.filename))


def score_features(features: np.ndarray, labels: Sequence[str], seed: int = 42,
                   cancelled: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Probe accuracy, k-NN accuracy and LogME evidence of a feature matrix."""
    from .transfer_scores import (
        encode_labels,
        knn_accuracy,
        linear_probe,
        logme,
        stratified_folds,
    )

    y, classes = encode_labels(labels)
    folds = stratified_folds(y, seed=seed)
    evidence = logme(features, y)
    if cancelled():
        raise _ProbeCancelled()
    knn = knn_accuracy(features, y)
    if cancelled():
        raise _ProbeCancelled()
    probe = linear_probe(features, y, len(classes), folds)
    return {"probe_accuracy": probe, "knn_accuracy": knn, "evidence": evidence,
            "n_classes": len(classes), "folds": len(folds)}


class _ProbeCancelled(Exception):
    pass


def run_probe(ws: Workspace, dataset_id: str, spec: RunSpec,
              report: Callable[[Progress], bool] | None = None) -> ProbeResult:
    """Score one backbone on a dataset's images; `report(progress)` returns True to stop
    (then FeaturesCancelled is raised)."""
    from .features import FeaturesCancelled, extract_features, feature_extractor

    report = report or (lambda progress: False)
    started = time.time()
    records = probe_records(ws, dataset_id)
    extractor = feature_extractor(spec.backbone, spec.weights, spec.image_size, spec.seed)
    try:
        found = extract_features(ws, extractor.model, extractor.key, [("images", records)],
                                 PROBE_BATCH, report)
    finally:
        clear_keras_session()

    def scoring_cancelled() -> bool:
        return report(Progress(phase="scoring", phase_title="Scoring the features",
                               fraction=1.0, elapsed_s=time.time() - started))

    try:
        if scoring_cancelled():
            raise _ProbeCancelled()
        scores = score_features(found.matrices[0], [r.label for r in records], spec.seed,
                                scoring_cancelled)
    except _ProbeCancelled:
        raise FeaturesCancelled() from None
    return ProbeResult(
        probe_accuracy=scores["probe_accuracy"], knn_accuracy=scores["knn_accuracy"],
        evidence=scores["evidence"], seconds=time.time() - started, n_images=len(records),
        n_classes=scores["n_classes"], folds=scores["folds"],
        features_computed=found.computed, features_reused=found.reused)


def _head_only(spec: RunSpec) -> bool:
    """A run whose every phase trains the head alone on the frozen backbone."""
    from .phases import phases

    return not any(phase.trains_backbone for phase in phases(spec))


def frozen_training(ws: Workspace, dataset_id: str, spec: RunSpec
                    ) -> runs.RunRecord | None:
    """The newest completed frozen training of the same backbone and weights on this
    dataset (at the same input size if there is one): what "faster than training"
    compares with."""
    rows = ws.query(
        "SELECT id FROM runs WHERE dataset_id = ? AND kind = ? AND status = ? "
        "ORDER BY created_at DESC", (dataset_id, runs.DEFAULT_KIND, RunStatus.COMPLETED))
    candidates = [run for row in rows if (run := runs.get_run(ws, row["id"])).spec.backbone
                  == spec.backbone and run.spec.weights == spec.weights
                  and _head_only(run.spec) and run.seconds]
    same_size = [run for run in candidates if run.spec.image_size == spec.image_size]
    return (same_size or candidates or [None])[0]


def execute_probe(ws: Workspace, run_id: str) -> RunStatus:
    """The worker's side of a probe job; returns its end state."""
    from .features import FeaturesCancelled

    run = runs.get_run(ws, run_id)
    try:
        result = run_probe(ws, run.dataset_id, run.spec,
                           lambda progress: runs.heartbeat(ws, run_id, progress))
    except FeaturesCancelled:
        runs.finish_run(ws, run_id, RunStatus.CANCELLED)
        return RunStatus.CANCELLED
    summary: dict[str, Any] = asdict(result)
    training = frozen_training(ws, run.dataset_id, run.spec)
    summary["train_seconds"] = training.seconds if training else None
    summary["train_run_id"] = training.id if training else None
    runs.finish_run(ws, run_id, RunStatus.COMPLETED, summary=summary)
    return RunStatus.COMPLETED


# --- choosing what to probe, submitting, reading the table ------------------------------
def default_choices(image_size: int = 0) -> list[ProbeChoice]:
    """Every backbone whose ImageNet weights are on this host, each with its random-init
    reference."""
    from .weights import weights_status

    available = [b.key for b in list_backbones()
                 if weights_status(b, probe_network=False) == "cached"]
    return with_references([ProbeChoice(key, "imagenet", image_size) for key in available])


def with_references(choices: Sequence[ProbeChoice]) -> list[ProbeChoice]:
    """The choices, each pretrained one followed by its backbone's random-init reference
    (once per backbone and size), duplicates dropped."""
    out: list[ProbeChoice] = []
    for choice in choices:
        for item in (choice, ProbeChoice(choice.backbone, "none", choice.image_size)):
            if item not in out:
                out.append(item)
    return out


def parse_choices(text: str, image_size: int = 0) -> list[ProbeChoice]:
    """`KEY[:WEIGHTS],...` as the CLI takes it. WEIGHTS is imagenet (the default), none,
    a file's name in $TL_WEIGHTS_DIR, or a path to a weights file."""
    from .weights import list_weight_files

    choices = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, weights = item.partition(":")
        get_backbone(key.strip())  # a clear SpecError for an unknown key
        weights = weights.strip() or "imagenet"
        if weights not in ("imagenet", "none"):
            named = next((f for f in list_weight_files() if f.name == weights), None)
            path = named.path if named else Path(weights).expanduser().resolve()
            if not path.is_file():
                raise SpecError(f"--backbones {item}: no weights file {weights!r} (give a "
                                f"file's name in $TL_WEIGHTS_DIR, or a path).")
            weights = str(path)
        choices.append(ProbeChoice(key.strip(), weights, image_size))
    if not choices:
        raise SpecError("--backbones names no backbone: give KEY[:WEIGHTS],...")
    return with_references(choices)


def fitting_size(backbone: str, image_size: int) -> int:
    """The size a probe of `backbone` runs at: the asked one, raised to the backbone's
    minimum; 0 is the backbone's own size."""
    return max(image_size, get_backbone(backbone).min_size) if image_size else 0


def submit_probes(ws: Workspace, project: str, dataset_id: str,
                  choices: Sequence[ProbeChoice], started_by: str | None = None,
                  start_worker: bool = True) -> list[Any]:
    """Queue one probe job per choice; an identical probe already stored is reused.
    Returns the jobs.Submission of each, in order."""
    from .jobs import submit_job

    return [submit_job(ws, project, dataset_id,
                       probe_spec(ProbeChoice(c.backbone, c.weights,
                                              fitting_size(c.backbone, c.image_size))),
                       kind=PROBE_KIND, started_by=started_by, start_worker=start_worker)
            for c in choices]


def probe_jobs(ws: Workspace, dataset_id: str, active_only: bool = False
               ) -> list[runs.RunRecord]:
    statuses = tuple(runs.ACTIVE) if active_only else (*runs.ACTIVE, RunStatus.COMPLETED)
    marks = ",".join("?" * len(statuses))
    rows = ws.query(f"SELECT id FROM runs WHERE dataset_id = ? AND kind = ? AND status IN "
                    f"({marks}) ORDER BY created_at", (dataset_id, PROBE_KIND, *statuses))
    return [runs.get_run(ws, row["id"]) for row in rows]


def probe_table(ws: Workspace, dataset_id: str, image_size: int | None = None,
                by: str = RANKED_BY) -> list[ProbeRow]:
    """The dataset's completed probes, best first by LogME evidence (`by` may also be
    "probe_accuracy" or "knn_accuracy"); one row per backbone, weights and size, the
    newest probe where several match. `image_size` keeps one size only."""
    if by not in ("evidence", "probe_accuracy", "knn_accuracy"):
        raise ValueError(f"probe_table ranks by evidence, probe_accuracy or knn_accuracy, "
                         f"not {by!r}")
    newest: dict[tuple[str, str, int], runs.RunRecord] = {}
    for run in probe_jobs(ws, dataset_id):
        if run.status != RunStatus.COMPLETED:
            continue
        if image_size is not None and run.spec.image_size != image_size:
            continue
        newest[(run.spec.backbone, run.spec.weights, run.spec.image_size)] = run
    rows = []
    for run in newest.values():
        summary = run.summary
        training = frozen_training(ws, dataset_id, run.spec)
        rows.append(ProbeRow(
            run_id=run.id, backbone=run.spec.backbone, weights=run.spec.weights,
            weights_label=weights_label(run.spec.weights), image_size=run.spec.image_size,
            probe_accuracy=float(summary["probe_accuracy"]),
            knn_accuracy=float(summary["knn_accuracy"]), evidence=float(summary["evidence"]),
            seconds=float(summary["seconds"]), n_images=int(summary["n_images"]),
            train_seconds=training.seconds if training else summary.get("train_seconds"),
            train_run_id=training.id if training else summary.get("train_run_id")))
    return sorted(rows, key=lambda row: getattr(row, by), reverse=True)
