"""Which strategy wins: one backbone trained with every freeze strategy, and from scratch.

A sweep is a group of ordinary training runs: frozen, partial at two depths, full,
two-phase and gradual unfreezing from pretrained weights, plus the same network from
random weights (full training) as the baseline. Each is queued with `submit_run`, so a
run already in the store (the same settings on the same images) is reused, not trained
again. The group itself is a few rows in the `sweep_runs` table; the runs stay ordinary
runs that every page lists and compares.

Learning rates: the head learns at the draft's rate (1e-3 by default); whatever trains
pretrained layers learns at a tenth of it (partial and full at rate × 0.1, two-phase and
gradual with fine_tune_lr_factor 0.1), gentle enough not to overwrite what ImageNet
taught. The from-scratch baseline trains everything at the head's rate: from random
weights there is nothing to protect.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .access import apply_schema
from .errors import NotFound, TLError
from .freeze import describe_freeze
from .registry import get_backbone
from .runs import RunStatus, get_run
from .spec import RunSpec
from .store import Workspace

FINE_TUNE_FACTOR = 0.1  # fine-tuning rate = the head's rate × this
SCRATCH = "scratch"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    dataset_id TEXT NOT NULL,
    backbone TEXT NOT NULL,
    entry TEXT NOT NULL,
    label TEXT NOT NULL,
    run_id TEXT NOT NULL,
    started_by TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (sweep_id, position)
);
CREATE INDEX IF NOT EXISTS sweep_runs_by_project ON sweep_runs (project, created_at);
"""


@dataclass(frozen=True)
class SweepEntry:
    """One row a sweep fills: its key ("frozen", "partial-2", "scratch"), a label for
    people and the spec it trains."""

    key: str
    label: str
    spec: RunSpec


@dataclass(frozen=True)
class SweepRow:
    key: str
    label: str
    strategy: str
    weights: str
    unfreeze: int
    run_id: str
    status: str
    val_accuracy: float | None
    seconds: float | None

    @property
    def baseline(self) -> bool:
        return self.key == SCRATCH

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SweepResult:
    sweep_id: str
    project: str
    dataset_id: str
    backbone: str
    created_at: float
    rows: tuple[SweepRow, ...]
    epochs: int | None = None  # per strategy; None once every run is deleted
    started_by: str | None = None

    @property
    def active(self) -> bool:
        return any(row.status in (RunStatus.QUEUED, RunStatus.RUNNING) for row in self.rows)

    @property
    def winner(self) -> SweepRow | None:
        """The completed pretrained row with the best validation accuracy (the faster one
        on a tie); None until one has completed."""
        done = [r for r in self.rows if not r.baseline and r.val_accuracy is not None]
        return max(done, key=lambda r: (r.val_accuracy, -(r.seconds or 0.0)), default=None)

    @property
    def baseline(self) -> SweepRow | None:
        return next((r for r in self.rows if r.baseline), None)

    @property
    def gain_points(self) -> float | None:
        """Percentage points the winner scores above the from-scratch baseline."""
        winner, baseline = self.winner, self.baseline
        if winner is None or baseline is None or baseline.val_accuracy is None:
            return None
        return 100.0 * (winner.val_accuracy - baseline.val_accuracy)  # type: ignore[operator]

    @property
    def sentence(self) -> str | None:
        gain = self.gain_points
        if gain is None:
            return None
        winner = self.winner
        assert winner is not None
        return (f"Transfer learning bought {gain:+.1f} points over training from scratch "
                f"({winner.label}: {winner.val_accuracy:.1%} against "
                f"{self.baseline.val_accuracy:.1%}).")  # type: ignore[union-attr]

    def to_dict(self) -> dict[str, Any]:
        winner = self.winner
        return {"sweep_id": self.sweep_id, "backbone": self.backbone,
                "dataset_id": self.dataset_id, "epochs": self.epochs,
                "started_by": self.started_by, "rows": [r.to_dict() for r in self.rows],
                "winner": winner.key if winner else None, "gain_points": self.gain_points,
                "sentence": self.sentence}


def depths(backbone: str, image_size: int = 0) -> tuple[int, int]:
    """Two depths of partial fine-tuning, in blocks from the top: a shallow one (about an
    eighth of the backbone's blocks) and a deep one (about a third). The registry knows
    the blocks, so nothing is built (`image_size` does not change them)."""
    blocks = get_backbone(backbone).block_count or len(
        describe_freeze(backbone, 0, "blocks", image_size).blocks)
    shallow = max(1, round(blocks / 8))
    return shallow, max(shallow + 1, round(blocks / 3))


