"""The workspace store, the device report and the CLI's data checks."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT, write_color_classes

from tl_engine.device import describe
from tl_engine.store import Workspace


def test_workspace_is_a_real_sqlite_index_that_survives_reopening(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.ensure_project("Bees")
    ws.ensure_project("Bees")
    reopened = Workspace(tmp_path / "ws")
    assert reopened.list_projects() == ["Bees"]
    with sqlite3.connect(reopened.db_path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"projects", "datasets", "runs", "metrics", "artifacts"} <= tables


def test_atomic_writes_stay_inside_the_workspace(tmp_path):
    ws = Workspace(tmp_path / "ws")
    target = ws.run_dir("r1") / "file.json"
    ws.write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ValueError, match="outside the workspace"):
        ws.write_bytes_atomic(tmp_path / "escape.txt", b"x")
    with pytest.raises(ValueError, match="outside the workspace"):
        ws.write_bytes_atomic(ws.root / ".." / "escape.txt", b"x")
    assert not (tmp_path / "escape.txt").exists()


def test_workspace_location_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_WORKSPACE", str(tmp_path / "from-env"))
    assert Workspace().root == (tmp_path / "from-env").resolve()


def test_device_report_on_this_host():
    info = describe()
    assert info.kind in ("CPU", "GPU")
    assert info.tensorflow and info.keras
    if info.kind == "CPU":
        assert info.label.startswith("CPU") and not info.mixed_precision
    else:
        assert info.names and info.replicas == len(info.names)


DESCRIBE_THEN_CONFIGURE = """
import json, keras, tensorflow as tf
from tl_engine import device

def settings():
    gpus = tf.config.list_physical_devices("GPU")
    return {"policy": keras.mixed_precision.global_policy().name,
            "growth": [tf.config.experimental.get_memory_growth(g) for g in gpus]}

before = settings()
described = device.describe()
after_describe = settings()
configured_by_describe = device.configure.cache_info().currsize
configured = device.configure()
print(json.dumps({"before": before, "after_describe": after_describe,
                  "configured_by_describe": configured_by_describe,
                  "described": described.to_dict(), "configured": configured.to_dict()}))
