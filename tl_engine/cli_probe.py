"""`python -m tl_engine probe ...`: which backbone will transfer, before training."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .cli_format import print_json as _print_json
from .cli_format import table as _table
from .runs import RunStatus
from .store import Workspace

JSON_KEYS = ("backbone", "weights", "image_size", "probe_accuracy", "knn_accuracy",
             "evidence", "seconds", "n_images", "train_seconds", "faster_than_training",
             "run_id")


def cmd_probe(args: argparse.Namespace) -> int:
    from .cli import _ingest, _ProgressBar
    from .jobs import wait_for_run
    from .probe import RANKED_BY, default_choices, parse_choices, probe_table, submit_probes

    ws = Workspace(args.workspace)
    choices = (parse_choices(args.backbones, args.image_size) if args.backbones
               else default_choices(args.image_size))
    if not choices:
        print("error: no backbone has its ImageNet weights on this host: name some with "
              "--backbones KEY[:none|FILE],...", file=sys.stderr)
        return 2
    dataset = _ingest(ws, args.data, args.project)
    project = dataset.project
    submissions = submit_probes(ws, project, dataset.id, choices, started_by=args.started_by)
    failed: list[Any] = []
    for choice, submission in zip(choices, submissions, strict=True):
        bar = _ProgressBar(enabled=not args.no_progress)
        bar.describe(choice.backbone)
        try:
            run = wait_for_run(ws, submission.run_id, on_update=bar)
        finally:
            bar.close()
        if run.status != RunStatus.COMPLETED:
            failed.append(run)
    wanted = {s.run_id for s in submissions}
    rows = [row for row in probe_table(ws, dataset.id) if row.run_id in wanted]
    if args.json:
        _print_json({"ranked_by": RANKED_BY, "dataset_id": dataset.id,
                     "rows": [{k: row.to_dict()[k] for k in JSON_KEYS} for row in rows]})
    else:
        shown = [{
            "backbone": row.backbone, "weights": row.weights_label,
            "size": row.image_size, "probe": f"{row.probe_accuracy:.3f}",
            "knn": f"{row.knn_accuracy:.3f}", "evidence": f"{row.evidence:.3f}",
            "seconds": f"{row.seconds:.1f}",
            "vs training": f"{row.faster_than_training:.0f}x faster"
            if row.faster_than_training else "",
        } for row in rows]
        print(_table(shown, list(shown[0])) if shown else "no probe completed")
        if rows:
            print(f"ranked by {RANKED_BY} (LogME), best first; {rows[0].n_images} images, "
                  "5-fold linear probe, leave-one-out 5-NN")
    for run in failed:
        print(f"error: probe {run.id} of {run.spec.backbone} ({run.spec.weights}) "
              f"{run.status}: {run.error or ''}", file=sys.stderr)
    return 1 if failed else 0


def add_probe_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "probe", parents=[common],
        help="score backbones on a dataset before training: linear probe, k-NN, LogME")
    p.add_argument("--data", required=True, help="folder of class folders, or a .zip of one")
    p.add_argument("--project", default="default")
    p.add_argument("--backbones", default="",
                   help="KEY[:WEIGHTS],... with WEIGHTS imagenet (default), none, a file's "
                        "name in $TL_WEIGHTS_DIR or a path; each gets its random-init "
                        "reference. Default: every backbone whose ImageNet weights are here.")
    p.add_argument("--image-size", type=int, default=0,
                   help="input size in px; 0 (default) is each backbone's own")
    p.add_argument("--started-by", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probe)
