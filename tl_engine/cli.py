"""`python -m tl_engine ...`: the engine headless, the same calls the dashboard makes."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import spec as spec_table
from .cli_explain import add_explain_parser
from .cli_format import print_json as _print_json
from .cli_format import table as _table
from .cli_labels import add_label_issues_parser
from .cli_probe import add_probe_parser
from .cli_sweep import add_sweep_parser
from .cli_users import add_users_parser
from .errors import SpecError, TLError
from .phases import phases, planned_epochs
from .runs import DEFAULT_KIND, RunRecord, RunStatus, trained_so_far
from .spec import DEFAULT_NOT_SURE_BELOW, RunSpec
from .store import INDEX_FILE, Workspace, folder_records, resolve_workspace


def _import_tensorflow_quietly() -> None:
    """TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL: keep them off the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cmd_backbones(args: argparse.Namespace) -> int:
    from .registry import list_backbones
    from .weights import weights_status

    rows = [
        {
            "key": b.key,
            "parameters": b.params,
            "default_size": b.default_size,
            "min_size": b.min_size,
            "preprocessing": b.preprocessing,
            "imagenet_top1": b.imagenet_top1,
            "weights_file": b.weights_file,
            "weights": weights_status(b),
        }
        for b in list_backbones()
    ]
    if args.json:
        _print_json(rows)
    else:
        print(_table(rows, ["key", "parameters", "default_size", "imagenet_top1", "weights"]))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .datasets import check_health

    report = check_health(args.data)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(f"{report.n_images} images in {report.n_classes} classes")
        for label, info in report.classes.items():
            print(f"  {label}: {info['count']}")
        _print_data_notes(report.to_dict(), sys.stdout, unreadable_shown=UNREADABLE_LISTED)
        for error in report.errors:
            print(f"  error: {error}")
    return 0 if report.ok else 2


# A text listing names this many unreadable files, then counts the rest (--json has all).
UNREADABLE_LISTED = 50
# `train` names the first few before it waits: the rest are in --json and check-data.
UNREADABLE_NAMED = 5


def _print_data_notes(report: dict[str, Any], stream: Any, unreadable_shown: int) -> None:
    """The data's unreadable files (the first `unreadable_shown`) and its warnings."""
    unreadable = report.get("unreadable") or []
    for item in unreadable[:unreadable_shown]:
        print(f"  unreadable: {item['file']}: {item['reason']}", file=stream)
    if len(unreadable) > unreadable_shown:
        print(f"  unreadable: … and {len(unreadable) - unreadable_shown} more (--json and "
              "check-data list every one)", file=stream)
    for warning in report.get("warnings") or []:
        print(f"  warning: {warning}", file=stream)


def _ingest(ws: Workspace, data: str, project: str,
            once_listed: Callable[[], None] | None = None) -> Any:
    """The dataset of --data in `project`, which is made only once the data is accepted
    (data refused leaves no empty project). `once_listed` is called once the files are
    listed and laid out right, before they are decoded."""
    from .datasets import ingest_folder, ingest_zip

    def progress(done: int, total: int) -> None:
        nonlocal once_listed
        if once_listed is not None:
            once_listed, call = None, once_listed
            call()

    path = Path(data).expanduser()
    if path.is_dir():
        return ingest_folder(ws, path, project=project, progress=progress)
    if path.is_file():
        return ingest_zip(ws, path, project=project, progress=progress)
    raise TLError(f"--data {data}: no such folder or .zip file.")


def add_spec_options(parser: argparse.ArgumentParser) -> None:
    """One option per run setting, generated from the spec's field table."""
    group = parser.add_argument_group("run settings")
    for name, setting in spec_table.settings():
        kind = spec_table.value_type(name)
        default = spec_table.default(name)
        where = (f" Applies to: {', '.join(setting.strategies)}." if setting.strategies
                 else "")
        text = (setting.help + where).replace("%", "%%")
        option = spec_table.flag(name)
        if kind is bool:
            group.add_argument(option, dest=name, action=argparse.BooleanOptionalAction,
                               default=default, help=text)
        elif kind is tuple:
            group.add_argument(option, dest=name, nargs="?", default="",
                               const=",".join(setting.bare or setting.choices),
                               metavar=",".join(setting.choices),
                               help=f"{text} Bare: {','.join(setting.bare or ())}.")
        elif setting.choices:
            group.add_argument(option, dest=name, default=default, choices=setting.choices,
                               help=text)
        else:
            group.add_argument(option, dest=name, type=kind, default=default,
                               help=f"{text} Default: {default}.")


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    values = {name: getattr(args, name) for name, _ in spec_table.settings()}
    for name, _ in spec_table.settings():
        if spec_table.value_type(name) is tuple:
            values[name] = tuple(v.strip() for v in values[name].split(",") if v.strip())
    return RunSpec(**values)


