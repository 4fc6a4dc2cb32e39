"""The learning-rate range test on the shared flowers (5 classes, 4317 photos) with
MobileNetV2-0.35 (ImageNet) at 96 px: its curve and suggestion, the suggestion trains a
frozen head as well as the default rate (mean over three seeds: each seed is another
split), and the CLI prints the stored test."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import PROJECT_ROOT

import tl_engine as tle
from tl_engine import lr_find, runs
from tl_engine.jobs import submit_run, worker_main

pytestmark = pytest.mark.slow

BACKBONE = "MobileNetV2-0.35"
SIZE = 96
SEEDS = (42, 1, 2)
TOLERANCE = 0.02  # two points (about 17 of the 863 validation images): seed-to-seed noise


def test_range_test_suggestion_trains_as_well_as_the_default(tmp_path, flowers, keras_home):
    ws = tle.Workspace(tmp_path / "ws")
    dataset = tle.ingest_folder(ws, flowers, project="flowers")
    draft = tle.RunSpec(backbone=BACKBONE, image_size=SIZE, epochs=3)
    submission = lr_find.submit_lr_find(ws, "flowers", dataset.id, draft, start_worker=False)
    worker_main(ws)
    run = runs.get_run(ws, submission.run_id)
    assert run.status == "completed", run.error
    summary = run.summary
    points = summary["points"]
    rates = [lr for lr, _ in points]
    assert summary["phase"] == "head" and 20 <= summary["steps"] <= lr_find.STEPS
    assert rates == sorted(rates) and rates[0] == pytest.approx(lr_find.START_LR)
    assert all(math.isfinite(loss) for _, loss in points)
    suggested = summary["suggested_lr"]
    lowest = rates[int(np.argmin([loss for _, loss in points]))]
    assert rates[0] < suggested < lowest  # on the falling stretch, before the minimum
    assert summary["minimum_div10_lr"] == pytest.approx(lowest / 10)
    # The same draft with another learning rate or epoch count reuses the test.
    again = lr_find.submit_lr_find(ws, "flowers", dataset.id,
                                   tle.RunSpec(backbone=BACKBONE, image_size=SIZE,
                                               learning_rate=0.01, epochs=7),
                                   start_worker=False)
    assert again.run_id == run.id and again.cached

    rate = float(f"{suggested:.1e}")  # what "Use this learning rate" puts in the form
    trained: dict[float, list[str]] = {rate: [], 1e-3: []}
    for seed in SEEDS:
        for lr in trained:
            spec = tle.RunSpec(backbone=BACKBONE, image_size=SIZE, epochs=3,
                               learning_rate=lr, seed=seed)
            trained[lr].append(submit_run(ws, "flowers", dataset.id, spec,
                                          start_worker=False).run_id)
    worker_main(ws)
    accuracy = {lr: [runs.get_run(ws, i).val_accuracy for i in ids]
                for lr, ids in trained.items()}
    mean = {lr: float(np.mean(values)) for lr, values in accuracy.items()}
    print(f"\nrange test on flowers128 ({BACKBONE}, {SIZE} px, frozen): "
          f"{summary['steps']} steps in {summary['seconds']:.1f} s; suggested "
          f"{suggested:.2e} ({summary['suggested_by']}), minimum / 10 "
          f"{summary['minimum_div10_lr']:.2e}")
    for lr, values in accuracy.items():
        print(f"  3 epochs frozen at {lr:g}: val accuracy {mean[lr]:.4f} "
              f"(seeds {SEEDS}: {', '.join(f'{v:.4f}' for v in values)})")
    assert mean[rate] >= mean[1e-3] - TOLERANCE

    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "tl_engine", "lr-find", "--workspace", str(ws.root),
         "--project", "flowers", "--data", str(flowers), "--backbone", BACKBONE,
         "--image-size", str(SIZE), "--strategy", "frozen", "--json", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    assert printed["suggested_lr"] == pytest.approx(suggested)
    assert printed["run_id"] == run.id
    assert printed["points"] == [list(p) for p in points]
    assert all(len(p) == 2 for p in printed["points"])