def sweep_entries(base: RunSpec | Mapping[str, Any], epochs: int | None = None,
                  ) -> list[SweepEntry]:
    """The specs a sweep trains, from a draft's settings (its backbone, head, input size,
    hyper-parameters): `epochs` per strategy (the draft's when None); head-first recipes
    get half as many head epochs before they fine-tune."""
    spec = base if isinstance(base, RunSpec) else RunSpec.from_dict(dict(base))
    epochs = int(epochs or spec.epochs)
    rate = spec.learning_rate
    shallow, deep = depths(spec.backbone, spec.image_size)
    pretrained = spec.weights if spec.weights != "none" else "imagenet"
    common = dataclasses.replace(spec, weights=pretrained, epochs=epochs,
                                 unfreeze_unit="blocks", lr_decay=1.0)
    head_epochs = max(1, epochs // 2)

    def entry(key: str, label: str, **changes: Any) -> SweepEntry:
        return SweepEntry(key, label, dataclasses.replace(common, **changes).normalized())

    return [
        entry("frozen", "Frozen backbone", strategy="frozen"),
        entry(f"partial-{shallow}", f"Partial: top {shallow} blocks", strategy="partial",
              unfreeze=shallow, learning_rate=rate * FINE_TUNE_FACTOR),
        entry(f"partial-{deep}", f"Partial: top {deep} blocks", strategy="partial",
              unfreeze=deep, learning_rate=rate * FINE_TUNE_FACTOR),
        entry("full", "Full fine-tune", strategy="full", learning_rate=rate * FINE_TUNE_FACTOR),
        entry("two-phase", f"Two-phase: head, then top {deep} blocks", strategy="two-phase",
              unfreeze=deep, head_epochs=head_epochs, fine_tune_lr_factor=FINE_TUNE_FACTOR),
        entry("gradual", f"Gradual: head, then 1…{shallow + 1} blocks", strategy="gradual",
              unfreeze=shallow + 1, head_epochs=head_epochs, epochs_per_stage=1,
              fine_tune_lr_factor=FINE_TUNE_FACTOR),
        entry(SCRATCH, "From scratch (random weights)", strategy="full", weights="none"),
    ]


def _ensure_schema(ws: Workspace) -> None:
    if not ws.read_only:
        apply_schema(ws, SCHEMA)


def submit_sweep(ws: Workspace, project: str, dataset_id: str,
                 base: RunSpec | Mapping[str, Any], epochs: int | None = None,
                 started_by: str | None = None, start_worker: bool = True) -> str:
    """Queue every run of a sweep (reusing stored ones) and record them as one group;
    returns the sweep's id."""
    from .jobs import submit_run

    entries = sweep_entries(base, epochs)
    _ensure_schema(ws)
    submissions = [submit_run(ws, project, dataset_id, e.spec, started_by=started_by,
                              start_worker=False) for e in entries]
    sweep_id = "s" + uuid.uuid4().hex[:10]
    now = time.time()
    with ws.transaction() as db:
        db.executemany(
            "INSERT INTO sweep_runs (sweep_id, position, project, dataset_id, backbone, "
            "entry, label, run_id, started_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(sweep_id, i, project, dataset_id, e.spec.backbone, e.key, e.label, s.run_id,
              started_by, now) for i, (e, s) in enumerate(zip(entries, submissions,
                                                                strict=True))])
    if start_worker:
        from .jobs import ensure_worker

        ensure_worker(ws)
    return sweep_id


def _rows(ws: Workspace, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
    try:
        return ws.query(sql, params)
    except (sqlite3.Error, TLError):  # a read-only index made before sweeps existed
        return []


def list_sweeps(ws: Workspace, project: str, dataset_id: str | None = None) -> list[str]:
    """The project's sweeps (on one dataset, when given), newest first."""
    return [h.sweep_id for h in sweep_headers(ws, project)
            if dataset_id is None or h.dataset_id == dataset_id]


@dataclass(frozen=True)
class SweepHeader:
    """What tells a sweep apart in a list, read without its runs."""

    sweep_id: str
    dataset_id: str
    backbone: str
    created_at: float


def sweep_headers(ws: Workspace, project: str) -> list[SweepHeader]:
    """The project's sweeps, newest first, in one query."""
    _ensure_schema(ws)
    rows = _rows(ws, "SELECT sweep_id, dataset_id, backbone, MAX(created_at) AS at "
                 "FROM sweep_runs WHERE project = ? GROUP BY sweep_id ORDER BY at DESC",
                 (project,))
    return [SweepHeader(r["sweep_id"], r["dataset_id"], r["backbone"], r["at"]) for r in rows]


def sweep_result(ws: Workspace, sweep_id: str) -> SweepResult:
    """The sweep's rows as they stand now, in the order they were queued."""
    _ensure_schema(ws)
    members = _rows(ws, "SELECT * FROM sweep_runs WHERE sweep_id = ? ORDER BY position",
                    (sweep_id,))
    if not members:
        raise NotFound(f"Sweep {sweep_id!r} is not in workspace {ws.root}.")
    rows = []
    epochs: int | None = None
    for member in members:
        try:
            run = get_run(ws, member["run_id"])
        except NotFound:  # deleted since
            rows.append(SweepRow(member["entry"], member["label"], "", "", 0,
                                 member["run_id"], "deleted", None, None))
            continue
        epochs = epochs or run.spec.epochs  # every entry has the sweep's epochs
        done = run.status == RunStatus.COMPLETED
        rows.append(SweepRow(member["entry"], member["label"], run.spec.strategy,
                             run.spec.weights, run.spec.unfreeze, run.id, str(run.status),
                             run.val_accuracy if done else None,
                             run.seconds if done else None))
    first = members[0]
    return SweepResult(sweep_id, first["project"], first["dataset_id"], first["backbone"],
                       first["created_at"], tuple(rows), epochs, first["started_by"])


def sweep_run_ids(result: SweepResult) -> Sequence[str]:
    return [row.run_id for row in result.rows if row.status != "deleted"]