class _ProgressBar:
    """tqdm on stderr, following the run's progress in the store."""

    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        self.phase: str | None = None
        if enabled:  # tqdm imported only then: --no-progress and --json start faster
            from tqdm import tqdm

            self.bar = tqdm(total=1000, file=sys.stderr,
                            bar_format="{desc} {bar} {percentage:3.0f}% [{elapsed}<{remaining}]")

    def __call__(self, run: Any) -> None:
        if self.bar is None:
            return
        progress = run.progress
        if progress.phase != self.phase and run.status == RunStatus.RUNNING:
            self.phase = progress.phase
            self.bar.reset()  # each phase (features, head, fine-tune) has its own bar
        if run.status == RunStatus.QUEUED:
            self.bar.set_description_str(RunStatus.QUEUED)
        else:
            phase = progress.phase if progress.phase is not None else run.status
            epoch = progress.epoch
            label = f"{phase} epoch {epoch}/{progress.epochs}" if epoch else phase
            if progress.pass_name:
                label += f": {progress.pass_name}"
            acc = (progress.logs or {}).get("accuracy")
            self.bar.set_description_str(label + (f" acc {acc:.3f}" if acc is not None else ""))
        target = int(1000 * float(progress.fraction or 0))
        if run.status == RunStatus.COMPLETED:
            target = 1000
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)

    def describe(self, text: str) -> None:
        """Label the bar (a probe's backbone, a sweep's row) until the run labels it."""
        if self.bar is not None:
            self.bar.set_description_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_train(args: argparse.Namespace) -> int:
    from .jobs import prewarm_worker, submit_run, wait_for_run

    spec = spec_from_args(args).normalized()  # bad settings: refused before anything is made
    ws = Workspace(args.workspace)
    # The worker imports TensorFlow while the photos are decoded; not started for a
    # --data that is not there or not laid out in class folders.
    dataset = _ingest(ws, args.data, args.project, once_listed=lambda: prewarm_worker(ws))
    if not args.json:  # what was left out of the data, said before the wait, not after
        _print_data_notes(dataset.report, sys.stderr, unreadable_shown=UNREADABLE_NAMED)
    project = dataset.project
    submission = submit_run(ws, project, dataset.id, spec, force=args.force,
                            started_by=args.started_by)
    bar = _ProgressBar(enabled=not args.no_progress)
    try:
        run = wait_for_run(ws, submission.run_id, on_update=bar, poll_s=0.1)
    except KeyboardInterrupt:
        run = None
    finally:
        bar.close()
    if run is None:
        return _left_training(ws, submission.run_id, args.json)
    summary = run.result
    epochs_run = summary.epochs_run
    if epochs_run is None:  # stopped before its end (cancelled, failed): what it trained
        from .runs import trained_so_far

        epochs_run = trained_so_far(ws, run).epochs or 0
    result = {
        "run_id": run.id,
        "status": run.status,
        "cached": submission.cached,
        "dataset_id": dataset.id,
        "val_accuracy": summary.val_accuracy,
        "epochs_run": epochs_run,
        "best_epoch": summary.best_epoch,
        "final_val_accuracy": summary.final_val_accuracy,
        "seconds": summary.seconds,
        "model_path": summary.model_path,
        "features_computed": summary.features_computed,
        "features_reused": summary.features_reused,
        "device": summary.device,
        "error": run.error,
    }
    if summary.activations_computed is not None:
        result["activations_computed"] = summary.activations_computed
        result["activations_reused"] = summary.activations_reused
    if summary.notes:
        result["notes"] = list(summary.notes)
    # Files of --data left out (each with its reason) and what to know about the rest.
    result["unreadable"] = list(dataset.report.get("unreadable") or [])
    result["data_warnings"] = list(dataset.report.get("warnings") or [])
    if args.json:
        _print_json(result)
    else:
        cached = " (cached: identical run already stored)" if submission.cached else ""
        print(f"run {run.id}: {run.status}{cached}")
        if run.status == RunStatus.COMPLETED:
            print(f"val accuracy {result['val_accuracy']:.4f} after {result['epochs_run']} "
                  f"epochs, model at {result['model_path']}")
            if summary.restored_best and result["final_val_accuracy"] is not None:
                print(f"the model holds epoch {result['best_epoch']}'s weights (best validation "
                      f"accuracy); the last epoch validated at "
                      f"{result['final_val_accuracy']:.4f}")
        elif run.error:
            print(f"error: {run.error}", file=sys.stderr)
    return 0 if run.status == RunStatus.COMPLETED else 1


