"""The Runs page as an analyst and a presenter read it: zoomed curves, identical curves told
apart, no top-k that repeats the accuracy, which epoch's weights a run keeps, tables that
fit, and names people typed shown exactly as typed."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import open_app, texts, train_tiny_run, write_color_classes
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

import tl_engine as tle
from dashboard import charts, run_views
from dashboard.text import WORD_JOINER, md_escape, md_escape_frame, plotly_text
from tl_engine.runs import record_epoch, update_run

HOSTILE_NAMES = [
    "![x](http://host/p.png)",
    "[sign in](http://evil)",
    "<img src=x onerror=alert(1)> &amp; <b>bold</b>",
    "# heading\n- item *em* _u_ `code` ~~gone~~ $x^2$ :red[red] www.evil.com a@b.com",
]
# Class names are folder names: anything but a slash.
BOLD_CLASS, LINK_CLASS = "**bold** <u>lined", "[sign in](evil)"


def metrics(accuracies: list[float], val_accuracies: list[float], loss0: float = 1.0):
    return [{"epoch": i + 1, "phase": "head", "loss": loss0 / (i + 1), "accuracy": acc,
             "val_loss": loss0 / (i + 2), "val_accuracy": val}
            for i, (acc, val) in enumerate(zip(accuracies, val_accuracies, strict=True))]


def axis(fig, name: str) -> dict:
    return fig.to_plotly_json()["layout"][name]


def traces(spec: dict) -> dict[str, dict]:
    return {t["name"]: t for t in spec["data"]}


# --- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_md_escape_renders_exactly_the_text(name):
    """Rendered by a CommonMark parser, the escaped name is the name itself: no link, image,
    heading, list, emphasis or HTML."""
    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(
        md_escape(name))
    one_line = " ".join(name.splitlines())
    # Only invisible word joiners are added, where they keep a bare URL from being linked.
    assert rendered.replace(WORD_JOINER, "") == f"<p>{html.escape(one_line, quote=False)}</p>\n"
    for text in ("plain name", "Ana María", "r1a2b3c4d5"):
        assert md_escape(text) == text


def test_md_escape_frame_escapes_cells_headers_and_index():
    import pandas as pd

    table = pd.DataFrame({"[a](x)": ["*b*"]}, index=["#c"])
    escaped = md_escape_frame(table)
    assert list(escaped.columns) == [r"\[a\]\(x)"]
    assert list(escaped.index) == [r"\#c"]
    assert escaped.iloc[0, 0] == r"\*b\*"
    assert table.iloc[0, 0] == "*b*"  # the original is left as it was


def test_plotly_text_keeps_tags_as_text():
    assert plotly_text('<a href="http://evil">x</a> & y') == (
        '&lt;a href="http://evil"&gt;x&lt;/a&gt; &amp; y')


def test_identical_groups():
    base = metrics([0.5, 0.9], [0.6, 0.968])
    nearly = [{**m, "val_accuracy": m["val_accuracy"] + 1e-12} for m in base]
    other = metrics([0.5, 0.9], [0.6, 0.973])
    longer = metrics([0.5, 0.9, 0.95], [0.6, 0.968, 0.97])
    groups = charts.identical_groups(
        {"a": base, "b": other, "c": nearly, "d": longer, "e": base, "f": [], "g": []})
    assert groups == {"a": ["c", "e"], "c": ["a", "e"], "e": ["a", "c"]}
    assert charts.identical_groups({"a": base, "b": other}) == {}
    missing_val = [{k: v for k, v in m.items() if k != "val_loss"} for m in base]
    assert charts.identical_groups({"a": base, "b": missing_val}) == {}
    # One curve alone: the train curves of `a` and `b` are the same, their val curves not.
    assert charts.identical_groups({"a": base, "b": other}, ("accuracy",)) == {
        "a": ["b"], "b": ["a"]}
    assert charts.identical_groups({"a": base, "b": other}, ("val_accuracy",)) == {}


def test_accuracy_axis_zooms_to_the_data():
    fig = charts.training_curves({"r1": metrics([0.95, 0.97], [0.968, 0.969]),
                                  "r2": metrics([0.96, 0.971], [0.97, 0.973])})
    accuracy = axis(fig, "yaxis2")
    low, high = accuracy["range"]
    assert 0.94 < low < 0.95 and 0.973 < high < 0.99
    assert accuracy["tickformat"] == ".1%"  # ticks a fraction of a percent apart differ
    loss_low, loss_high = axis(fig, "yaxis")["range"]
    assert 0.0 <= loss_low < 1 / 3 and 1.0 < loss_high < 1.2

    # Clamped to [0, 1], with the markers at 100 % drawn whole.
    wide = charts.training_curves({"r1": metrics([0.0, 1.0], [0.1, 1.0])})
    assert axis(wide, "yaxis2")["range"] == [0.0, 1.0]
    assert axis(wide, "yaxis2")["tickformat"] == ".0%"
    assert all(t["cliponaxis"] is False for t in wide.to_plotly_json()["data"])
    assert axis(charts.training_curves({"r1": []}), "yaxis2")["range"] == [0.0, 1.0]


def test_identical_curves_differ_in_dash_and_symbol_and_say_so():
    same = metrics([0.5, 0.9], [0.6, 0.968])
    fig = charts.training_curves({"r1": same, "r2": same, "r3": metrics([0.4, 0.8], [0.5, 0.9])})
    by_name = traces(fig.to_plotly_json())
    # The line drawn on top of an identical one says so, and looks different.
    first, twin = by_name["r1 val"], by_name["r2 val (identical to r1)"]
    assert first["line"]["dash"] != twin["line"]["dash"]
    assert first["marker"]["symbol"] != twin["marker"]["symbol"]
    assert by_name["r1 train"]["line"]["dash"] != (
        by_name["r2 train (identical to r1)"]["line"]["dash"])
    assert "r3 val" in by_name and "r3 train" in by_name  # no twin, no note


def test_a_run_cut_short_is_drawn_apart_and_named():
    """The same settings trained for fewer epochs lie on the longer run's first epochs."""
    longer = metrics([0.5, 0.9, 0.95], [0.6, 0.968, 0.97])
    shorter = longer[:2]
    by_name = traces(charts.training_curves({"short": shorter, "long": longer})
                     .to_plotly_json())
    on_top = by_name["long val (same as short up to epoch 2)"]
    assert on_top["line"]["dash"] != by_name["short val"]["line"]["dash"]
    assert charts.overlaps({"a": longer, "b": metrics([0.1, 0.2], [0.3, 0.4])},
                           ("val_accuracy",)) == {}


