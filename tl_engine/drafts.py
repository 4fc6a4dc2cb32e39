"""Run settings a person is still editing, kept per project and per person in the store,
so a reload, a second tab or the next day starts from where they left off."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from .spec import RunSpec, canonical_json
from .store import Workspace


def _known(values: dict[str, Any]) -> dict[str, Any]:
    """Drop settings this version no longer has; missing ones take their defaults."""
    names = {f.name for f in dataclasses.fields(RunSpec)}
    return {k: v for k, v in values.items() if k in names}


def _well_typed(values: dict[str, Any]) -> dict[str, Any]:
    """Drop values whose type is not the setting's (a draft from an older version, or a
    hand-edited one), so pages never meet "x" epochs or a null augmentation list."""
    defaults = RunSpec().to_dict()
    kept = {}
    for name, value in values.items():
        default = defaults[name]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, list):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, type(default))
        if ok:
            kept[name] = int(value) if isinstance(default, int) and not isinstance(
                default, bool) and float(value).is_integer() else value
    return kept


def load_draft(ws: Workspace, project: str, user: str | None) -> dict[str, Any] | None:
    """The stored draft of `user` (None: the anonymous one) in `project`, as a full spec
    dict with defaults filled in; None when they have none."""
    rows = ws.query("SELECT spec_json FROM drafts WHERE project = ? AND user = ?",
                    (project, user or ""))
    if not rows:
        return None
    try:
        stored = json.loads(rows[0]["spec_json"])
    except ValueError:
        return None
    if not isinstance(stored, dict):
        return None
    return {**RunSpec().to_dict(), **_well_typed(_known(stored))}


def save_draft(ws: Workspace, project: str, user: str | None, draft: dict[str, Any]) -> None:
    """Store the draft unless it is unchanged (pages call this on every script run)."""
    text = canonical_json(_known(draft))
    with ws.transaction() as db:
        db.execute(
            "INSERT INTO drafts (project, user, spec_json, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (project, user) DO UPDATE SET spec_json = excluded.spec_json, "
            "updated_at = excluded.updated_at WHERE drafts.spec_json != excluded.spec_json",
            (project, user or "", text, time.time()),
        )
