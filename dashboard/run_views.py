"""Views of completed runs that the Prediction and Runs pages share: picking a run, the
cached model, predictions for uploaded images, run tables and comparisons. Rendering and
table shaping only; every number comes from tl_engine."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import tl_engine as tle
from dashboard import charts, state
from dashboard.formats import format_duration, format_params, format_percent
from dashboard.text import md_escape, plotly_text
from tl_engine.images import load_rgb_array
from tl_engine.scoring import top_k_for

IMAGE_TYPES = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"]
STATUS_BADGES = {  # status -> (material icon, badge colour)
    tle.RunStatus.QUEUED: (":material/schedule:", "gray"),
    tle.RunStatus.RUNNING: (":material/autorenew:", "blue"),
    tle.RunStatus.COMPLETED: (":material/check_circle:", "green"),
    tle.RunStatus.FAILED: (":material/error:", "red"),
    tle.RunStatus.CANCELLED: (":material/cancel:", "gray"),
    tle.RunStatus.INTERRUPTED: (":material/pause_circle:", "orange"),
}
THUMB_SIDE = 320
CARDS_PER_PAGE = 12
JUST_FINISHED_S = 600  # a run finished this recently has its model loaded ahead of use
# The spec fields a person compares runs by, in reading order, with readable names.
COMPARED_FIELDS = {name: setting.label for name, setting in tle.settings()}
METRICS_PER_ROW = 4  # wide enough for "4 min 02 s" beside a 1440 px page's sidebar


# --- labels ------------------------------------------------------------------------------


def weights_text(weights: str) -> str:
    return {"imagenet": "ImageNet", "none": "random init"}.get(
        weights, f"file {weights.rsplit('/', 1)[-1]}")


def status_badge(run: tle.RunRecord) -> str:
    """Markdown for a coloured status badge."""
    icon, colour = STATUS_BADGES.get(run.status, ("", "gray"))
    return f":{colour}-badge[{icon} {run.status}]"


def strategy_text(spec: tle.RunSpec) -> str:
    """"Partial fine-tune · top 2 blocks": the strategy and how much of the backbone it
    trains, short enough for a table cell (the run's details list the rest)."""
    return " · ".join(tle.describe(spec)["freeze"][:2])


def top_k_of(run: tle.RunRecord) -> int | None:
    """The k of the run's top-k accuracy (1 with two classes: then it is plain accuracy),
    None while the run has no classes recorded."""
    classes = run.result.classes
    return top_k_for(len(classes)) if classes else None


def top_k_accuracy(run: tle.RunRecord) -> float | None:
    """The run's top-k accuracy when it says more than its accuracy (k > 1), else None."""
    k = top_k_of(run)
    return run.result.val_top_k_accuracy if k and k > 1 else None


def weights_kept_text(run: tle.RunRecord, short: bool = False) -> str | None:
    """Which epoch's weights the run's model holds: "best epoch 3 of 10 (restored)" or
    "last epoch (10)"; None for runs that did not record it. `short` says "best 3" or
    "last", for the runs table, where the epochs are in the column beside."""
    restored = run.result.restored_best
    if restored is None:
        return None
    best = run.result.best_epoch
    if restored and best is not None:
        return f"best {best}" if short else f"best epoch {best} of {run.epochs_run} (restored)"
    return "last" if short else f"last epoch ({run.epochs_run})"


def rerun_if_a_worker_died(ws: tle.Workspace, shown: Sequence[tle.RunRecord]) -> None:
    """When a shown run is running and no worker holds it any more, it is marked
    interrupted (as every reader of a running run does) and the page redraws to show it."""
    if any(r.status == tle.RunStatus.RUNNING for r in shown) and tle.recover_interrupted(ws):
        st.rerun()


def run_choice_label(run: tle.RunRecord) -> str:
    """backbone · strategy · val acc · id: what tells completed runs apart."""
    return (f"{run.spec.backbone} · {strategy_text(run.spec)} · "
            f"val {format_percent(run.val_accuracy)} · {run.id}")


def default_run(runs: Sequence[tle.RunRecord], current: str | None,
                me: str | None = None) -> tle.RunRecord:
    """The run `current` when it is among `runs`, else the newest one `me` started, else
    the best by validation accuracy (the newest among equals: `runs` come newest first)."""
    chosen = next((r for r in runs if r.id == current), None)
    mine = next((r for r in runs if me and r.started_by == me), None)
    return chosen or mine or max(runs, key=lambda r: r.val_accuracy or 0.0)


def pick_run(runs: Sequence[tle.RunRecord], label: str, key: str, best_default: bool = True,
             format_func: Any = run_choice_label) -> tle.RunRecord:
    """A selectbox over `runs` that shows the run in the URL when it is one of them, and
    puts the user's choice in the URL. A default pick leaves the URL alone, so the run
    another page is following (say, one still training) stays there."""
    by_id = {r.id: r for r in runs}
    current = state.current_run_id()
    if current in by_id:
        st.session_state[key] = current
    elif st.session_state.get(key) not in by_id:
        st.session_state[key] = (default_run(runs, None, state.user_name()) if best_default
                                 else runs[0]).id
    st.selectbox(label, list(by_id), key=key,
                 format_func=lambda run_id: format_func(by_id[run_id]),
                 on_change=lambda: state.set_run(st.session_state[key]))
    return by_id[st.session_state[key]]


# --- prediction ----------------------------------------------------------------------------


def model_version(ws: tle.Workspace, run_id: str) -> int:
    """Changes when the run's model file is replaced (say, by its head-phase weights), so
    caches keyed by it never serve the model it held before."""
    return tle.runs.model_path(ws, run_id).stat().st_mtime_ns


@st.cache_resource(show_spinner="Loading the model…", max_entries=8)
def _predictor(root: str, run_id: str, version: int) -> Any:
    state.device()
    return tle.load_predictor(tle.Workspace(root), run_id)


def predictor(root: str, run_id: str) -> Any:
    """The run's model, loaded once per server process and model file."""
    return _predictor(root, run_id, model_version(tle.Workspace(root), run_id))


def _load_quietly(root: str, run_id: str, version: int) -> None:
    with contextlib.suppress(Exception):  # the Prediction page loads it again and says why
        _predictor(root, run_id, version)


@st.cache_resource(show_spinner=False, max_entries=8)
def _preloading(root: str, run_id: str, version: int) -> threading.Thread:
    thread = threading.Thread(target=_load_quietly, args=(root, run_id, version),
                              name=f"preload-{run_id}", daemon=True)
    thread.start()
    return thread


def just_finished(run: tle.RunRecord) -> bool:
    """Whether the run finished moments ago: the one people try next, unlike the old runs
    someone browses through."""
    return run.finished_at is not None and time.time() - run.finished_at < JUST_FINISHED_S


def preload_predictor(ws: tle.Workspace, run_id: str) -> None:
    """Start loading a completed run's model in the background (once per model file), so
    the Prediction page finds it loaded: loading takes seconds, and the first thing people
    do after a run completes is try it. A page that asks for it meanwhile waits for this
    load rather than starting its own."""
    _preloading(str(ws.root), run_id, model_version(ws, run_id))


@st.cache_data(show_spinner="Predicting…", max_entries=32)
def _predict_all(root: str, run_id: str, version: int,
                 images: tuple[tle.BatchItem, ...]) -> list:
    """Every class's probability for each image, so the top-k slider never predicts again."""
    model = _predictor(root, run_id, version)
    return model.predict(list(images), top_k=len(model.labels))


def predict(ws: tle.Workspace, run_id: str, images: Sequence[tle.BatchItem],
            top_k: int) -> list[tle.Prediction]:
    ranked = _predict_all(str(ws.root), run_id, model_version(ws, run_id), tuple(images))
    return [dataclasses.replace(p, top=list(p.top[:top_k])) for p in ranked]


@st.cache_data(show_spinner=False, max_entries=256)
def thumbnail(data: bytes, side: int = THUMB_SIDE) -> np.ndarray:
    """A small RGB array, decoded by the engine as the model saw it (EXIF rotation, any mode)."""
    return load_rgb_array(data, "image", max_side=side)


def top_k_text(top: Sequence[tuple[str, float]]) -> str:
    return " · ".join(f"{label} {p:.1%}" for label, p in top)


def probability_column(label: str) -> str:
    """The table column of one class's probability: `p(<class>)`, never a fixed column's name."""
    return f"p({label})"


def predictions_table(predictions: Sequence[tle.Prediction],
                      labels: Sequence[str]) -> pd.DataFrame:
    """One row per image: its path (relative, inside a folder or archive), the predicted
    label and confidence, the top-k text with the run's fixed k (`tle.top_k_for`, whatever
    the cards show), one probability column (0–1) per class, its familiarity (0–1, empty
    for runs without a familiarity profile), whether it is unfamiliar, whether its
    confidence is under the "not sure" threshold, and the error."""
    k = tle.top_k_for(len(labels))
    rows = []
    for p in predictions:
        ranked = sorted(p.probabilities.items(), key=lambda item: -item[1])
        rows.append({
            "path": p.name, "label": p.label or "", "confidence": p.confidence,
            "top-k": top_k_text(ranked[:k]),
            **{probability_column(label): p.probabilities.get(label) for label in labels},
            "familiarity": p.familiarity,
            "unfamiliar": p.unfamiliar,
            "not_sure": p.not_sure,
            "error": p.error or "",
        })
    columns = ["path", "label", "confidence", "top-k",
               *(probability_column(label) for label in labels), "familiarity", "unfamiliar",
               "not_sure", "error"]
    table = pd.DataFrame(rows, columns=columns)
    numbers = ["confidence", *(probability_column(label) for label in labels), "familiarity"]
    table[numbers] = table[numbers].astype(float)
    table[["unfamiliar", "not_sure"]] = table[["unfamiliar", "not_sure"]].astype(bool)
    return table


UNFAMILIAR_TEXT = "This looks like none of the training images"


def not_sure_help(temperature: float | None) -> str:
    what = ("calibrated confidence: this run's temperature scaling (T = "
            f"{temperature:.2f}, fitted on its validation images)" if temperature is not None
            else "confidence (this run was trained before calibration: not calibrated)")
    return (f"An image whose top {what} is under this threshold is answered \"not sure\", "
            "with its top classes in small print; 0 % never says so. With calibrated "
            "confidences, about 60 % of the images predicted with 60 % confidence are right.")


def familiarity_text(familiarity: float | None) -> str:
    return "familiarity –" if familiarity is None else f"familiarity {familiarity:.0%}"


FAMILIARITY_HELP = (
    "The share of this run's calibration images (validation images, and training images "
    "measured against a profile fitted without them) that look less like the training "
    "images than this one, in the model's feature space: about 50 % for a typical image, "
    "near 0 % for one unlike any of them. Below 5 % the image is unfamiliar and no label "
    "is given.")


def prediction_card(prediction: tle.Prediction, data: bytes | None, position: int,
                    why: Callable[[tle.Prediction, bytes, int], None] | None = None) -> None:
    """One image's card; `position` (its place in the batch) keys the card's elements, so
    the same photo twice in a batch gets two cards. `why` adds an explanation under it."""
    with st.container(border=True):
        if prediction.error:
            st.text(prediction.name)
            st.error(md_escape(prediction.error), icon=":material/broken_image:")
            return
        picture, result = st.columns([2, 3], vertical_alignment="center")
        picture.image(thumbnail(data), width="stretch", alt=prediction.name)
        picture.text(prediction.name)  # user-supplied: never Markdown
        if prediction.unfamiliar:
            # A class name here would read as an answer; the model has none for this image.
            result.warning(f"**{UNFAMILIAR_TEXT}** ({familiarity_text(prediction.familiarity)})",
                           icon=":material/help:")
            result.caption(f"Closest class: {md_escape(prediction.label)} "
                           f"({prediction.confidence:.1%}), which means little here.")
            return
        if prediction.not_sure:
            # Below the threshold the top class is a guess: name the candidates, claim none.
            result.info("**Not sure**", icon=":material/question_mark:")
            result.caption("Top classes: " + md_escape(top_k_text(prediction.top)))
            if why is not None and data is not None:
                why(prediction, data, position)
            return
        result.metric("Prediction", md_escape(prediction.label),
                      f"{prediction.confidence:.1%} confident", delta_color="off",
                      delta_arrow="off")
        if prediction.familiarity is not None:
            result.caption(f"{familiarity_text(prediction.familiarity).capitalize()}: "
                           "how much it looks like the training images", help=FAMILIARITY_HELP)
        result.plotly_chart(charts.top_k_bar(prediction.top), width="stretch",
                            config={"displayModeBar": False},
                            key=f"prediction_chart_{position}")
        if why is not None and data is not None:
            why(prediction, data, position)


def show_predictions(ws: tle.Workspace, run_id: str, images: Sequence[tle.BatchItem],
                     top_k: int, not_sure_below: float | None = None,
                     why: Callable[[tle.Prediction, bytes, int], None] | None = None
                     ) -> list[tle.Prediction]:
    """Per-image cards (paged) with the slider's top-k, then the batch table with a CSV
    download (fixed top-k, every class's probability); predictions whose confidence is
    under `not_sure_below` are "not sure"; `why` explains a card on request."""
    ranked = [p.judged(not_sure_below) for p in
              _predict_all(str(ws.root), run_id, model_version(ws, run_id), tuple(images))]
    predictions = [dataclasses.replace(p, top=list(p.top[:top_k])) for p in ranked]
    failed = sum(1 for p in predictions if p.error)
    unfamiliar = sum(1 for p in predictions if p.unfamiliar)
    cols = st.columns(5)
    cols[0].metric("Images", len(predictions))
    cols[1].metric("Predicted", len(predictions) - failed)
    cols[2].metric("Not sure", sum(1 for p in predictions if p.not_sure and not p.unfamiliar),
                   help="Calibrated confidence under the threshold you chose")
    cols[3].metric("Unfamiliar", unfamiliar, help="Like none of the training images")
    cols[4].metric("Unreadable", failed)

    cards = [(position, prediction, None if isinstance(item, tle.Refused) else item[1])
             for position, (prediction, item) in enumerate(zip(predictions, images,
                                                               strict=True))]
    shown = paged(cards, key="prediction_page", per_page=CARDS_PER_PAGE)
    for row_start in range(0, len(shown), 2):
        columns = st.columns(2)
        for column, (position, prediction, data) in zip(columns, shown[row_start:row_start + 2],
                                                        strict=False):
            with column:
                prediction_card(prediction, data, position, why)

    st.subheader("All predictions")
    labels = predictor(str(ws.root), run_id).labels
    table = predictions_table(ranked, labels)
    k = tle.top_k_for(len(labels))
    st.dataframe(
        table, hide_index=True, width="stretch", placeholder="",
        column_config={
            "path": st.column_config.TextColumn(
                "path", help="The file name, or its path inside the uploaded folder or .zip"),
            "confidence": st.column_config.ProgressColumn(
                "confidence", format="percent", min_value=0.0, max_value=1.0),
            "top-k": st.column_config.TextColumn(
                "top-k", help=f"The {k} most likely classes (k fixed for this run's "
                f"{len(labels)} classes)"),
            **{probability_column(label): st.column_config.NumberColumn(
                probability_column(label), format="%.4f",
                help="Probability of this class, from 0 to 1") for label in labels},
            "familiarity": st.column_config.NumberColumn(
                "familiarity", format="%.3f", help=FAMILIARITY_HELP),
            "unfamiliar": st.column_config.CheckboxColumn(
                "unfamiliar", help="Like none of the training images: its label means little"),
            "not_sure": st.column_config.CheckboxColumn(
                "not_sure", help="Confidence under the \"not sure\" threshold"),
        },
    )
    st.download_button("Download CSV", table.to_csv(index=False).encode(),
                       file_name=f"predictions-{run_id}.csv", mime="text/csv",
                       icon=":material/download:",
                       help=f"One row per image: path, label, confidence, top-{k} text, "
                       "a p(class) column per class with its probability (0–1), its "
                       "familiarity (0–1), whether it is unfamiliar and whether it is "
                       "not sure (under the threshold).")
    return predictions


def paged(items: Sequence[Any], key: str, per_page: int) -> Sequence[Any]:
    """The items on the chosen page, with a pager when there is more than one page."""
    pages = max(1, -(-len(items) // per_page))
    if pages == 1:
        return items
    page = st.pagination(pages, key=key)
    page = min(max(page, 1), pages)
    st.caption(f"{(page - 1) * per_page + 1}–{min(page * per_page, len(items))} "
               f"of {len(items)}")
    return items[(page - 1) * per_page:page * per_page]


# --- runs ----------------------------------------------------------------------------------


def started_by(run: tle.RunRecord) -> str:
    """Who started a run, as every page names them (runs from the CLI, or from laptop mode
    with no name typed, name no one)."""
    return run.started_by or "anonymous"


def runs_table(runs: Sequence[tle.RunRecord], ws: tle.Workspace | None = None,
               dataset_names: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per run. The columns no run has a value for (test accuracy without test
    splits, top-k with two classes, ...) are left out. With `ws`, a run that trained
    without completing (cancelled, interrupted, failed, running) shows how far it got:
    its epochs, its last validation accuracy and its time; it keeps no model, so no
    "val acc". With `dataset_names`, a "dataset" column when the runs trained on more than
    one (their accuracies are not comparable)."""
    rows = []
    for run in runs:
        summary = run.result
        kept = weights_kept_text(run, short=True)
        epochs = run.epochs_run if run.status == tle.RunStatus.COMPLETED else None
        last_val, seconds = summary.final_val_accuracy, run.seconds
        if ws is not None and epochs is None and (run.started_at is not None
                                                  or run.earlier_seconds):
            so_far = tle.trained_so_far(ws, run)
            epochs, last_val, seconds = so_far.epochs, so_far.last_val_accuracy, so_far.seconds
        rows.append({
            "run": run.id,
            "status": run.status,
            "dataset": (dataset_names or {}).get(run.dataset_id, run.dataset_id),
            "model": f"{run.spec.backbone} · {weights_text(run.spec.weights)}",
            "strategy": strategy_text(run.spec),
            "epochs": None if epochs is None else f"{epochs}" + (f" · {kept}" if kept else ""),
            "val acc": run.val_accuracy,
            "last val acc": last_val,
            "test acc": summary.test_accuracy,
            "top-k acc": top_k_accuracy(run),
            "time": format_duration(seconds) if seconds is not None else None,
            "started by": run.started_by or "",
            "created": datetime.fromtimestamp(run.created_at),
        })
    table = pd.DataFrame(rows, columns=[
        "run", "status", "dataset", "model", "strategy", "epochs", "val acc", "last val acc",
        "test acc", "top-k acc", "time", "started by", "created"])
    numbers = ["val acc", "last val acc", "test acc", "top-k acc"]
    table[numbers] = table[numbers].astype("Float64")  # <NA> while unknown
    optional = ["last val acc", "test acc", "top-k acc"]
    dropped = [c for c in optional if table[c].isna().all()]
    if dataset_names is None or len({run.dataset_id for run in runs}) < 2:
        dropped.append("dataset")
    return table.drop(columns=dropped)


RUNS_COLUMNS = {
    "run": st.column_config.TextColumn("run", pinned=True),  # stays in view when scrolled
    "model": st.column_config.TextColumn("model", help="Backbone · starting weights"),
    "epochs": st.column_config.TextColumn(
        "epochs", help="Epochs trained · the epoch whose weights the model keeps: the best "
        "one by validation accuracy (restored after training), or the last one"),
    "val acc": st.column_config.NumberColumn(
        "val acc", format="percent", help="Validation accuracy of the weights the model keeps"),
    "last val acc": st.column_config.NumberColumn(
        "last val acc", format="percent",
        help="Validation accuracy at the last epoch trained"),
    "test acc": st.column_config.NumberColumn("test acc", format="percent"),
    "top-k acc": st.column_config.NumberColumn("top-k acc", format="percent"),
    "time": st.column_config.TextColumn("time"),
    "created": st.column_config.DatetimeColumn("created", format="MMM D HH:mm"),
}
# What the grid needs per character of its 14 px font, and around the text (padding, the
# sort arrow): enough that no cell or header is cut short with an ellipsis.
PIXELS_PER_CHARACTER = 7
CELL_PADDING = 28


def runs_columns(table: pd.DataFrame) -> dict[str, Any]:
    """RUNS_COLUMNS for the columns of `table`, each as wide as its longest header or cell."""
    config = {}
    for name in table.columns:
        column = dict(RUNS_COLUMNS.get(name) or st.column_config.TextColumn(name))
        column["width"] = fitted_width([name, *map(_shown, table[name])])
        config[name] = column
    return config


def fitted_width(texts: Sequence[str]) -> int:
    return CELL_PADDING + PIXELS_PER_CHARACTER * max(map(len, texts), default=0)


def _shown(value: Any) -> str:
    """A cell as the runs table shows it (percentages, whole epochs, minutes)."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, datetime):
        return value.strftime("%b %d %H:%M")
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if value.is_integer() else f"{value:.2%}"
    return str(value)


def comparison_table(runs: Sequence[tle.RunRecord], evaluations: dict[str, dict[str, Any]],
                     dataset_names: dict[str, str] | None = None) -> pd.DataFrame:
    """One column per run: the dataset when they differ in it, the spec fields that
    differ among them, then the metrics."""
    specs = {r.id: r.spec.to_dict() for r in runs}
    rows: dict[str, dict[str, Any]] = {}
    if len({r.dataset_id for r in runs}) > 1:
        names = dataset_names or {}
        rows["Dataset"] = {r.id: f"{names.get(r.dataset_id, r.dataset_id)} ({r.dataset_id})"
                           for r in runs}
    for name, title in COMPARED_FIELDS.items():
        values = {run_id: _cell(spec.get(name)) for run_id, spec in specs.items()}
        if len(set(values.values())) > 1:
            rows[title] = values
    metrics = {
        "Val accuracy": lambda r, e: format_percent(r.val_accuracy),
        "Weights kept": lambda r, e: weights_kept_text(r) or "–",
        "Val accuracy, last epoch":
            lambda r, e: format_percent(r.result.final_val_accuracy),
        "Val accuracy after the head phase":
            lambda r, e: format_percent(r.result.head_val_accuracy),
        "Test accuracy": lambda r, e: format_percent(r.result.test_accuracy),
        # With two classes top-k is top-1, the accuracy again: "–", and the row goes.
        "Top-k accuracy": lambda r, e: format_percent(top_k_accuracy(r)),
        "Macro F1": lambda r, e: "–" if not e else f"{e['macro_f1']:.3f}",
        "Epochs run":
            lambda r, e: str(r.epochs_run) if r.status == tle.RunStatus.COMPLETED else "–",
        "Time": lambda r, e: format_duration(r.seconds),
        "Trainable params": lambda r, e: format_params(r.result.trainable_params),
        "Status": lambda r, e: r.status,
    }
    for title, value in metrics.items():
        values = {r.id: value(r, evaluations.get(r.id)) for r in runs}
        if set(values.values()) != {"–"}:  # e.g. no run has a test split
            rows[title] = values
    return pd.DataFrame(rows).T[[r.id for r in runs]]


def spec_table(spec: tle.RunSpec) -> pd.DataFrame:
    values = spec.to_dict()
    names = [name for name in COMPARED_FIELDS if name in values]
    return pd.DataFrame({"setting": [COMPARED_FIELDS[name] for name in names],
                         "value": [_cell(values[name]) for name in names]})


def detail_metrics(run: tle.RunRecord, val: dict[str, Any]) -> dict[str, str]:
    """The headline numbers of a completed run, label -> value, leaving out what it lacks
    (test accuracy without a test split, top-k with two classes, ...)."""
    summary = run.result
    items = {"Val accuracy": format_percent(run.val_accuracy)}
    if summary.final_val_accuracy is not None:
        items["Val accuracy, last epoch"] = format_percent(summary.final_val_accuracy)
    if summary.test_accuracy is not None:
        items["Test accuracy"] = format_percent(summary.test_accuracy)
    if val.get("top_k", 1) > 1:
        items[f"Top-{val['top_k']} accuracy"] = format_percent(val["top_k_accuracy"])
    items["Macro F1"] = f"{val['macro_f1']:.3f}"
    items["Epochs"] = str(run.epochs_run)
    items["Training time"] = format_duration(run.seconds)
    items["Trainable params"] = format_params(summary.trainable_params)
    return items


def show_metrics(items: dict[str, str]) -> None:
    """Metrics in rows of METRICS_PER_ROW, so no value is cut short."""
    labels = list(items)
    for start in range(0, len(labels), METRICS_PER_ROW):
        for column, label in zip(st.columns(METRICS_PER_ROW),
                                 labels[start:start + METRICS_PER_ROW], strict=False):
            column.metric(label, items[label])


def weights_caption(run: tle.RunRecord) -> str | None:
    """What the val accuracy was measured on, and the last epoch's figure beside it."""
    kept = weights_kept_text(run)
    if kept is None:
        return None
    text = f"Val accuracy with the weights of the {kept}"
    final = run.result.final_val_accuracy
    if final is not None:
        text += f"; the last epoch reached {format_percent(final)}"
    head = run.result.head_val_accuracy
    if head is not None:
        text += f"; the head phase alone reached {format_percent(head)}"
    return text + "."


def identical_curves_text(curves: dict[str, list[dict[str, Any]]]) -> str | None:
    """Markdown naming the compared runs whose curves lie on top of each other: whole runs,
    or single curves (say, two untrained runs both stuck at 50 % val accuracy)."""
    whole = charts.identical_groups(curves)
    found: dict[frozenset[str], list[str]] = {}
    for run, twins in whole.items():
        found.setdefault(frozenset([run, *twins]), ["all curves"])
    for key in charts.CURVE_METRICS:
        for run, twins in charts.identical_groups(curves, (key,)).items():
            members = frozenset([run, *twins])
            if not any(members <= group for group, what in found.items()
                       if what == ["all curves"]):
                what = found.setdefault(members, [])
                if (name := key.replace("_", " ")) not in what:
                    what.append(name)
    if not found:
        return None
    parts = [" and ".join(md_escape(run) for run in curves if run in members)
             + f" ({', '.join(what)})" for members, what in found.items()]
    return ("Identical curves: " + "; ".join(parts) + ". They lie on top of each other; "
            "the later ones are dotted, with other markers.")


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def per_class_table(val: dict[str, Any]) -> pd.DataFrame:
    table = pd.DataFrame(val["per_class"]).T[["precision", "recall", "f1", "support"]]
    table.index.name = "class"
    return table


def per_class_bar(table: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for i, metric in enumerate(("precision", "recall", "f1")):
        fig.add_trace(go.Bar(name=metric, x=[plotly_text(c) for c in table.index],
                             y=table[metric],
                             marker_color=charts.PALETTE[i],
                             hovertemplate="%{x}: %{y:.1%}<extra>" + metric + "</extra>"))
    fig.update_layout(barmode="group", height=300, yaxis={"range": [0, 1.05],
                      "tickformat": ".0%"}, legend={"orientation": "h", "y": -0.2},
                      margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def mistake_card(ws: tle.Workspace, mistake: dict[str, Any]) -> None:
    with st.container(border=True):
        path = ws.image_path(mistake["hash"]) if mistake.get("hash") else None
        if path is not None and path.is_file():
            st.image(str(path), width="stretch")
        else:
            st.caption("(image no longer stored)")
        st.markdown(f"**{md_escape(mistake['true'])}** → :red[{md_escape(mistake['predicted'])}]"
                    f" ({mistake['confidence']:.0%})")
        top = list(mistake.get("probabilities", {}).items())[:3]
        st.caption(f"{md_escape(mistake.get('filename', ''))}  \n{md_escape(top_k_text(top))}")
