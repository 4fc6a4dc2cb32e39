"""Who is using the app: the sign-in page and the signed-in person in the sidebar.

TL_AUTH (the environment, else the key of that name in .streamlit/secrets.toml) picks
the mode: `none` (laptop: a typed name, no checks), `oidc` (Streamlit's st.login against
the organisation's OpenID Connect provider) or `accounts` (built-in accounts stored in
the workspace). An account's session is a random token kept in this browser's session
state and in a cookie, so a reload or a new tab stays signed in until it expires; the
workspace knows only the token's hash, and signing out deletes it there."""

from __future__ import annotations

import json
import os
from typing import Any

import streamlit as st

import tl_engine as tle
from dashboard import state
from dashboard.text import md_escape

MODES = ("none", "oidc", "accounts")
TOKEN_KEY = "auth_token"
COOKIE_KEY = "auth_cookie"  # the session cookie's value as this session last wrote it
SIGNED_OUT_KEY = "auth_signed_out"
SESSION_COOKIE = "tl_session"


def setting(name: str) -> str | None:
    """An administrator's setting: the environment first, then .streamlit/secrets.toml."""
    value: Any = os.environ.get(name)
    if value is None and st.secrets.load_if_toml_exists():  # no secrets file: not an error
        value = st.secrets.get(name)
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    return None if value is None else str(value)


def mode() -> str:
    return (setting("TL_AUTH") or "none").strip().lower()


def admins() -> set[str]:
    """TL_ADMINS: the comma-separated e-mail addresses (or subjects) of oidc-mode admins."""
    return {name.strip().casefold() for name in (setting("TL_ADMINS") or "").split(",")
            if name.strip()}


def current_identity() -> tle.Identity | None:
    """The person using this session; None while nobody is signed in (or the mode is not
    one of MODES: then nobody is let in)."""
    chosen = mode()
    if chosen == "none":
        return tle.Identity.everyone()
    if chosen == "oidc":
        return _oidc_identity()
    if chosen == "accounts":
        account = _signed_in_account()
        return account.identity if account else None
    return None


def _oidc_identity() -> tle.Identity | None:
    try:
        if not st.user.is_logged_in:
            return None
    except Exception:  # noqa: BLE001 - [auth] missing from secrets.toml: nobody is signed in
        return None
    # An address the provider has not verified could be anyone's (some providers send no
    # `email_verified` and let people edit their address): fall back to the subject, unless
    # the administrator vouches for the provider's addresses with TL_OIDC_TRUST_EMAIL=1.
    verified = st.user.get("email_verified") is True or setting("TL_OIDC_TRUST_EMAIL") == "1"
    email = st.user.get("email") if verified else None
    name = str(email).strip().lower() if email else str(st.user.get("sub") or "").strip()
    if not name:
        return None
    return tle.Identity(name, admin=name.casefold() in admins())


def _session_token() -> str | None:
    if TOKEN_KEY in st.session_state:
        return st.session_state[TOKEN_KEY]
    if st.session_state.get(SIGNED_OUT_KEY):
        return None  # the cookie sent when this session began was signed out since
    return state.cookie(SESSION_COOKIE)


def _signed_in_account() -> tle.accounts.Account | None:
    token = _session_token()
    if not token:
        return None
    account = tle.accounts.session_account(state.workspace(), token)
    if account is None:
        st.session_state.pop(TOKEN_KEY, None)
    else:
        st.session_state[TOKEN_KEY] = token
    return account


def _write_cookie(token: str) -> None:
    """Set (or, with "", clear) the session cookie, as the "Your name" field sets its own:
    Streamlit has no call for it. Written only when it differs from what the browser holds."""
    held = st.session_state.get(COOKIE_KEY, state.cookie(SESSION_COOKIE) or "")
    if held == token:
        return
    st.session_state[COOKIE_KEY] = token
    secure = "; Secure" if (st.context.url or "").startswith("https:") else ""
    max_age = tle.accounts.SESSION_S if token else 0
    value = json.dumps(token).replace("</", "<\\/")
    st.iframe(
        f"<script>parent.document.cookie = '{SESSION_COOKIE}=' + encodeURIComponent({value})"
        f" + '; path=/; max-age={max_age}; SameSite=Strict{secure}';</script>", height=1)