def test_a_single_identical_curve_is_drawn_apart_and_named():
    """Two untrained runs often sit at the same val accuracy while their losses differ."""
    stuck = {"r1": metrics([0.3, 0.5], [0.5, 0.5], loss0=1.0),
             "r2": metrics([0.4, 0.6], [0.5, 0.5], loss0=2.0)}
    data = charts.training_curves(stuck).to_plotly_json()["data"]
    val_accuracy = [t for t in data if t["name"].endswith(" val") and t["xaxis"] == "x2"]
    assert [t["line"]["dash"] for t in val_accuracy] == ["dash", "dashdot"]
    val_loss = [t for t in data if t["name"].endswith(" val") and t["xaxis"] == "x"]
    assert [t["line"]["dash"] for t in val_loss] == ["dash", "dash"]
    assert run_views.identical_curves_text(stuck).startswith(
        "Identical curves: r1 and r2 (val accuracy).")
    assert run_views.identical_curves_text(
        {"r1": stuck["r1"], "r2": metrics([0.4, 0.6], [0.6, 0.7], loss0=2.0)}) is None
    both = {"r1": stuck["r1"], "r2": metrics([0.3, 0.5], [0.5, 0.5], loss0=2.0)}
    assert run_views.identical_curves_text(both).startswith(
        "Identical curves: r1 and r2 (accuracy, val accuracy).")


def test_runs_table_time_is_text_and_columns_fit(pair_root):
    ws = tle.Workspace(pair_root)
    run = tle.list_runs(ws, "pair")[0]
    long_name = "Maria-Fernanda Quintanilla Rodríguez (Quality Lab, night shift)"
    # A copy of the record as the store could hold it: a long name, minutes of training.
    slow = tle.RunRecord(**{**run.__dict__, "started_by": long_name,
                            "summary": {**run.summary, "seconds": 242.4}})
    table = run_views.runs_table([slow, run])
    assert table["time"].iloc[0] == "4 min 02 s"
    config = run_views.runs_columns(table)
    assert set(config) == set(table.columns)
    shown = {"started by": long_name, "time": "4 min 02 s", "created": "Jan 01 12:00",
             "strategy": run_views.strategy_text(run.spec), "val acc": "96.80%"}
    for column, text in shown.items():
        assert config[column]["width"] >= run_views.fitted_width([text, column]), column
    assert config["started by"]["width"] > 400
    assert config["val acc"]["type_config"]["format"] == "percent"