def _left_training(ws: Workspace, run_id: str, as_json: bool) -> int:
    """Ctrl-C while waiting: the run goes on in its worker; say which, and how to stop it."""
    from .runs import get_run

    status = get_run(ws, run_id).status
    if as_json:
        _print_json({"run_id": run_id, "status": status, "waiting": False})
    if status in (RunStatus.QUEUED, RunStatus.RUNNING):
        going_on = "keeps training" if status == RunStatus.RUNNING else "will train"
        print(f"interrupted: run {run_id} is {status} and {going_on} in its worker; stop it "
              f"with: python -m tl_engine cancel --run {run_id} --workspace "
              f"{shlex.quote(str(ws.root))}", file=sys.stderr)
    else:
        print(f"interrupted: run {run_id} is {status}", file=sys.stderr)
    return 130


def cmd_plan(args: argparse.Namespace) -> int:
    from .phases import phases

    spec = spec_from_args(args).normalized()
    rows = [{"phase": p.name, "epochs": p.epochs, "trains": p.trainable_text,
             "learning_rate": spec.learning_rate * p.lr_factor,
             "lr_per_block_down": p.lr_decay, "cached_features": p.cached_features,
             "cached_activations": p.cached_activations, "pixels_reason": p.pixels_reason}
            for p in phases(spec)]
    if args.json:
        _print_json({"spec": spec.to_dict(), "phases": rows})
    else:
        print(_table(rows, list(rows[0])))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from .jobs import recover_interrupted
    from .runs import list_runs

    ws = Workspace(args.workspace)
    recover_interrupted(ws)
    records = list_runs(ws, args.project)
    if args.json:
        _print_json([r.to_dict() for r in records])
        return 0
    rows = [
        {"run_id": r.id, "project": r.project, "backbone": r.spec.backbone,
         "strategy": r.spec.strategy, "status": r.status,
         "val_accuracy": f"{r.val_accuracy:.4f}" if r.val_accuracy is not None else "",
         "epochs": _epochs_shown(ws, r)}
        for r in records
    ]
    print(_table(rows, ["run_id", "project", "backbone", "strategy", "status",
                        "val_accuracy", "epochs"]) if rows else "no runs yet")
    return 0


def _epochs_shown(ws: Workspace, run: RunRecord) -> str:
    """A finished run's epochs; for one that stopped early or still runs, the epochs it
    has recorded so far."""
    if run.epochs_run:
        return str(run.epochs_run)
    if run.kind != DEFAULT_KIND:
        return ""
    so_far = trained_so_far(ws, run).epochs
    return f"{so_far} of {planned_epochs(phases(run.spec))}" if so_far else ""