# --- the sign-in page ----------------------------------------------------------------


def sign_in_page() -> None:
    """All a visitor who is not signed in sees; the caller stops the script after it."""
    chosen = mode()
    _, middle, _ = st.columns([1, 2.2, 1])
    with middle:
        st.title("Transfer Learning Studio")
        if chosen not in MODES:
            st.error(f"TL_AUTH is set to {md_escape(chosen)}, which is not one of "
                     f"{', '.join(MODES)}: nobody can sign in until the administrator fixes "
                     "it.", icon=":material/block:")
            return
        st.caption("Image classifiers from a few hundred labelled photos, for your team.")
        with st.container(border=True):
            st.subheader("Sign in")
            if chosen == "oidc":
                _oidc_sign_in()
            else:
                _account_sign_in()
    if chosen == "accounts":
        _write_cookie("")  # a stale or signed-out token: the browser forgets it too


def _oidc_sign_in() -> None:
    st.markdown("Sign in with your organisation's account to open the projects you are a "
                "member of.")
    if st.button("Sign in with your organisation", type="primary", icon=":material/login:",
                 key="oidc_sign_in"):
        try:
            st.login()
        except Exception:  # noqa: BLE001 - StreamlitAuthError: [auth] is not configured
            st.error("Sign-in with the organisation's provider is not configured: the "
                     "administrator adds an [auth] section to .streamlit/secrets.toml.",
                     icon=":material/block:")


def _account_sign_in() -> None:
    with st.form("sign_in_form", border=False, enter_to_submit=True):
        st.text_input("Account name", key="sign_in_name", autocomplete="username",
                      max_chars=64)
        st.text_input("Password", key="sign_in_password", type="password",
                      autocomplete="current-password", max_chars=1024)
        submitted = st.form_submit_button("Sign in", type="primary", icon=":material/login:")
    if submitted:
        try:
            account = tle.accounts.sign_in(state.workspace(), st.session_state["sign_in_name"],
                                           st.session_state["sign_in_password"])
        except tle.SignInRefused as exc:
            st.error(md_escape(exc), icon=":material/lock:")
        else:
            sign_in_as(account)
            st.rerun()
    st.caption("Accounts are given by the administrator of this instance.")


def sign_in_as(account: tle.accounts.Account) -> None:
    """Start a session for `account` in this browser (the sign-in form's success)."""
    for key in list(st.session_state):  # nothing of whoever used this tab before
        del st.session_state[key]
    st.session_state[TOKEN_KEY] = tle.accounts.start_session(state.workspace(), account.name)


# --- the sidebar ---------------------------------------------------------------------


def _sign_out() -> None:
    if mode() == "accounts":
        tle.accounts.end_session(state.workspace(), st.session_state.get(TOKEN_KEY))
    written = st.session_state.get(COOKIE_KEY, state.cookie(SESSION_COOKIE) or "")
    for key in list(st.session_state):  # the next person in this tab starts afresh
        del st.session_state[key]
    st.session_state[SIGNED_OUT_KEY] = True
    st.session_state[COOKIE_KEY] = written


def account_box(identity: tle.Identity) -> None:
    """Who is signed in, and Sign out."""
    st.caption(":material/account_circle: Signed in" + (" · admin" if identity.admin else ""))
    st.text(identity.name)  # a name or an e-mail address: text, never a link
    if mode() == "oidc":
        if st.button("Sign out", icon=":material/logout:", key="sign_out", width="stretch"):
            st.logout()
        return
    st.button("Sign out", icon=":material/logout:", key="sign_out", width="stretch",
              on_click=_sign_out)
    _write_cookie(st.session_state.get(TOKEN_KEY) or "")
