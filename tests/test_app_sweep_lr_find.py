"""The Runs page's strategy sweep and the Training page's learning-rate range test through
AppTest on a real workspace: the sweep button queues every strategy and shows where the
sweep stands while they wait or train (the finished table, winner and sentence are checked
on real photos in test_sweep_hymenoptera.py); "Find a learning rate" runs the range test
and "Use this learning rate" puts its suggestion into the draft and the form."""

from __future__ import annotations

import subprocess
import sys

from conftest import PROJECT_ROOT, texts, write_color_classes
from streamlit.testing.v1 import AppTest

import tl_engine as tle
from dashboard import controls
from dashboard.text import md_escape
from tl_engine import lr_find, sweep
from tl_engine.jobs import wait_for_run

DRAFT = {"backbone": "MobileNetV2-0.35", "weights": "imagenet", "image_size": 32,
         "epochs": 1, "batch_size": 8}


def open_page(monkeypatch, ws: tle.Workspace, page: str) -> AppTest:
    monkeypatch.setenv("TL_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    at.query_params["project"] = "demo"
    at.session_state["spec_draft"] = tle.RunSpec(**DRAFT).to_dict()
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_runs_page_sweep_button_queues_every_strategy_with_live_status(monkeypatch, demo_ws,
                                                                      keras_home, tmp_path):
    at = open_page(monkeypatch, demo_ws, "views/runs.py")
    assert "Strategy sweep" in texts(at.header)
    assert "No sweep in this project yet." in texts(at.caption)
    start = at.button(key="sweep_start")
    assert start.label == "Sweep 7 strategies"

    start.click().run()
    assert not at.exception, at.exception
    dataset = tle.list_datasets(demo_ws, "demo")[0]
    (sweep_id,) = sweep.list_sweeps(demo_ws, "demo", dataset.id)
    result = sweep.sweep_result(demo_ws, sweep_id)
    assert len(result.rows) == 7 and result.backbone == "MobileNetV2-0.35"
    assert [r.weights for r in result.rows] == ["imagenet"] * 6 + ["none"]
    # Queued runs: the section shows where the sweep stands (a worker is only starting).
    assert result.active
    assert any("0 of 7 strategies trained" in str(p.proto.text) for p in at.get("progress"))
    table = next(df.value for df in at.dataframe if "Strategy" in df.value.columns)
    assert list(table["Run"]) == [row.run_id for row in result.rows]

    for row in result.rows:  # the finished table is the slow test's (hymenoptera)
        tle.cancel_run(demo_ws, row.run_id)
    for row in result.rows:
        assert not wait_for_run(demo_ws, row.run_id, timeout_s=300).is_active
    at.run()
    assert not at.exception, at.exception
    assert not any("strategies trained" in str(p.proto.text) for p in at.get("progress"))
    baseline = result.rows[-1].run_id
    assert md_escape(f"The from-scratch run {baseline} is cancelled, so what transfer learning "
                     "bought cannot be said yet: resume it on the Training page."
                     ) in texts(at.caption)

    # A newer dataset and other settings: the sweep stays, described by its own runs.
    newer = tle.ingest_folder(demo_ws, write_color_classes(
        tmp_path / "newer", {"dark": (30, 30, 30), "light": (220, 220, 220)}, per_class=4, seed=5),
                              project="demo", name="newer photos")
    at.session_state["spec_draft"] = tle.RunSpec(**{**DRAFT, "epochs": 4}).to_dict()
    at.run()
    assert not at.exception, at.exception
    captions = texts(at.caption)
    assert f"on **{newer.name}** with every freeze strategy (4 epochs each" in captions
    assert f"MobileNetV2-0.35 on {dataset.name}, 1 epoch per strategy" in captions
    table = next(df.value for df in at.dataframe if "Strategy" in df.value.columns)
    assert list(table["Run"]) == [row.run_id for row in result.rows]
    # No accuracy yet: empty cells (shown as "–"), not the text "None".
    assert str(table["Val accuracy"].dtype) == "Float64" and table["Val accuracy"].isna().all()

    # A second sweep, started here, becomes the one shown; the picker offers both.
    at.button(key="sweep_start").click().run()
    assert not at.exception, at.exception
    newest = sweep.list_sweeps(demo_ws, "demo")[0]
    assert newest != sweep_id and at.session_state["sweep_shown"] == newest
    assert at.selectbox(key="sweep_pick").value == newest
    assert len(at.selectbox(key="sweep_pick").options) == 2
    newer_rows = sweep.sweep_result(demo_ws, newest).rows
    for row in newer_rows:
        tle.cancel_run(demo_ws, row.run_id)
    for row in newer_rows:
        assert not wait_for_run(demo_ws, row.run_id, timeout_s=300).is_active


def test_training_page_lr_find_and_use(monkeypatch, demo_ws, keras_home):
    at = open_page(monkeypatch, demo_ws, "views/training.py")
    assert "**Find a learning rate**" in texts(at.markdown)
    at.button(key="lr_find_start").click().run()
    assert not at.exception, at.exception
    dataset = tle.list_datasets(demo_ws, "demo")[0]
    run = lr_find.latest_lr_find(demo_ws, "demo", dataset.id, DRAFT)
    assert run is not None and run.kind == "lr-find"
    assert wait_for_run(demo_ws, run.id, timeout_s=300).status == "completed"

    at.run()
    assert not at.exception, at.exception
    summary = tle.get_run(demo_ws, run.id).summary
    suggested = float(f"{summary['suggested_lr']:.1e}")
    assert f"Suggested learning rate **{suggested:g}**" in texts(at.markdown)
    assert any('"type":"log"' in c.proto.spec.replace(" ", "")
               for c in at.get("plotly_chart"))
    use = at.button(key="lr_find_use")
    assert use.label == "Use this learning rate"
    use.click().run()
    assert not at.exception, at.exception
    assert at.session_state["spec_draft"]["learning_rate"] == suggested
    assert at.select_slider(key=controls.widget_key("learning_rate")).value == suggested
    assert at.button(key="lr_find_use").disabled  # now in the draft
    assert f"The learning rate is now {suggested:g}." in texts(at.success)
    # The stored draft follows, so the next visit starts from it.
    assert tle.load_draft(demo_ws, "demo", "")["learning_rate"] == suggested


def test_the_sweeps_strategies_are_chosen_without_building_the_backbone():
    # The Runs page lists them on every visit: from the registry's block counts, with no
    # TensorFlow import (seconds on a fresh server) and no model built.
    script = ("import sys; from tl_engine import sweep; from tl_engine.spec import RunSpec; "
              "entries = sweep.sweep_entries(RunSpec(backbone='MobileNetV2-0.35')); "
              "print([e.key for e in entries], 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # MobileNetV2 has 19 blocks: about an eighth (2) and a third (6) of them.
    assert out.stdout.strip() == ("['frozen', 'partial-2', 'partial-6', 'full', 'two-phase', "
                                  "'gradual', 'scratch'] False")


def test_the_two_rate_marks_label_away_from_each_other():
    """Two close rates (the suggestion below minimum ÷ 10): each label on the far side of
    its line and at its own height, so neither prints over the other."""
    from dashboard.lr_find_panel import loss_curve

    points = [(10 ** (-6 + i / 10), 2.0 - i / 60) for i in range(50)]
    fig = loss_curve(points, suggested=2.5e-5, minimum_div10=1.3e-4)
    marks = {trace.name: trace for trace in fig.data[1:]}
    suggested, minimum = marks["suggested"], marks["minimum ÷ 10"]
    assert suggested.textposition == "bottom left" and minimum.textposition == "bottom right"
    label_height = {name: next(y for y, text in zip(trace.y, trace.text, strict=True) if text)
                    for name, trace in marks.items()}
    assert label_height["suggested"] != label_height["minimum ÷ 10"]
    assert "suggested 2.5e-05" in suggested.text and "minimum ÷ 10 1.3e-04" in minimum.text