def cmd_predict(args: argparse.Namespace) -> int:
    from .model_file import checked_model_path
    from .predict import predict_images

    if args.top_k < 1:
        raise SpecError(f"--top-k must be at least 1 (classes shown per image), not {args.top_k}.")
    if not 0 <= args.not_sure_below <= 1:
        raise SpecError(f"--not-sure-below is a confidence from 0 to 1 (0: never 'not sure'), "
                        f"not {args.not_sure_below}.")
    ws = Workspace(args.workspace)
    # A wrong run id or a damaged model file fails before TensorFlow loads.
    checked_model_path(ws, args.run)
    _import_tensorflow_quietly()
    predictions = predict_images(ws, args.run, args.images, top_k=args.top_k,
                                 not_sure_below=args.not_sure_below)
    # Each row names the path as given (one per image, in order): two files of the same
    # name in different folders stay apart.
    if args.json:
        _print_json([{**p.to_dict(), "image": given}
                     for p, given in zip(predictions, args.images, strict=True)])
    else:
        for p, given in zip(predictions, args.images, strict=True):
            if p.error:
                print(f"{given}: error: {p.error}")
            else:
                tops = ", ".join(f"{label} {prob:.3f}" for label, prob in p.top)
                if p.unfamiliar:
                    tops = (f"unfamiliar (familiarity {p.familiarity:.3f}): looks like none "
                            f"of the training images; closest {tops}")
                elif p.not_sure:
                    tops = f"not sure (below {args.not_sure_below:g}): {tops}"
                print(f"{given}: {tops}")
    return 2 if any(p.error for p in predictions) else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run
    from .runs import model_path

    ws = Workspace(args.workspace)
    model_path(ws, args.run)
    _import_tensorflow_quietly()
    path = export_run(ws, args.run, args.format, args.out, overwrite=args.force)
    print(path)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from .jobs import cancel_run, recover_interrupted
    from .runs import get_run

    ws = Workspace(args.workspace)
    recover_interrupted(ws)  # a run whose worker died is interrupted, not cancellable
    before = get_run(ws, args.run)
    after = cancel_run(ws, args.run)
    if after == RunStatus.RUNNING:
        said, code = f"run {args.run}: cancel requested; it stops within a batch or two", 0
    elif after == RunStatus.CANCELLED and before.status == RunStatus.QUEUED:
        said, code = (f"run {args.run}: cancelled before it started"
                      + (" again (what its earlier attempts trained is kept)"
                         if before.earlier_seconds else "")), 0
    else:
        said, code = f"run {args.run} is already {after}: nothing to cancel", 1
    if args.json:
        _print_json({"run_id": args.run, "status": after, "cancel_requested": code == 0,
                     "message": said})
    else:
        print(said)
    return code


def cmd_resume(args: argparse.Namespace) -> int:
    from .jobs import resume_run, wait_for_run

    ws = Workspace(args.workspace)
    resume_run(ws, args.run)
    run = wait_for_run(ws, args.run) if args.wait else None
    status = run.status if run else RunStatus.QUEUED
    if args.json:
        # As `train --json`: the run's result once it is waited for.
        _print_json({**(run.result.to_dict() if run else {}), "run_id": args.run,
                     "status": status, "error": run.error if run else None})
    else:
        print(status)
    if run is not None and run.status != RunStatus.COMPLETED:
        if run.error and not args.json:
            print(f"error: {run.error}", file=sys.stderr)
        return 1  # as `train`: a script tells a run that failed again from one that finished
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .job_kinds import warm_up_worker
    from .jobs import WORKER_NICENESS, worker_idle_seconds, worker_main

    # Training takes every core it gets; a lower priority keeps the pages that people are
    # clicking through (the web server) responsive meanwhile.
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    worker_main(Workspace(args.workspace), idle_s=worker_idle_seconds(),
                warm_up=warm_up_worker)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import DoctorReport, check_workspace, repair_workspace
    from .store import repair_command, resolve_workspace

    root = resolve_workspace(args.workspace)
    report = repair_workspace(root) if args.repair else DoctorReport(root, check_workspace(root))
    if args.json:
        _print_json(report.to_dict())
    else:
        for line in report.repairs:
            print(f"repaired: {line}")
        for problem in report.problems:
            print(f"problem: {problem.message}")
        if report.healthy:
            print(f"workspace {report.root} is healthy")
        elif not args.repair:
            print(f"{len(report.problems)} problem(s); repair with: {repair_command(root)}")
        else:
            print(f"{len(report.problems)} problem(s) remain after the repair")
    return 0 if report.healthy else 1


def cmd_backup(args: argparse.Namespace) -> int:
    from .doctor import backup_index

    print(backup_index(Workspace(args.workspace), args.out, force=args.force))
    return 0



