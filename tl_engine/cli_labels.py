"""`python -m tl_engine label-issues ...`: likely mislabelled images of a folder or .zip."""

from __future__ import annotations

import argparse
import sys
from pathlib import PurePosixPath
from typing import Any

from .cli_format import print_json as _print_json
from .cli_format import table as _table
from .store import Workspace


def _relative(filename: str) -> str:
    """The file as a path relative to --data: a dataset keeps each file's path inside the
    folder (or the zip) it was read from, with forward slashes."""
    return str(PurePosixPath(filename))


def cmd_label_issues(args: argparse.Namespace) -> int:
    from .cli import _import_tensorflow_quietly, _ingest, _ProgressBar
    from .jobs import wait_for_run
    from .label_issues import label_issues_spec, submit_label_issues, suspects_of
    from .runs import RunStatus

    ws = Workspace(args.workspace)
    dataset = _ingest(ws, args.data, args.project)
    project = dataset.project
    spec = label_issues_spec(args.backbone, args.weights, args.image_size, args.seed)
    _import_tensorflow_quietly()
    submission = submit_label_issues(ws, project, dataset.id, spec, force=args.force)
    bar = _ProgressBar(enabled=not args.no_progress)
    try:
        run = wait_for_run(ws, submission.run_id, on_update=bar)
    finally:
        bar.close()
    if run.status != RunStatus.COMPLETED:
        print(f"error: label issues {run.id}: {run.status}"
              + (f": {run.error}" if run.error else ""), file=sys.stderr)
        return 1
    rows: list[dict[str, Any]] = [
        {"file": _relative(s.filename), "given": s.given, "suggested": s.suggested,
         "score": round(s.score, 4)}
        for s in suspects_of(run)
    ]
    if args.json:
        _print_json({"issues": rows, "run_id": run.id, "dataset_id": dataset.id,
                     "n_images": run.summary.get("n_images"),
                     "probe_accuracy": run.summary.get("probe_accuracy")})
    else:
        print(_table(rows, ["file", "given", "suggested", "score"]) if rows
              else "no likely label issues found")
        print(f"{len(rows)} of {run.summary.get('n_images')} images look mislabelled "
              f"(probe accuracy {run.summary.get('probe_accuracy', 0):.3f})")
    return 0


def add_label_issues_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("label-issues", parents=[common],
                       help="likely mislabelled images (confident learning on a linear probe)")
    p.add_argument("--data", required=True, help="folder of class folders, or a .zip of one")
    p.add_argument("--project", default="default")
    p.add_argument("--backbone", default="MobileNetV2-0.35")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet, none, or a weights file's name")
    p.add_argument("--image-size", type=int, default=0,
                   help="input size in pixels; 0: the backbone's default")
    p.add_argument("--seed", type=int, default=42, help="seed of the probe's folds")
    p.add_argument("--force", action="store_true", help="compute again even if identical")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_label_issues)
