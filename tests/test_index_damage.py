"""A damaged, lost or read-only index: named as such, never silently replaced, rebuilt
from the run and dataset folders by `doctor --repair`, backed up while a worker writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import tl_engine as tle
from tl_engine import jobs
from tl_engine.cli import main as cli_main
from tl_engine.doctor import check_workspace, repair_workspace

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REPAIR = "doctor --repair --workspace"
LONG_TINY = {"backbone": "MobileNetV2-0.35", "weights": "none", "image_size": 32,
             "batch_size": 4, "learning_rate": 0.01, "epochs": 500}


def _cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "tl_engine", *args],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _copy(ws: tle.Workspace, target: Path) -> Path:
    shutil.copytree(ws.root, target)
    return target


def _state(root: Path, run_id: str, dataset_id: str) -> dict:
    ws = tle.Workspace(root)
    run = tle.get_run(ws, run_id)
    dataset = tle.load_dataset(ws, dataset_id)
    return {
        "projects": ws.list_projects(),
        "dataset": (dataset.project, dataset.name, dataset.content_hash, dataset.classes,
                    dataset.records, dataset.report, dataset.created_at),
        "run": (run.project, run.dataset_id, run.spec, run.cache_key, run.status,
                run.started_by, run.created_at, run.started_at, run.finished_at, run.error),
        "summary": run.summary,
        "metrics": tle.run_metrics(ws, run_id),
    }


def _half_of(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


DAMAGES = {
    "empty": lambda index: b"",
    "garbage": lambda index: bytes(range(256)) * 64,
    "half-written": _half_of,
}


# --- what each run folder keeps ----------------------------------------------------
def test_run_folder_keeps_its_row_and_metrics(trained_workspace):
    ws, dataset, run = trained_workspace
    folder = ws.run_dir(run.id)
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "completed" and record["summary"] == run.summary
    assert (record["id"], record["project"], record["dataset_id"], record["cache_key"]) == (
        run.id, run.project, run.dataset_id, run.cache_key)
    assert tle.RunSpec.from_dict(record["spec"]) == run.spec
    assert (record["created_at"], record["started_at"], record["finished_at"]) == (
        run.created_at, run.started_at, run.finished_at)

    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [{"epoch": m["epoch"], "phase": m["phase"], **m["values"]} for m in lines] == (
        tle.run_metrics(ws, run.id))
    assert len(lines) == 3

    projects = json.loads((ws.root / "projects.json").read_text())["projects"]
    assert [p["name"] for p in projects] == ["demo"]
    manifest = json.loads((ws.dataset_dir(dataset.id) / "manifest.json").read_text())
    assert manifest["project"] == "demo" and manifest["report"] == dataset.report


# --- a damaged index ---------------------------------------------------------------
@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.fault
def test_a_damaged_index_is_named_and_rebuilt_from_the_folders(
        trained_workspace, tmp_path, damage, capsys):
    ws, dataset, run = trained_workspace
    root = _copy(ws, tmp_path / "ws")
    before = _state(root, run.id, dataset.id)
    index = root / "index.sqlite"
    damaged_bytes = DAMAGES[damage](index)
    index.write_bytes(damaged_bytes)

    # Opening it names the file and the repair command, and creates nothing over it.
    with pytest.raises(tle.WorkspaceDamaged) as caught:
        tle.Workspace(root)
    message = str(caught.value)
    assert str(index) in message and f"{REPAIR} {root}" in message
    assert index.read_bytes() == damaged_bytes

    # So does the CLI: one line, exit 2, no traceback.
    line = _one_line_error(_cli("runs", "--workspace", str(root)))
    assert str(index) in line and REPAIR in line
    assert index.read_bytes() == damaged_bytes

    assert cli_main(["doctor", "--workspace", str(root)]) == 1
    report = capsys.readouterr().out
    assert f"problem: {index} is damaged" in report and REPAIR in report

    assert cli_main(["doctor", "--repair", "--workspace", str(root)]) == 0
    repaired = capsys.readouterr().out
    assert "healthy" in repaired
    aside = [p for p in root.iterdir() if p.name.startswith("index.sqlite.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged_bytes  # kept, not deleted

    assert _state(root, run.id, dataset.id) == before
    repaired_ws = tle.Workspace(root)
    predictions = tle.predict_images(repaired_ws, run.id, [next(
        root.glob("images/*/*.jpg"))])
    assert predictions[0].error is None and len(predictions[0].top) == 3
    assert check_workspace(root) == []


@pytest.mark.fault
def test_a_lost_index_over_folders_is_not_recreated_empty(trained_workspace, tmp_path):
    ws, dataset, run = trained_workspace
    root = _copy(ws, tmp_path / "ws")
    before = _state(root, run.id, dataset.id)
    (root / "index.sqlite").unlink()

    with pytest.raises(tle.WorkspaceDamaged, match="missing while 1 run and 1 dataset"):
        tle.Workspace(root)
    assert not (root / "index.sqlite").exists()

    report = repair_workspace(root)
    assert report.healthy, report.problems
    assert _state(root, run.id, dataset.id) == before


def test_a_brand_new_workspace_is_still_created(tmp_path):
    ws = tle.Workspace(tmp_path / "new")
    assert ws.list_projects() == [] and ws.db_path.stat().st_size > 0
    assert check_workspace(ws.root) == []
    assert [p.name for p in ws.root.iterdir() if p.name.startswith(".index")] == []


def test_empty_projects_and_unfinished_runs_survive_a_rebuild(workspace, tiny_dataset):
    ws = workspace
    ws.ensure_project("still empty")
    queued = tle.submit_run(ws, "test", tiny_dataset.id, tle.RunSpec(**LONG_TINY),
                            start_worker=False)
    assert tle.get_run(ws, queued.run_id).status == "queued"
    ws.db_path.write_bytes(b"")

    report = repair_workspace(ws.root)
    assert report.healthy, report.problems
    assert any("1 interrupted" in line for line in report.repairs)
    rebuilt = tle.Workspace(ws.root)
    assert rebuilt.list_projects() == ["test", "still empty"]
    run = tle.get_run(rebuilt, queued.run_id)
    assert run.status == "interrupted" and "resume" in run.error
    record = json.loads((rebuilt.run_dir(run.id) / "run.json").read_text())
    assert record["status"] == "interrupted"
    assert tle.resume_run(rebuilt, run.id, start_worker=False).status == "queued"


@pytest.mark.fault
def test_damage_after_opening_is_named_too(trained_workspace, tmp_path):
    ws, dataset, run = trained_workspace
    opened = tle.Workspace(_copy(ws, tmp_path / "ws"))
    opened.db_path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(tle.WorkspaceDamaged, match="doctor --repair"):
        tle.list_runs(opened)
    opened.db_path.write_bytes(b"")
    with pytest.raises(tle.WorkspaceDamaged, match="empty"):
        tle.get_run(opened, run.id)


# --- what doctor finds in a sound index --------------------------------------------
@pytest.mark.fault
def test_doctor_finds_missing_files_and_repairs_what_it_can(trained_workspace, tmp_path,
                                                           capsys):
    ws, dataset, run = trained_workspace
    root = _copy(ws, tmp_path / "ws")
    copy = tle.Workspace(root)
    model = copy.run_dir(run.id) / "model.keras"
    model.write_bytes(model.read_bytes()[:1000])
    (copy.run_dir(run.id) / "run.json").unlink()
    metrics_file = copy.run_dir(run.id) / "metrics.jsonl"
    metrics_lines = metrics_file.read_text()
    metrics_file.unlink()  # as a run made before the folders kept their records
    stray = root / "runs" / "rstray000000"
    stray.mkdir()
    (root / "features").mkdir(exist_ok=True)
    (root / "features" / "features.sqlite").write_bytes(b"not a database at all" * 10)

    problems = check_workspace(root)
    kinds = sorted(p.kind for p in problems)
    assert kinds == ["features", "model", "run", "run"], problems
    assert cli_main(["doctor", "--workspace", str(root), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["healthy"] and len(out["problems"]) == 4

    report = repair_workspace(root)
    # The torn model and the stray folder need a person; the rest is repaired.
    assert sorted(p.kind for p in report.problems) == ["model", "run"]
    assert (copy.run_dir(run.id) / "run.json").is_file()
    assert metrics_file.read_text() == metrics_lines
    assert list((root / "features").glob("features.sqlite.damaged-*"))
    assert "no run.json to restore it from" in next(
        p.message for p in report.problems if p.kind == "run")


def test_doctor_removes_stored_images_no_dataset_uses_once_they_are_old(
        workspace, tmp_path, capsys):
    from conftest import TINY_CLASSES, write_color_classes

    ws = workspace
    kept = tle.ingest_folder(ws, write_color_classes(tmp_path / "kept", TINY_CLASSES,
                                                     per_class=4), project="p")
    gone_folder = write_color_classes(tmp_path / "gone", TINY_CLASSES, per_class=3, seed=9)
    gone = tle.ingest_folder(ws, gone_folder, project="p")
    tle.delete_dataset(ws, gone.id)  # its images stay, as a stopped ingest's would
    leftovers = [ws.image_path(r.hash) for r in gone.records]
    assert all(path.is_file() for path in leftovers)
    assert check_workspace(ws.root) == []  # recent: an ingest may be about to use them

    day_ago = time.time() - 24 * 3600
    for path in ws.images_dir.glob("*/*.jpg"):  # everything stored a day ago
        os.utime(path, (day_ago, day_ago))
    problems = check_workspace(ws.root)
    assert [p.kind for p in problems] == ["images"]
    assert problems[0].message.startswith(f"{len(leftovers)} stored image(s)")
    assert cli_main(["doctor", "--workspace", str(ws.root)]) == 1
    assert "belong to no dataset" in capsys.readouterr().out

    # Ingesting the same photos again refreshes their stored copies before the dataset
    # names them: a repair meanwhile would spare them.
    again = tle.ingest_folder(ws, gone_folder, project="p")
    assert all(path.stat().st_mtime > day_ago + 3600 for path in leftovers)
    tle.delete_dataset(ws, again.id)
    for path in leftovers:
        os.utime(path, (day_ago, day_ago))

    report = repair_workspace(ws.root)
    assert report.healthy, report.problems
    assert any(f"removed {len(leftovers)} stored image(s)" in line for line in report.repairs)
    assert not any(path.exists() for path in leftovers)
    assert all(ws.image_path(r.hash).is_file() for r in kept.records)


def test_doctor_names_a_dataset_whose_stored_images_are_gone(workspace, tmp_path):
    from conftest import TINY_CLASSES, write_color_classes

    ws = workspace
    folder = write_color_classes(tmp_path / "d", TINY_CLASSES, per_class=3)
    dataset = tle.ingest_folder(ws, folder, project="p")
    ws.image_path(dataset.records[0].hash).unlink()  # a hand clean-up, a bad restore
    problems = check_workspace(ws.root)
    assert [p.kind for p in problems] == ["dataset"]
    assert f"lacks 1 of its {len(dataset.records)} stored images" in problems[0].message
    assert tle.ingest_folder(ws, folder, project="p").id == dataset.id  # as it says
    assert check_workspace(ws.root) == []


def test_doctor_removes_no_image_while_a_manifest_is_unreadable(workspace, tmp_path):
    from conftest import TINY_CLASSES, write_color_classes

    ws = workspace
    dataset = tle.ingest_folder(ws, write_color_classes(tmp_path / "d", TINY_CLASSES,
                                                        per_class=3), project="p")
    (ws.dataset_dir(dataset.id) / "manifest.json").write_text("{ torn")
    day_ago = time.time() - 24 * 3600
    for path in ws.images_dir.glob("*/*.jpg"):
        os.utime(path, (day_ago, day_ago))
    assert [p.kind for p in check_workspace(ws.root)] == ["dataset"]
    repair_workspace(ws.root)
    assert all(ws.image_path(r.hash).is_file() for r in dataset.records)


@pytest.mark.fault
def test_doctor_reports_a_run_whose_worker_was_killed(workspace, tiny_dataset, capsys):
    ws = workspace
    run_id = tle.submit_run(ws, "test", tiny_dataset.id, tle.RunSpec(**LONG_TINY)).run_id
    deadline = time.monotonic() + 180
    while (run := tle.get_run(ws, run_id)).status != "running" or not run.progress.epoch:
        assert run.is_active and time.monotonic() < deadline, run.error
        time.sleep(0.2)  # polling a separate process's progress in the store

    assert check_workspace(ws.root) == []  # a live worker holds the slot: nothing stuck
    os.kill(run.worker_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while jobs.slot_busy(ws):  # the OS drops the dead worker's lock as it exits
        assert time.monotonic() < deadline
        time.sleep(0.1)

    assert cli_main(["doctor", "--workspace", str(ws.root)]) == 1
    assert f"run {run_id} is marked running but no worker" in capsys.readouterr().out
    assert tle.get_run(ws, run_id).status == "running"  # checking changes nothing

    assert cli_main(["doctor", "--repair", "--workspace", str(ws.root)]) == 0
    assert f"marked interrupted (no worker was training them): {run_id}" in (
        capsys.readouterr().out)
    assert tle.get_run(ws, run_id).status == "interrupted"
    assert json.loads((ws.run_dir(run_id) / "run.json").read_text())["status"] == (
        "interrupted")


# --- backups -----------------------------------------------------------------------
WRITER = """
import sys
from tl_engine.store import Workspace
ws = Workspace(sys.argv[1])
run_id = sys.argv[2]
print("writing", flush=True)
for n in range(1000, 1000 + 2 * int(sys.argv[3]), 2):
    with ws.transaction() as db:  # two rows per transaction: a backup holds both or neither
        for epoch in (n, n + 1):
            db.execute("INSERT INTO metrics (run_id, epoch, phase, values_json, recorded_at) "
                       "VALUES (?, ?, 'head', '{}', 0)", (run_id, epoch))