# --- accounts (TL_AUTH=accounts) ---------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", default=argparse.SUPPRESS,
                        help="workspace folder (default $TL_WORKSPACE or ./workspace)")
    parser = _Parser(prog="python -m tl_engine", parents=[common],
                     description="Transfer Learning Studio engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backbones", parents=[common], help="list backbones and their weights")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("check-data", parents=[common], help="health report of a folder or zip")
    p.add_argument("--data", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser("train", parents=[common], help="train (or reuse) a run and wait for it")
    p.add_argument("--data", required=True, help="folder of class folders, or a .zip of one")
    p.add_argument("--project", default="default")
    add_spec_options(p)
    p.add_argument("--force", action="store_true", help="train again even if identical")
    p.add_argument("--started-by", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", parents=[common],
                       help="the phases a run's settings train in, without training")
    add_spec_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("runs", parents=[common], help="list runs")
    p.add_argument("--project", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs, needs_workspace=True)

    p = sub.add_parser("predict", parents=[common], help="top-k classes for images")
    p.add_argument("--run", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--not-sure-below", type=float, default=DEFAULT_NOT_SURE_BELOW,
                   metavar="P", help="call a prediction 'not sure' when its calibrated "
                   f"confidence is below P (default {DEFAULT_NOT_SURE_BELOW}; 0: never)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict, needs_workspace=True)

    p = sub.add_parser("export", parents=[common], help="export a completed run")
    p.add_argument("--run", required=True)
    p.add_argument("--format", required=True,
                   choices=("keras", "savedmodel", "tflite", "tflite-quant", "labels", "card"))
    p.add_argument("--out", required=True, help="where to write it, outside the workspace")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_export, needs_workspace=True)

    p = sub.add_parser("cancel", parents=[common], help="cancel a queued or running run")
    p.add_argument("--run", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cancel, needs_workspace=True)

    p = sub.add_parser("resume", parents=[common], help="resume an interrupted run")
    p.add_argument("--run", required=True)
    p.add_argument("--wait", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_resume, needs_workspace=True)

    p = sub.add_parser("doctor", parents=[common],
                       help="check the workspace; --repair rebuilds a damaged index")
    p.add_argument("--repair", action="store_true",
                   help="move a damaged index aside and rebuild it from the folders, add "
                        "missing rows, mark runs without a worker interrupted")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("backup", parents=[common],
                       help="a consistent copy of the index, safe while a worker trains")
    p.add_argument("--out", required=True, help="the backup file, outside the workspace")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_backup, needs_workspace=True)

    add_label_issues_parser(sub, common)
    add_users_parser(sub, common)
    add_probe_parser(sub, common)
    add_explain_parser(sub, common)
    add_sweep_parser(sub, common)

    p = sub.add_parser("worker", parents=[common], help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)
    return parser


def require_workspace(args: argparse.Namespace) -> None:
    """Commands that read or act on what a workspace holds refuse a folder without one,
    rather than make a new, empty workspace at a mistyped path and report it empty."""
    root = resolve_workspace(args.workspace)
    # Runs or datasets without their index: opening the workspace names the repair.
    if (root / INDEX_FILE).is_file() or folder_records(root) is not None:
        return
    raise TLError(f"No workspace at {root}: check --workspace (or $TL_WORKSPACE). "
                  "`train` starts a new one.")


def _refused(args: argparse.Namespace, message: str) -> int:
    """A command refused for its input: the message on stderr, and with --json also as the
    last stdout line, so a script that reads that line learns why."""
    print(f"error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        _print_json({"error": message, "exit_code": 2})
    return 2


class _Usage(Exception):
    """Arguments argparse refused; the message names the command and the problem."""


class _Parser(argparse.ArgumentParser):
    """argparse whose refusals reach main() (subcommands' parsers are of this class too),
    which also ends stdout with the JSON error line when --json was given."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise _Usage(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(words)
    except _Usage as exc:
        return _refused(argparse.Namespace(json="--json" in words), str(exc))
    if not hasattr(args, "workspace"):
        args.workspace = None
    try:
        if getattr(args, "needs_workspace", False):
            require_workspace(args)
        return int(args.func(args))
    except TLError as exc:
        return _refused(args, str(exc))
    except PermissionError as exc:  # a read-only workspace or --out folder
        return _refused(args, f"cannot write {exc.filename or ''}: permission denied")
    except KeyboardInterrupt:
        print("interrupted: a started run keeps training in its worker", file=sys.stderr)
        return 130
