"""Who may do what in a project: the one access check every page action passes through.

A project has an owner (who created it) and members, each a viewer (look, predict,
export) or an editor (also upload, train, and cancel or delete their own runs). Admins
may do everything everywhere. Laptop mode has one identity, `Identity.everyone()`, an
admin, so no check ever refuses anything there.

Memberships live in the workspace's SQLite index, in a table this module creates on
first use; names compare case-insensitively (ASCII), as e-mail addresses do.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from .errors import NotFound, TLError
from .store import Workspace, validate_project_name

if TYPE_CHECKING:
    from .runs import RunRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS project_members (
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    name TEXT NOT NULL COLLATE NOCASE,
    role TEXT NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    added_at REAL NOT NULL,
    PRIMARY KEY (project, name)
);
CREATE INDEX IF NOT EXISTS project_members_by_name ON project_members (name);
"""


class AccessDenied(TLError):
    """The signed-in person's role in the project does not allow the action."""


class Role(Enum):
    """A person's standing in a project, weakest first; ADMIN is an account's, not a
    membership's."""

    VIEWER = "viewer"
    EDITOR = "editor"
    OWNER = "owner"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


MEMBER_ROLES = (Role.VIEWER, Role.EDITOR)  # what an owner can give; one owner per project

# action -> (the weakest role allowed, how a refusal names the action)
ACTIONS: dict[str, tuple[Role, str]] = {
    "view": (Role.VIEWER, "Opening the project"),
    "predict": (Role.VIEWER, "Predicting"),
    "export": (Role.VIEWER, "Exporting a model"),
    "upload": (Role.EDITOR, "Adding a dataset"),
    "delete_dataset": (Role.EDITOR, "Deleting a dataset"),
    "analyse_dataset": (Role.EDITOR, "Looking for wrong labels"),
    "revise_dataset": (Role.EDITOR, "Saving a new version of a dataset"),
    "train": (Role.EDITOR, "Starting a training run"),
    "sweep": (Role.EDITOR, "Sweeping the freeze strategies"),
    "probe": (Role.EDITOR, "Probing backbones"),
    "lr_find": (Role.EDITOR, "Finding a learning rate"),
    "resume_run": (Role.EDITOR, "Resuming a run"),
    "cancel_run": (Role.EDITOR, "Cancelling a run"),
    "change_run": (Role.EDITOR, "Changing a run's model"),
    "delete_run": (Role.EDITOR, "Deleting a run"),
    "manage_members": (Role.OWNER, "Adding or removing members"),
}
# Editors may do these only to runs they started; the owner and admins to any run.
OWN_RUN_ACTIONS = frozenset({"cancel_run", "change_run", "delete_run", "resume_run"})


@dataclass(frozen=True)
class Identity:
    """Who is acting: a signed-in name (an account name, or an e-mail address from the
    organisation's provider) and whether they administer the instance."""

    name: str
    admin: bool = False

    @classmethod
    def everyone(cls) -> Identity:
        """Laptop mode: no sign-in, so whoever uses the app may do everything."""
        return cls(name="", admin=True)

    @property
    def signed_in(self) -> bool:
        return bool(self.name)


@dataclass(frozen=True)
class Member:
    name: str
    role: Role
    added_at: float


_READY: dict[tuple[str, str], int] = {}  # (index, schema) -> the index's inode then


def apply_schema(ws: Workspace, schema: str) -> None:
    """Run `schema` (CREATE ... IF NOT EXISTS) on the workspace's index once per process,
    again if the index file was replaced since."""
    key = (str(ws.db_path), schema)
    try:
        inode = os.stat(ws.db_path).st_ino
    except FileNotFoundError:
        inode = -1
    if _READY.get(key) == inode:
        return
    db = ws.connect()
    try:
        db.executescript(schema)
    finally:
        db.close()
    _READY[key] = os.stat(ws.db_path).st_ino


def ensure_schema(ws: Workspace) -> None:
    """Create the memberships table in this workspace's index if it is not there yet."""
    apply_schema(ws, SCHEMA)


def _role(db: sqlite3.Connection, identity: Identity, project: str) -> Role | None:
    if identity.admin:
        return Role.ADMIN
    if not identity.name:
        return None
    row = db.execute("SELECT role FROM project_members WHERE project = ? AND name = ?",
                     (project, identity.name)).fetchone()
    return Role(row["role"]) if row else None


def role_of(ws: Workspace, identity: Identity, project: str) -> Role | None:
    """`identity`'s role in `project`: ADMIN for admins, None for people not in it."""
    ensure_schema(ws)
    db = ws.connect()
    try:
        return _role(db, identity, project)
    finally:
        db.close()


def no_access_message(project: str) -> str:
    return f"You don't have access to project “{project}”; ask its owner to add you."