def test_a_run_that_stopped_early_shows_how_far_it_got(pair_root):
    ws = tle.Workspace(pair_root)
    run = tle.list_runs(ws, "pair")[0]
    metrics = tle.run_metrics(ws, run.id)
    # The record as a cancelled run leaves it: no result, its epochs' metrics stored.
    stopped = tle.RunRecord(**{**run.__dict__, "status": tle.RunStatus.CANCELLED,
                               "summary": {}, "started_at": 1000.0, "finished_at": 1075.0})
    row = run_views.runs_table([stopped], ws).iloc[0]
    assert row["epochs"] == str(max(m["epoch"] for m in metrics))
    assert row["last val acc"] == pytest.approx(metrics[-1]["val_accuracy"])
    assert row["time"] == "1 min 15 s"
    assert pd.isna(row["val acc"])  # it keeps no model to score
    # Without the workspace (or before it started) nothing is made up.
    assert pd.isna(run_views.runs_table([stopped]).iloc[0]["epochs"])


# --- the page, against real workspaces --------------------------------------------------------


@pytest.fixture(scope="module")
def pair_root(tmp_path_factory) -> Path:
    """Project "pair": two classes named with Markdown and HTML in them, two completed runs
    that differ in their learning rate."""
    root = tmp_path_factory.mktemp("pair")
    ws = tle.Workspace(root / "ws")
    data = write_color_classes(root / "data", {BOLD_CLASS: (200, 40, 40),
                                               LINK_CLASS: (40, 60, 200)}, per_class=8)
    dataset = tle.ingest_folder(ws, data, project="pair")
    for learning_rate in (0.01, 0.02):
        run = train_tiny_run(ws, dataset, learning_rate=learning_rate)
        assert run.status == "completed", run.error
    return ws.root


@pytest.fixture
def pair_ws(pair_root, tmp_path) -> tle.Workspace:
    shutil.copytree(pair_root, tmp_path / "ws")
    return tle.Workspace(tmp_path / "ws")


def open_runs(monkeypatch, root: Path, run: str | None = None) -> AppTest:
    return open_app(monkeypatch, root, "views/runs.py", project="pair",
                    **({"run": run} if run else {}))


def curves_spec(at: AppTest) -> dict:
    return next(s for s in (json.loads(e.proto.spec) for e in at.get("plotly_chart"))
                if s["layout"].get("yaxis2"))


def test_identical_runs_are_told_apart_on_the_page(monkeypatch, pair_ws):
    newer, older = tle.list_runs(pair_ws, "pair")
    for epoch in tle.run_metrics(pair_ws, older.id):
        values = {k: v for k, v in epoch.items() if k not in ("epoch", "phase")}
        record_epoch(pair_ws, newer.id, epoch["epoch"], epoch["phase"], values)

    at = open_runs(monkeypatch, pair_ws.root)
    names = set(traces(curves_spec(at)))
    # Drawn in the compare box's order; the one on top says which run it repeats.
    top, under = (newer.id, older.id) if f"{newer.id} val (identical to {older.id})" in (
        names) else (older.id, newer.id)
    assert f"{top} val (identical to {under})" in names and f"{under} val" in names
    by_name = traces(curves_spec(at))
    assert (by_name[f"{top} val (identical to {under})"]["line"]["dash"]
            != by_name[f"{under} val"]["line"]["dash"])
    assert f"Identical curves: {newer.id} and {older.id} (all curves)." in texts(at.caption)


def test_two_classes_show_no_top_k(monkeypatch, pair_root):
    runs = tle.list_runs(tle.Workspace(pair_root), "pair")
    at = open_runs(monkeypatch, pair_root, run=runs[0].id)
    assert "top-k acc" not in at.dataframe[0].value.columns
    assert not any("Top" in label for label in at.table[0].value.index)
    labels = [m.label for m in at.metric]
    assert "Val accuracy" in labels and not any(label.startswith("Top-") for label in labels)
    assert "Top-k accuracy" not in run_views.comparison_table(runs, {}).index


