"""`python -m tl_engine sweep ...` (which freeze strategy wins) and `lr-find ...` (the
learning-rate range test)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .cli_format import print_json as _print_json
from .cli_format import table as _table
from .runs import RunStatus
from .spec import STRATEGIES, RunSpec
from .store import Workspace

SWEEP_KEYS = ("strategy", "label", "weights", "unfreeze", "val_accuracy", "seconds", "run_id",
              "status")


def cmd_sweep(args: argparse.Namespace) -> int:
    from .cli import _ingest, _ProgressBar
    from .jobs import wait_for_run
    from .sweep import submit_sweep, sweep_result

    ws = Workspace(args.workspace)
    dataset = _ingest(ws, args.data, args.project)
    project = dataset.project
    base = RunSpec(backbone=args.backbone, image_size=args.image_size,
                   learning_rate=args.learning_rate, batch_size=args.batch_size)
    sweep_id = submit_sweep(ws, project, dataset.id, base, epochs=args.epochs,
                            started_by=args.started_by)
    for row in sweep_result(ws, sweep_id).rows:
        bar = _ProgressBar(enabled=not args.no_progress)
        bar.describe(row.label)
        try:
            wait_for_run(ws, row.run_id, on_update=bar)
        finally:
            bar.close()
    result = sweep_result(ws, sweep_id)
    failed = [row for row in result.rows if row.status != RunStatus.COMPLETED]
    if args.json:
        winner = result.winner
        _print_json({"sweep_id": sweep_id, "backbone": result.backbone,
                     "dataset_id": dataset.id, "winner": winner.run_id if winner else None,
                     "gain_points": result.gain_points,
                     "rows": [{k: row.to_dict()[k] for k in SWEEP_KEYS} for row in result.rows]})
    else:
        winner = result.winner
        shown = [{
            "": "★" if winner and row.run_id == winner.run_id else "",
            "strategy": row.label, "weights": row.weights,
            "val_accuracy": "" if row.val_accuracy is None else f"{row.val_accuracy:.3f}",
            "seconds": "" if row.seconds is None else f"{row.seconds:.1f}",
            "run_id": row.run_id, "status": row.status,
        } for row in result.rows]
        print(_table(shown, list(shown[0])))
        if result.sentence:
            print(result.sentence)
    for row in failed:
        print(f"error: {row.label} ({row.run_id}) {row.status}", file=sys.stderr)
    return 1 if failed else 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from .cli import _ingest, _ProgressBar
    from .jobs import wait_for_run
    from .lr_find import submit_lr_find
    from .sweep import depths

    ws = Workspace(args.workspace)
    dataset = _ingest(ws, args.data, args.project)
    project = dataset.project
    unfreeze = args.unfreeze or depths(args.backbone, args.image_size)[0]
    spec = RunSpec(backbone=args.backbone, image_size=args.image_size,
                   strategy=args.strategy, unfreeze=unfreeze, unfreeze_unit="blocks",
                   batch_size=args.batch_size)
    submission = submit_lr_find(ws, project, dataset.id, spec, started_by=args.started_by)
    bar = _ProgressBar(enabled=not args.no_progress)
    bar.describe("lr-find")
    try:
        run = wait_for_run(ws, submission.run_id, on_update=bar)
    finally:
        bar.close()
    if run.status != RunStatus.COMPLETED:
        print(f"error: range test {run.id} {run.status}: {run.error or ''}", file=sys.stderr)
        return 1
    summary = run.summary
    if args.json:
        _print_json({"suggested_lr": summary["suggested_lr"],
                     "suggested_by": summary["suggested_by"],
                     "minimum_div10_lr": summary["minimum_div10_lr"],
                     "phase": summary["phase"], "run_id": run.id,
                     "points": summary["points"]})
    else:
        print(f"suggested learning rate {summary['suggested_lr']:.2g} "
              f"({summary['suggested_by']}; minimum ÷ 10: "
              f"{summary['minimum_div10_lr']:.2g}), from {summary['steps']} steps of "
              f"{summary['phase_title'].lower()} ({summary['trainable']})")
    return 0


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder of class folders, or a .zip of one")
    p.add_argument("--backbone", required=True, help="a key from `backbones`")
    p.add_argument("--image-size", type=int, default=0,
                   help="input size in px; 0 (default) is the backbone's own")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--project", default="default")
    p.add_argument("--started-by", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")


def add_sweep_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "sweep", parents=[common],
        help="train one backbone with every freeze strategy and from scratch; compare them")
    _common_options(p)
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per strategy (default 10); head-first recipes train half "
                        "as many head epochs before fine-tuning")
    p.add_argument("--learning-rate", type=float, default=1e-3,
                   help="the head's rate; pretrained layers fine-tune at a tenth of it")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "lr-find", parents=[common],
        help="learning-rate range test: loss against an exponentially rising rate")
    _common_options(p)
    p.add_argument("--strategy", default="frozen", choices=STRATEGIES,
                   help="the test trains this strategy's first phase")
    p.add_argument("--unfreeze", type=int, default=0,
                   help="blocks that train with partial (default: the sweep's shallow depth)")
    p.set_defaults(func=cmd_lr_find)
