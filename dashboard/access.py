"""The pages' side of the access check: every action on a project asks `permit` first,
which asks the engine's one check (tl_engine.access.require) for the signed-in person
and shows a refusal as an error. In laptop mode everyone is an admin: nothing is refused
and nothing here shows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import streamlit as st

import tl_engine as tle
from dashboard import auth, state
from dashboard.text import md_escape

NOBODY = tle.Identity("")  # not signed in: a member of nothing


def identity() -> tle.Identity:
    return auth.current_identity() or NOBODY


def checks_apply() -> bool:
    """False in laptop mode, where nobody signs in and nothing is ever refused."""
    return auth.mode() != "none"


def visible_projects() -> list[str]:
    return tle.access.visible_projects(state.workspace(), identity())


def role(project: str) -> tle.Role | None:
    return tle.access.role_of(state.workspace(), identity(), project)


def can(action: str, project: str, run: tle.RunRecord | None = None) -> bool:
    """Whether the signed-in person may do `action`, without saying anything."""
    return tle.access.allowed(state.workspace(), identity(), project, action, run)


def refusal(action: str, project: str, run: tle.RunRecord | None = None) -> str | None:
    """Why the signed-in person may not do `action`; None when they may."""
    try:
        tle.access.require(state.workspace(), identity(), project, action, run)
    except tle.AccessDenied as exc:
        return str(exc)
    return None


def permit(action: str, project: str, run: tle.RunRecord | None = None) -> bool:
    """Whether the signed-in person may do `action`; if not, the page says why."""
    reason = refusal(action, project, run)
    if reason is not None:
        st.error(md_escape(reason), icon=":material/lock:")
    return reason is None


def guarded_button(where: Any, label: str, action: str, project: str,
                   run: tle.RunRecord | None = None, *, disabled: bool = False,
                   help: str | None = None, **button: Any) -> bool:
    """A button for `action` that who may not do it sees disabled, with the reason as its
    help (`help` otherwise): told before they try, and in a part of the page that refreshes
    itself, a refusal shown on click would vanish with the next refresh. True when clicked
    and permitted (a click still passes `permit`)."""
    reason = refusal(action, project, run)
    tip = reason or help
    clicked = where.button(label, disabled=disabled or reason is not None,
                           help=md_escape(tip) if tip else None, **button)
    return clicked and permit(action, project, run)


@contextmanager
def shown_errors() -> Iterator[None]:
    """An engine error here names people and projects: shown as typed, not as Markdown."""
    try:
        yield
    except tle.TLError as exc:
        st.error(md_escape(exc), icon=":material/warning:")


def denied_project() -> str | None:
    """The project a link names that the signed-in person may not open (or that does not
    exist: the reply is the same, so links do not tell which projects exist)."""
    name = st.query_params.get("project")
    if not checks_apply() or not name or name in visible_projects():
        return None
    return name


def refuse_project(name: str) -> None:
    """All a page shows for a project the person may not open."""
    st.error(md_escape(tle.access.no_access_message(name)), icon=":material/lock:")
    if st.button("Show my projects", icon=":material/arrow_back:", key="leave_denied"):
        del st.query_params["project"]
        st.session_state.pop("project", None)
        st.rerun()


def role_note(project: str, action: str, what: str) -> None:
    """A line at the top of a page for people who may look but not do the page's main
    action (`what`, e.g. "add datasets")."""
    if not checks_apply() or can(action, project):
        return
    current = role(project)
    named = current.value if current else "not a member"
    st.info(f"You are a {named} in this project: you can look around, but to {what} you "
            "need the editor role — ask the project's owner.", icon=":material/visibility:")


# --- members on the Home page ---------------------------------------------------------


def members_panel(project: str) -> None:
    """The project's members; the owner and admins also add, change and remove them."""
    if not checks_apply():
        return
    ws = state.workspace()
    people = tle.access.members(ws, project)
    mine = role(project)
    managing = can("manage_members", project)
    with st.container(border=True):
        st.markdown("**Members**")
        if mine is not None:
            # An administrator who also belongs to the project is named by the listed role.
            listed = next((p.role for p in people if p.name == identity().name), None)
            shown = f"{listed.value}, and you administer this instance" if (
                listed is not None and mine is tle.Role.ADMIN) else mine.value
            st.caption(f"Your role here: {md_escape(shown)}. Viewers see, predict and "
                       "export; editors also upload, train and delete their own runs.")
        if not people:
            st.caption("No members yet: only admins see this project.")
        for person in people:
            cols = st.columns([0.55, 0.25, 0.2], vertical_alignment="center")
            cols[0].text(person.name)
            cols[1].text(person.role.value)
            if managing and person.role is not tle.Role.OWNER and cols[2].button(
                    "Remove", key=f"remove_member_{person.name}", icon=":material/person_remove:"):
                if permit("manage_members", project):
                    with shown_errors():
                        tle.access.remove_member(ws, identity(), project, person.name)
                        st.rerun()
        if managing:
            _add_member_form(project)


def _add_member_form(project: str) -> None:
    hint = ("their account name" if auth.mode() == "accounts"
            else "the e-mail address they sign in with")
    with st.form("add_member_form", clear_on_submit=True, border=False):
        cols = st.columns([0.55, 0.25, 0.2], vertical_alignment="bottom")
        name = cols[0].text_input("Add a member", key="member_name", placeholder=hint)
        chosen = cols[1].selectbox("Role", [r.value for r in tle.access.MEMBER_ROLES],
                                   key="member_role")
        submitted = cols[2].form_submit_button("Add", icon=":material/person_add:")
    if not submitted or not permit("manage_members", project):
        return
    ws = state.workspace()
    if auth.mode() == "accounts":
        account = tle.accounts.get_account(ws, name)
        if account is None:
            st.error(f"No account named {md_escape(name.strip())}: the administrator adds it "
                     "first (python -m tl_engine users add).", icon=":material/person_off:")
            return
        name = account.name
    with shown_errors():
        tle.access.add_member(ws, identity(), project, name, chosen)
        st.rerun()