"""


@pytest.mark.fault
def test_backup_is_consistent_while_another_process_writes(trained_workspace, tmp_path):
    ws, dataset, run = trained_workspace
    root = _copy(ws, tmp_path / "ws")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), run.id, "400"], cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        backups = []
        for n in range(3):
            out = tmp_path / f"backup-{n}.sqlite"
            result = _cli("backup", "--out", str(out), "--workspace", str(root))
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == str(out)
            backups.append(out)
    finally:
        assert writer.wait(timeout=120) == 0

    for backup in backups:
        db = sqlite3.connect(backup)
        try:
            assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            extra = db.execute("SELECT COUNT(*) FROM metrics WHERE epoch >= 1000").fetchone()[0]
            assert extra % 2 == 0
            assert db.execute("SELECT status FROM runs").fetchone()[0] == "completed"
        finally:
            db.close()
        assert not Path(f"{backup}-wal").exists()  # one self-contained file

    # Restoring an older backup, then repairing, brings back what came after it.
    later = tle.submit_run(tle.Workspace(root), "demo", dataset.id,
                           tle.RunSpec(**LONG_TINY), start_worker=False).run_id
    shutil.copyfile(backups[0], root / "index.sqlite")
    problems = check_workspace(root)
    assert [p.path for p in problems] == [str(root / "runs" / later)]
    assert repair_workspace(root).healthy
    assert tle.get_run(tle.Workspace(root), later).status == "interrupted"


def test_backup_refuses_to_overwrite_or_to_write_inside_the_workspace(trained_workspace,
                                                                     tmp_path):
    ws, _, _ = trained_workspace
    existing = tmp_path / "taken.sqlite"
    existing.write_bytes(b"keep me")
    line = _one_line_error(_cli("backup", "--out", str(existing), "--workspace", str(ws.root)))
    assert "already exists" in line and "--force" in line
    assert existing.read_bytes() == b"keep me"

    inside = ws.root / "tmp" / "backup.sqlite"
    assert "inside the workspace" in _one_line_error(
        _cli("backup", "--out", str(inside), "--workspace", str(ws.root)))
    assert not inside.exists()

    forced = _cli("backup", "--out", str(existing), "--force", "--workspace", str(ws.root))
    assert forced.returncode == 0, forced.stderr
    assert existing.read_bytes().startswith(b"SQLite format 3\x00")


def test_doctor_usage_errors_exit_2(tmp_path):
    assert _cli("doctor", "--bogus").returncode == 2
    line = _one_line_error(_cli("doctor", "--workspace", str(tmp_path / "nowhere")))
    assert "nowhere" in line


# --- the dashboard -----------------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "garbage"])
@pytest.mark.fault
def test_dashboard_names_a_damaged_index_and_stops(tmp_path, monkeypatch, damage):
    ws = tle.Workspace(tmp_path / "ws")
    ws.ensure_project("demo")
    damaged_bytes = DAMAGES[damage](ws.db_path)
    ws.db_path.write_bytes(damaged_bytes)

    monkeypatch.setenv("TL_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert len(at.error) == 1
    shown = at.error[0].value
    assert "index.sqlite is damaged" in shown and "doctor --repair" in shown
    assert ws.db_path.read_bytes() == damaged_bytes


# --- a read-only workspace ---------------------------------------------------------
# Tests run as root, whom permission bits do not stop; without these capabilities they do.
WITHOUT_OVERRIDE = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner")


def _read_only_copy(ws: tle.Workspace, target: Path) -> Path:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed: cannot drop root's permission override")
    root = _copy(ws, target)
    for cached in root.glob("runs/*/exports"):  # earlier tests may have exported this run
        shutil.rmtree(cached)
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
    probe = subprocess.run([*WITHOUT_OVERRIDE, "touch", str(root / "probe")],
                           capture_output=True)
    if probe.returncode == 0:
        pytest.skip("dropping capabilities does not stop writes in this sandbox")
    return root


@pytest.mark.fault
def test_a_read_only_workspace_lists_and_predicts(trained_workspace, tmp_path):
    ws, dataset, run = trained_workspace
    root = _read_only_copy(ws, tmp_path / "ro")
    try:
        listed = _cli("runs", "--workspace", str(root), "--json", prefix=WITHOUT_OVERRIDE)
        assert listed.returncode == 0, listed.stderr
        assert [r["run_id"] for r in json.loads(listed.stdout)] == [run.id]

        image = next(root.glob("images/*/*.jpg"))
        predicted = _cli("predict", "--run", run.id, str(image), "--workspace", str(root),
                         "--json", prefix=WITHOUT_OVERRIDE)
        assert predicted.returncode == 0, predicted.stderr
        assert json.loads(predicted.stdout.strip().splitlines()[-1])[0]["error"] is None

        # Anything that has to write says so in one line.
        line = _one_line_error(_cli("cancel", "--run", run.id, "--workspace", str(root),
                                    prefix=WITHOUT_OVERRIDE))
        assert "read-only" in line and str(root) in line
        line = _one_line_error(_cli("export", "--run", run.id, "--format", "labels", "--out",
                                    str(tmp_path / "labels.txt"), "--workspace", str(root),
                                    prefix=WITHOUT_OVERRIDE))
        assert "cannot write" in line and str(root) in line
        assert sorted(p.name for p in root.iterdir()) == sorted(
            p.name for p in ws.root.iterdir())  # nothing was created
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
