"""The two recipes that are only a settings entry and a phase plan: gradual unfreezing and
discriminative learning rates, trained on the shared ants/bees photos with the genuine
ImageNet weights, through the CLI and through a worker that is killed and resumed."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import PROJECT_ROOT, kill_worker

from tl_engine import runs
from tl_engine.datasets import ingest_folder
from tl_engine.jobs import recover_interrupted, resume_run, submit_run, worker_main
from tl_engine.phases import done_path
from tl_engine.spec import RunSpec

pytestmark = pytest.mark.slow

SMALL = ["--backbone", "MobileNetV2-0.35", "--image-size", "96", "--batch-size", "32",
         "--learning-rate", "1e-3", "--seed", "3"]


def test_gradual_unfreezing_with_discriminative_rates_through_the_cli(hymenoptera, keras_home,
                                                                       tmp_path):
    command = [sys.executable, "-m", "tl_engine", "train", "--data", str(hymenoptera),
               "--workspace", str(tmp_path / "ws"), *SMALL, "--strategy", "gradual",
               "--unfreeze", "2", "--unfreeze-unit", "blocks", "--head-epochs", "2",
               "--epochs-per-stage", "1", "--epochs", "2", "--fine-tune-lr-factor", "0.1",
               "--lr-decay", "0.5", "--json", "--no-progress"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed" and result["epochs_run"] == 5
    assert result["val_accuracy"] >= 0.75  # ImageNet features tell ants from bees

    import tl_engine as tle

    ws = tle.Workspace(tmp_path / "ws")
    metrics = runs.run_metrics(ws, result["run_id"])
    assert [m["phase"] for m in metrics] == ["head", "head", "stage-1", "stage-2", "stage-2"]
    # The head learns at the base rate; the stages at base × the fine-tune factor (the
    # optimizer's own rate: the per-block decay scales each variable's step beneath it).
    assert [round(m["learning_rate"], 8) for m in metrics] == [1e-3, 1e-3, 1e-4, 1e-4, 1e-4]
    run = runs.get_run(ws, result["run_id"])
    assert run.spec.lr_decay == 0.5 and run.spec.epochs_per_stage == 1
    plan = subprocess.run([sys.executable, "-m", "tl_engine", "plan", *SMALL, "--strategy",
                           "gradual", "--unfreeze", "2", "--unfreeze-unit", "blocks",
                           "--lr-decay", "0.5", "--json"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    phases = json.loads(plan.stdout.strip().splitlines()[-1])["phases"]
    assert [p["trains"] for p in phases] == [
        "head only", "top 1 block + head", "top 2 blocks + head"]


@pytest.mark.parametrize("strategy", ["gradual", "partial"])
def test_recipes_resume_after_a_killed_worker(strategy, workspace, hymenoptera, keras_home):
    dataset = ingest_folder(workspace, hymenoptera, project="bugs")
    gradual = strategy == "gradual"
    spec = RunSpec(backbone="MobileNetV2-0.35", image_size=96, batch_size=32,
                   learning_rate=1e-3 if gradual else 1e-4, seed=4, strategy=strategy,
                   unfreeze=2, unfreeze_unit="blocks", head_epochs=2, epochs_per_stage=2,
                   epochs=2 if gradual else 4, lr_decay=0.5)
    run_id = submit_run(workspace, "bugs", dataset.id, spec).run_id
    kill_after = 3 if gradual else 2  # in the first stage, or half-way through fine-tuning
    deadline = time.monotonic() + 600
    while len(runs.run_metrics(workspace, run_id)) < kill_after:
        assert time.monotonic() < deadline, "no epochs recorded in time"
        assert runs.get_run(workspace, run_id).status in ("queued", "running")
        time.sleep(0.2)
    before = runs.run_metrics(workspace, run_id)
    kill_worker(runs.get_run(workspace, run_id).worker_pid)
    assert runs.get_run(workspace, run_id).status == "running"  # killed mid-run
    assert run_id in recover_interrupted(workspace)
    if gradual:
        assert done_path(workspace.run_dir(run_id), "head").is_file()

    resume_run(workspace, run_id, start_worker=False)
    worker_main(workspace)
    run = runs.get_run(workspace, run_id)
    assert run.status == "completed", run.error
    metrics = runs.run_metrics(workspace, run_id)
    expected = (["head"] * 2 + ["stage-1"] * 2 + ["stage-2"] * 2 if gradual
                else ["fine-tune"] * 4)
    assert [m["phase"] for m in metrics] == expected
    assert [m["epoch"] for m in metrics] == list(range(1, len(expected) + 1))
    # Finished epochs are not trained again: the head phase's record is untouched.
    finished = [m for m in before if m["phase"] == "head"]
    assert [m for m in metrics if m["phase"] == "head"] == finished
    assert run.summary["epochs_run"] == len(expected)
    assert 0.5 <= run.summary["val_accuracy"] <= 1.0