"""


def test_describing_the_device_leaves_tensorflow_as_it_was():
    """In a fresh process, where nothing has set TensorFlow up yet: describing changes
    neither the Keras dtype policy nor GPU memory growth, and says what configure() then
    sets up."""
    done = subprocess.run([sys.executable, "-c", DESCRIBE_THEN_CONFIGURE], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["after_describe"] == report["before"]
    assert report["configured_by_describe"] == 0
    described, configured = report["described"], report["configured"]
    for name in ("kind", "names", "mixed_precision", "replicas", "tensorflow", "keras"):
        assert described[name] == configured[name], name


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tl_engine", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_check_data_reports_health_and_refuses_one_class(tmp_path):
    good = write_color_classes(tmp_path / "good", {"a": (200, 0, 0), "b": (0, 0, 200)}, 4)
    (good / "b" / "notes.jpg").write_text("not an image")
    result = _cli("check-data", "--data", str(good), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["n_classes"] == 2 and report["n_images"] == 8
    assert [u["file"] for u in report["unreadable"]] == ["b/notes.jpg"]

    single = write_color_classes(tmp_path / "single", {"only": (0, 200, 0)}, 4)
    bad = _cli("check-data", "--data", str(single))
    assert bad.returncode == 2
    assert "only" in bad.stdout + bad.stderr and "Traceback" not in bad.stderr

    # A mistyped workspace is refused, not made anew and reported empty.
    nowhere = tmp_path / "ws"
    for command in (["runs"], ["predict", "--run", "r1", str(single / "only" / "only_000.jpg")],
                    ["cancel", "--run", "r1"], ["export", "--run", "r1", "--format", "labels",
                                                "--out", str(tmp_path / "out")]):
        refused = _cli(*command, "--workspace", str(nowhere))
        assert refused.returncode == 2, command
        assert refused.stderr.strip() == (f"error: No workspace at {nowhere}: check "
                                          "--workspace (or $TL_WORKSPACE). `train` starts a "
                                          "new one."), command
    assert not nowhere.exists()
    Workspace(nowhere)
    missing = _cli("predict", "--run", "r_missing", str(single / "only" / "only_000.jpg"),
                   "--workspace", str(nowhere))
    assert missing.returncode == 2 and "r_missing" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    # A dataset's folder without its index: the message names the repair, and no new
    # index is made over it.
    from tl_engine.datasets import ingest_folder

    ingest_folder(Workspace(nowhere), good, project="p")
    (nowhere / "index.sqlite").unlink()
    unindexed = _cli("runs", "--workspace", str(nowhere))
    assert unindexed.returncode == 2 and "doctor --repair" in unindexed.stderr
    assert not (nowhere / "index.sqlite").exists()


def test_a_train_refused_for_its_settings_or_data_leaves_nothing_behind(tmp_path):
    good = write_color_classes(tmp_path / "good", {"a": (200, 0, 0), "b": (0, 0, 200)}, 4)
    single = write_color_classes(tmp_path / "single", {"only": (0, 200, 0)}, 4)
    root = tmp_path / "ws"
    bad_epochs = _cli("train", "--data", str(good), "--epochs", "0", "--workspace", str(root))
    assert bad_epochs.returncode == 2 and "epochs" in bad_epochs.stderr
    assert not root.exists()  # settings are checked before anything is made
    for data in (single, tmp_path / "nowhere"):
        refused = _cli("train", "--data", str(data), "--project", "p1", "--workspace",
                       str(root), "--json")
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        # With --json the reason is the last stdout line too, for scripts that read it.
        reason = refused.stderr.strip().removeprefix("error: ")
        assert json.loads(refused.stdout.splitlines()[-1]) == {"error": reason,
                                                                "exit_code": 2}
        assert Workspace(root).list_projects() == []  # no empty project left behind

    # A workspace path taken by a file is named, with what to do; nothing is written.
    taken = tmp_path / "taken"
    taken.write_text("a file\n")
    for command in (["train", "--data", str(good)], ["runs"], ["label-issues", "--data",
                                                               str(good)]):
        refused = _cli(*command, "--workspace", str(taken))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, command
        assert f"Cannot use {taken} as a workspace" in refused.stderr or (
            f"No workspace at {taken}" in refused.stderr), command
    assert taken.read_text() == "a file\n"
    # Below a file, the file in the way is the one named.
    from tl_engine.errors import TLError

    with pytest.raises(TLError, match=f"{taken} is a file, not a folder"):
        Workspace(taken / "ws")


def test_export_never_overwrites_a_users_folder(trained_workspace, tmp_path):
    from tl_engine.errors import SpecError
    from tl_engine.export import export_run

    ws, _, run = trained_workspace
    copy = Workspace(shutil.copytree(ws.root, tmp_path / "ws"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SpecError, match="not an empty folder"):
        export_run(copy, run.id, "savedmodel", mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    fresh = export_run(copy, run.id, "savedmodel", tmp_path / "fresh")
    assert (fresh / "saved_model.pb").is_file()


def test_cli_json_answers_end_with_a_json_line_even_for_refused_arguments(workspace,
                                                                          tiny_dataset):
    """Scripts read stdout's last line: argparse's refusals and settings left at a default
    that does not fit give it too; cancel and resume speak JSON as well."""
    import json as json_module

    import tl_engine as tle

    def last_json(result: subprocess.CompletedProcess) -> dict:
        return json_module.loads(result.stdout.strip().splitlines()[-1])

    typo = _cli("train", "--data", "x", "--epochs", "abc", "--json")
    assert typo.returncode == 2 and "usage:" in typo.stderr
    assert last_json(typo) == {"error": "python -m tl_engine train: argument --epochs: "
                                        "invalid int value: 'abc'", "exit_code": 2}
    unsaid = _cli("plan", "--strategy", "two-phase", "--json")
    assert unsaid.returncode == 2
    assert last_json(unsaid)["error"] == (
        "The two-phase strategy trains the top of the backbone: say how much with --unfreeze "
        "N (its top N layers, or N blocks with --unfreeze-unit blocks).")

    spec = tle.RunSpec(backbone="MobileNetV2-0.35", weights="none", image_size=32, epochs=1)
    run_id = tle.submit_run(workspace, "test", tiny_dataset.id, spec,
                            start_worker=False).run_id
    where = ("--workspace", str(workspace.root))
    cancelled = _cli("cancel", "--run", run_id, "--json", *where)
    assert cancelled.returncode == 0, cancelled.stderr
    assert last_json(cancelled) == {"run_id": run_id, "status": "cancelled",
                                    "cancel_requested": True,
                                    "message": f"run {run_id}: cancelled before it started"}
    again = _cli("cancel", "--run", run_id, "--json", *where)
    assert again.returncode == 1 and last_json(again)["cancel_requested"] is False
