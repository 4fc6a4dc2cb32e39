"""Dashboard controls for run settings, generated from the spec's field table: each
setting's label, help, bounds, choices and the strategies it applies to come from
`tl_engine.spec`, so a new setting appears on its page without page code."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import streamlit as st

import tl_engine as tle
from tl_engine import spec as spec_table

KEY_PREFIX = {"model": "model_", "freeze": "freeze_", "training": "train_"}
COLUMNS = 4


def widget_key(name: str) -> str:
    return KEY_PREFIX[tle.setting(name).page] + name


def _bounds(setting: tle.Setting, step: float) -> tuple[float, float]:
    low = (setting.low or 0) + (step if setting.open_low else 0)
    high = setting.high - (step if setting.open_high else 0)
    return low, high


def _seed(key: str, value: Any, allowed: Callable[[Any], bool]) -> None:
    """Start a widget from the draft; a value it can no longer show (another backbone,
    fewer layers) is replaced rather than left to break the widget."""
    if key not in st.session_state or not allowed(st.session_state[key]):
        st.session_state[key] = value


def control(name: str, draft: Mapping[str, Any], where: Any = st, *,
            label: str | None = None, low: float | None = None, high: float | None = None,
            value: Any = None, options: list[Any] | None = None,
            format_func: Callable[[Any], str] | None = None, disabled: bool = False,
            more_help: str = "", on_change: Callable[[], None] | None = None) -> Any:
    """The widget for run setting `name`, seeded from the draft; returns its value.

    Keyword arguments narrow what the table declares to what this page knows (the
    backbone's layer count as a bound, the server's weights as options)."""
    setting, kind = tle.setting(name), spec_table.value_type(name)
    key = widget_key(name)
    current = draft.get(name, spec_table.default(name)) if value is None else value
    common = {"label": label or setting.label, "key": key, "disabled": disabled,
              "help": (setting.help + " " + more_help).strip(), "on_change": on_change}
    if kind is bool:
        _seed(key, bool(current), lambda v: isinstance(v, bool))
        return where.checkbox(**common)
    if kind is tuple:
        _seed(key, [v for v in current if v in setting.choices],
              lambda v: isinstance(v, list) and set(v) <= set(setting.choices))
        return list(where.multiselect(options=list(setting.choices), placeholder="none",
                                      format_func=setting.choice_name, **common))
    if kind is str:
        choices = options if options is not None else list(setting.choices)
        _seed(key, current if current in choices else choices[0], lambda v: v in choices)
        shown = format_func or setting.choice_name
        if options is None and setting.choice_help:
            return where.radio(options=choices, format_func=shown,
                               captions=[setting.choice_help.get(c, "") for c in choices],
                               **common)
        if options is None and len(choices) <= 3:
            return where.radio(options=choices, format_func=shown, horizontal=True, **common)
        return where.selectbox(options=choices, format_func=shown, **common)
    if kind is float and setting.stops:
        stops = sorted(set(setting.stops) | {float(current)})
        _seed(key, float(current), lambda v: v in stops)
        return float(where.select_slider(options=stops, format_func="{:g}".format, **common))
    step = setting.step or 1
    bottom, top = _bounds(setting, step)
    bottom = bottom if low is None else low
    top = top if high is None else high
    fits = lambda v: isinstance(v, (int, float)) and bottom <= v <= top  # noqa: E731
    if kind is float:
        _seed(key, min(max(float(current), bottom), top), fits)
        return float(where.slider(min_value=float(bottom), max_value=float(top),
                                  step=float(step), **common))
    _seed(key, int(min(max(int(current), bottom), top)), fits)
    if setting.slider:
        return int(where.slider(min_value=int(bottom), max_value=int(top), step=int(step),
                                **common))
    return int(where.number_input(min_value=int(bottom), max_value=int(top), step=int(step),
                                  **common))


def page_settings(page: str, draft: Mapping[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """The settings whose controls live on `page` and apply to the draft's strategy."""
    strategy = draft.get("strategy", spec_table.default("strategy"))
    return [name for name, setting in tle.settings()
            if setting.page == page and setting.applies(strategy) and name not in skip]


def _wide(name: str) -> bool:
    kind = spec_table.value_type(name)
    return kind is tuple or (kind is str and len(tle.setting(name).choices) <= 3)


def grid(names: list[str], draft: Mapping[str, Any], columns: int = COLUMNS,
         overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Controls for `names` in reading order: numbers and pickers `columns` to a row, then
    lists and short choices a row each, then the switches together."""
    overrides = overrides or {}
    values: dict[str, Any] = {}
    switches = [n for n in names if spec_table.value_type(n) is bool]
    wide = [n for n in names if n not in switches and _wide(n)]
    narrow = [n for n in names if n not in switches and n not in wide]
    for start in range(0, len(narrow), columns):
        for cell, name in zip(st.columns(columns), narrow[start:start + columns], strict=False):
            values[name] = control(name, draft, cell, **overrides.get(name, {}))
    for name in wide:
        values[name] = control(name, draft, **overrides.get(name, {}))
    if switches:
        # Side by side, each as wide as its label: equal columns cut the longer ones short.
        row = st.container(horizontal=True, gap="large")
        for name in switches:
            values[name] = control(name, draft, row, **overrides.get(name, {}))
    return values
