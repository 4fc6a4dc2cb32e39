"""The strategy sweep on the ants-vs-bees photographs with MobileNetV2-0.35 (ImageNet
weights from the shared Keras cache) at 96 px: every strategy and the from-scratch
baseline train as ordinary runs, the baseline scores below the best transfer run, a
second sweep reuses every run, the CLI prints the same rows, and the Runs page shows the
table with the winner marked, the curves and the "+X points" sentence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import PROJECT_ROOT

import tl_engine as tle
from dashboard.text import md_escape
from tl_engine import runs, sweep
from tl_engine.jobs import worker_main

pytestmark = pytest.mark.slow

BACKBONE = "MobileNetV2-0.35"
SIZE = 96
EPOCHS = 2


def test_sweep_rows_baseline_reuse_cli_and_page(monkeypatch, tmp_path, hymenoptera,
                                                keras_home):
    ws = tle.Workspace(tmp_path / "ws")
    dataset = tle.ingest_folder(ws, hymenoptera, project="ants")
    base = tle.RunSpec(backbone=BACKBONE, image_size=SIZE)
    entries = sweep.sweep_entries(base, epochs=EPOCHS)
    assert [e.key for e in entries] == ["frozen", "partial-2", "partial-6", "full",
                                         "two-phase", "gradual", "scratch"]
    assert {e.spec.learning_rate for e in entries if e.spec.strategy in ("partial", "full")
            and e.spec.weights == "imagenet"} == {1e-4}

    started = time.monotonic()
    sweep_id = sweep.submit_sweep(ws, "ants", dataset.id, base, epochs=EPOCHS,
                                  start_worker=False)
    worker_main(ws)
    seconds = time.monotonic() - started
    result = sweep.sweep_result(ws, sweep_id)
    print(f"\nsweep of {BACKBONE} at {SIZE} px, {EPOCHS} epochs each, on "
          f"{len(dataset.records)} ants/bees photos: {seconds:.0f} s")
    for row in result.rows:
        print(f"  {row.label:40s} {row.weights:9s} val {row.val_accuracy:.3f} "
              f"{row.seconds:5.1f} s  {row.run_id}")
    print(" ", result.sentence)

    assert [r.status for r in result.rows] == ["completed"] * 7
    assert all(r.val_accuracy is not None and r.seconds for r in result.rows)
    baseline, winner = result.baseline, result.winner
    assert baseline is not None and baseline.weights == "none"
    assert baseline.strategy == "full"
    assert winner is not None and winner.weights == "imagenet"
    assert baseline.val_accuracy < winner.val_accuracy
    assert result.gain_points == pytest.approx(
        100 * (winner.val_accuracy - baseline.val_accuracy))
    assert result.sentence.startswith(
        f"Transfer learning bought +{result.gain_points:.1f} points over training from scratch")
    # The runs are ordinary training runs: the Runs page lists and compares them.
    listed = {r.id for r in tle.list_runs(ws, "ants")}
    assert {r.run_id for r in result.rows} <= listed

    # A second sweep queues nothing new: every run is the stored one.
    again = sweep.submit_sweep(ws, "ants", dataset.id, base, epochs=EPOCHS,
                               start_worker=False)
    assert again != sweep_id
    assert [r.run_id for r in sweep.sweep_result(ws, again).rows] == [
        r.run_id for r in result.rows]
    assert not tle.active_runs(ws, "ants")
    assert sweep.list_sweeps(ws, "ants", dataset.id) == [again, sweep_id]
    assert len(tle.list_runs(ws, "ants")) == 7

    # The CLI with the same settings prints the same rows, reused at once.
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "tl_engine", "sweep", "--workspace", str(ws.root), "--project",
         "ants", "--data", str(hymenoptera), "--backbone", BACKBONE, "--epochs", str(EPOCHS),
         "--image-size", str(SIZE), "--json", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    assert [row["run_id"] for row in printed["rows"]] == [r.run_id for r in result.rows]
    for row, expected in zip(printed["rows"], result.rows, strict=True):
        assert {"strategy", "weights", "val_accuracy", "seconds", "run_id"} <= set(row)
        assert row["strategy"] == expected.strategy and row["weights"] == expected.weights
        assert row["val_accuracy"] == pytest.approx(expected.val_accuracy)
    assert printed["winner"] == winner.run_id
    assert len(tle.list_runs(ws, "ants")) == 7

    # The Runs page shows the finished sweep: table, winner, sentence, curves; its button
    # queues nothing new.
    at = open_runs_page(monkeypatch, ws)
    table = next(df.value for df in at.dataframe if "Strategy" in df.value.columns)
    assert list(table["Strategy"]) == [row.label for row in result.rows]
    assert list(table[table[""] == "★"]["Run"]) == [winner.run_id]
    assert md_escape(result.sentence) in "\n".join(str(e.value) for e in at.success)
    chart = next(c for c in at.get("plotly_chart")
                 if "Validation accuracy by strategy" in c.proto.spec)
    assert all(row.label in chart.proto.spec for row in result.rows)
    assert not any("strategies trained" in str(p.proto.text) for p in at.get("progress"))
    at.button(key="sweep_start").click().run()
    assert not at.exception, at.exception
    assert len(sweep.list_sweeps(ws, "ants", dataset.id)) == 4
    assert len(tle.list_runs(ws, "ants")) == 7 and not tle.active_runs(ws, "ants")

    # The sweep's runs keep working after a run is deleted: its row says so.
    runs.delete_run(ws, result.rows[0].run_id)
    assert sweep.sweep_result(ws, sweep_id).rows[0].status == "deleted"


def open_runs_page(monkeypatch, ws):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TL_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    at.query_params["project"] = "ants"
    at.session_state["spec_draft"] = tle.RunSpec(backbone=BACKBONE, image_size=SIZE,
                                                 epochs=EPOCHS).to_dict()
    at.run()
    at.switch_page("views/runs.py").run()
    assert not at.exception, at.exception
    return at