def require(ws: Workspace, identity: Identity, project: str, action: str,
            run: RunRecord | None = None) -> Role:
    """Allow `action` in `project` for `identity`, or raise AccessDenied saying why and
    whom to ask. Actions on one run pass that run: editors may cancel, change or delete
    only the runs they started. Returns the role that allowed it."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    needed, what = ACTIONS[action]
    role = role_of(ws, identity, project)
    if role is None:
        raise AccessDenied(no_access_message(project))
    if not role.allows(needed):
        raise AccessDenied(f"{what} in project “{project}” needs the {needed.value} role; you "
                           f"are a {role.value}. Ask the project's owner.")
    if run is not None:
        if run.project != project:
            raise AccessDenied(f"Run {run.id} is not part of project “{project}”.")
        if (action in OWN_RUN_ACTIONS and not role.allows(Role.OWNER)
                and (run.started_by or "").casefold() != identity.name.casefold()):
            raise AccessDenied(f"{what}: run {run.id} was started by "
                               f"{run.started_by or 'someone else'}; only they, the project's "
                               "owner or an admin can do that.")
    return role


def allowed(ws: Workspace, identity: Identity, project: str, action: str,
            run: RunRecord | None = None) -> bool:
    """`require` as a yes or no, for showing or hiding what a person may not do."""
    try:
        require(ws, identity, project, action, run)
    except AccessDenied:
        return False
    return True


def visible_projects(ws: Workspace, identity: Identity) -> list[str]:
    """The projects `identity` may open, oldest first: all of them for admins."""
    if identity.admin:
        return ws.list_projects()
    ensure_schema(ws)
    rows = ws.query(
        "SELECT p.name FROM projects p JOIN project_members m ON m.project = p.name "
        "WHERE m.name = ? ORDER BY p.created_at", (identity.name,))
    return [row["name"] for row in rows]


def create_project(ws: Workspace, identity: Identity, name: str) -> str:
    """Create project `name` owned by `identity` (laptop mode records no owner), or return
    it when it exists and `identity` may see it. A signed-in person cannot take over a
    project they are not in by creating one of the same name."""
    name = validate_project_name(name)
    ensure_schema(ws)
    with ws.transaction() as db:
        if db.execute("SELECT 1 FROM projects WHERE name = ?", (name,)).fetchone():
            if _role(db, identity, name) is None:
                raise AccessDenied(f"A project named “{name}” exists already and you are not "
                                   "among its members: choose another name, or ask its owner "
                                   "to add you.")
            return name
        now = time.time()
        db.execute("INSERT INTO projects (name, created_at) VALUES (?, ?)", (name, now))
        if identity.signed_in:
            db.execute("INSERT INTO project_members (project, name, role, added_at) "
                       "VALUES (?, ?, 'owner', ?)", (name, identity.name, now))
        ws.write_projects_file(db)  # so an index rebuilt from the folders keeps it
    return name


def members(ws: Workspace, project: str) -> list[Member]:
    """The owner first, then editors and viewers by name."""
    ensure_schema(ws)
    rows = ws.query(
        "SELECT name, role, added_at FROM project_members WHERE project = ? ORDER BY "
        "CASE role WHEN 'owner' THEN 0 WHEN 'editor' THEN 1 ELSE 2 END, name COLLATE NOCASE",
        (project,))
    return [Member(row["name"], Role(row["role"]), row["added_at"]) for row in rows]


def owner_of(ws: Workspace, project: str) -> str | None:
    return next((m.name for m in members(ws, project) if m.role is Role.OWNER), None)


def clean_member_name(name: str) -> str:
    """One line, 1 to 254 characters (an e-mail address fits)."""
    cleaned = " ".join(str(name).split())
    if not cleaned or len(cleaned) > 254:
        raise TLError("A member's name must be 1 to 254 characters: an account name, or the "
                      "e-mail address they sign in with.")
    return cleaned


def add_member(ws: Workspace, identity: Identity, project: str, name: str,
               role: Role | str) -> Member:
    """Give `name` a role in `project` (or change the one they have); only the owner and
    admins may. The owner's own role does not change this way."""
    role = Role(role)
    if role not in MEMBER_ROLES:
        raise TLError(f"A member is a viewer or an editor, not {role.value}.")
    name = clean_member_name(name)
    require(ws, identity, project, "manage_members")
    now = time.time()
    with ws.transaction() as db:
        current = db.execute("SELECT role FROM project_members WHERE project = ? AND name = ?",
                             (project, name)).fetchone()
        if current and current["role"] == Role.OWNER.value:
            raise TLError(f"{name} owns project “{project}”; the owner stays the owner.")
        db.execute(
            "INSERT INTO project_members (project, name, role, added_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (project, name) DO UPDATE SET role = excluded.role",
            (project, name, role.value, now))
    return Member(name, role, now)


def remove_member(ws: Workspace, identity: Identity, project: str, name: str) -> None:
    """Take `name` out of `project`; only the owner and admins may, and not the owner."""
    require(ws, identity, project, "manage_members")
    with ws.transaction() as db:
        row = db.execute("SELECT role FROM project_members WHERE project = ? AND name = ?",
                         (project, name)).fetchone()
        if row is None:
            raise NotFound(f"{name} is not a member of project “{project}”.")
        if row["role"] == Role.OWNER.value:
            raise TLError(f"{name} owns project “{project}” and cannot be removed from it.")
        db.execute("DELETE FROM project_members WHERE project = ? AND name = ?",
                   (project, name))


def forget_person(ws: Workspace, name: str) -> int:
    """Remove `name` from every project (their account is gone); the projects they owned
    are left to admins. Returns how many memberships were removed."""
    ensure_schema(ws)
    with ws.transaction() as db:
        return db.execute("DELETE FROM project_members WHERE name = ?", (name,)).rowcount