def test_weights_kept_last_epoch_and_test_accuracy(monkeypatch, pair_ws):
    best, last = tle.list_runs(pair_ws, "pair")
    update_run(pair_ws, best.id, summary={
        **best.summary, "best_epoch": 1, "restored_best": True, "final_val_accuracy": 0.25,
        "test_accuracy": 0.75})
    update_run(pair_ws, last.id, summary={
        **last.summary, "best_epoch": 2, "restored_best": False, "final_val_accuracy": 0.5})

    at = open_runs(monkeypatch, pair_ws.root, run=best.id)
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[best.id, "epochs"].endswith(" · best 1")
    assert table.loc[last.id, "epochs"].endswith(" · last")
    assert table.loc[best.id, "last val acc"] == pytest.approx(0.25)
    assert table.loc[best.id, "test acc"] == pytest.approx(0.75)

    compared = at.table[0].value
    kept_row = compared.loc[md_escape("Weights kept")]
    assert kept_row[best.id] == md_escape("best epoch 1 of 2 (restored)")
    assert kept_row[last.id] == md_escape("last epoch (2)")
    assert compared.loc[md_escape("Val accuracy, last epoch")][best.id] == md_escape("25.0%")
    assert compared.loc[md_escape("Test accuracy")][best.id] == md_escape("75.0%")

    metrics_shown = {m.label: m.value for m in at.metric}
    assert metrics_shown["Val accuracy"] == f"{best.val_accuracy:.1%}"
    assert metrics_shown["Val accuracy, last epoch"] == "25.0%"
    assert metrics_shown["Test accuracy"] == "75.0%"
    assert ("Val accuracy with the weights of the best epoch 1 of 2 (restored); the last "
            "epoch reached 25.0%.") in texts(at.caption)


def test_metrics_are_laid_out_wide_enough(monkeypatch, pair_root):
    at = open_runs(monkeypatch, pair_root)
    holding_metrics = [c for c in at.columns if c.metric]
    assert {m.label for c in holding_metrics for m in c.metric} >= {
        "Training time", "Trainable params", "Val accuracy"}
    assert min(c.weight for c in holding_metrics) >= 0.25  # four to a row at most


@pytest.mark.bad_input
def test_names_people_typed_are_shown_as_typed(monkeypatch, pair_ws):
    run = tle.list_runs(pair_ws, "pair")[0]
    hostile = "![x](http://host/p.png) [sign in](http://evil)"
    update_run(pair_ws, run.id, started_by=hostile)

    at = open_runs(monkeypatch, pair_ws.root, run=run.id)
    assert at.dataframe[0].value.set_index("run").loc[run.id, "started by"] == hostile
    captions = texts(at.caption)
    assert md_escape(hostile) in captions
    assert hostile not in captions and "](http" not in captions

    # Class names: literal in the per-class table, escaped for Plotly's labels.
    per_class = next(d.value for d in at.dataframe if "precision" in d.value.columns)
    assert set(per_class.index) == {BOLD_CLASS, LINK_CLASS}
    heatmap = next(s for s in (json.loads(e.proto.spec) for e in at.get("plotly_chart"))
                   if s["data"][0]["type"] == "heatmap")
    assert plotly_text(BOLD_CLASS) in heatmap["data"][0]["x"]
    assert "<u>" not in json.dumps(heatmap["data"][0]["x"])
    # Mistakes name both classes; each card shows them escaped.
    val = tle.evaluation(pair_ws, run.id)["val"]
    cards = [m.value for m in at.markdown if "→" in str(m.value)]
    assert len(cards) == min(12, val["n_misclassified"])
    for card, mistake in zip(cards, val["misclassified"], strict=False):
        assert card.startswith(f"**{md_escape(mistake['true'])}** → "
                               f":red[{md_escape(mistake['predicted'])}]")


def test_runs_on_two_datasets_are_told_apart_and_compared_within_one(monkeypatch, pair_ws,
                                                                     tmp_path):
    """Accuracies on different images do not rank settings: the table names each run's
    dataset, the comparison starts within one dataset and says when it is not, and Home's
    best is the current dataset's."""
    first = tle.list_runs(pair_ws, "pair")
    data = write_color_classes(tmp_path / "other", {"cyan": (0, 200, 200),
                                                    "gold": (220, 180, 0)}, per_class=8)
    other = tle.ingest_folder(pair_ws, data, project="pair", name="<b>other</b> set")
    late = train_tiny_run(pair_ws, other, learning_rate=0.05)
    assert late.status == "completed", late.error

    at = open_runs(monkeypatch, pair_ws.root)
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["dataset"]) == {"<b>other</b> set",
                                     tle.load_dataset(pair_ws, first[0].dataset_id).name}
    # The comparison starts on one dataset's runs: the current one (the newest dataset).
    assert at.multiselect(key="compare_runs").value == [late.id]
    at.multiselect(key="compare_runs").select(first[0].id).run()
    assert "These runs trained on different datasets" in texts(at.warning)
    compared = at.table[0].value
    assert compared.loc["Dataset", late.id] == md_escape(f"<b>other</b> set ({other.id})")

    home = open_app(monkeypatch, pair_ws.root, "views/home.py", project="pair")
    best = next(m for m in home.metric if m.label == "Best val accuracy")
    assert best.value == f"{late.val_accuracy:.1%}"
