"""Built-in accounts, for teams without an OpenID Connect provider.

Passwords are kept only as argon2id hashes. Failed sign-ins are counted per name in the
store, so the limit holds across browser sessions and server processes: after
MAX_FAILURES failures within FAILURE_WINDOW_S, that name is refused until the window
has passed; a successful sign-in clears the count.

A signed-in browser holds a random session token (in a cookie); the store keeps only
its SHA-256 with the account and an expiry, so signing out, removing the account or
the expiry ends the session on the server, whatever the browser still holds.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from functools import cache

from . import access
from .errors import NotFound, TLError
from .store import Workspace

MAX_FAILURES = 5
FAILURE_WINDOW_S = 15 * 60
SESSION_S = 12 * 3600
MIN_PASSWORD = 8
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS account_sessions (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL COLLATE NOCASE REFERENCES accounts(name) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sign_in_failures (
    name TEXT NOT NULL COLLATE NOCASE,
    failed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sign_in_failures_by_name ON sign_in_failures (name, failed_at);
"""


class SignInRefused(TLError):
    """Wrong name or password, or too many failed attempts for that name."""


@dataclass(frozen=True)
class Account:
    name: str
    admin: bool
    created_at: float

    @property
    def identity(self) -> access.Identity:
        return access.Identity(self.name, self.admin)


def _ensure_schema(ws: Workspace) -> None:
    access.ensure_schema(ws)  # removing an account also removes its memberships
    access.apply_schema(ws, SCHEMA)


@cache
def _hasher():  # noqa: ANN202 - argon2 is imported only where accounts are used
    from argon2 import PasswordHasher

    return PasswordHasher()  # argon2id with the library's current recommended costs


@cache
def _unknown_name_hash() -> str:
    """Checked against for names with no account, so a reply takes as long either way."""
    return _hasher().hash(secrets.token_urlsafe(16))


def validate_account_name(name: str) -> str:
    name = str(name).strip()
    if not NAME_PATTERN.fullmatch(name):
        raise TLError("An account name is 1 to 64 letters, digits and . _ @ + - (an e-mail "
                      "address works), starting with a letter or digit.")
    return name


def check_password(password: str) -> None:
    """Refuses a password too weak to keep (empty, only spaces, too short)."""
    if not password.strip():
        raise TLError("The password is empty (or only spaces): give one line with the "
                      "password.")
    if len(password.strip()) < MIN_PASSWORD:
        raise TLError(f"The password is too short: use at least {MIN_PASSWORD} characters.")


def _account(row: object) -> Account:
    return Account(row["name"], bool(row["admin"]), row["created_at"])  # type: ignore[index]


def add_account(ws: Workspace, name: str, password: str, admin: bool = False) -> Account:
    name = validate_account_name(name)
    check_password(password)
    _ensure_schema(ws)
    hashed = _hasher().hash(password)
    now = time.time()
    with ws.transaction() as db:
        if db.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)).fetchone():
            raise TLError(f"An account named {name} exists already; remove it first to "
                          "replace it.")
        db.execute("INSERT INTO accounts (name, password_hash, admin, created_at) "
                   "VALUES (?, ?, ?, ?)", (name, hashed, int(admin), now))
    return Account(name, admin, now)


def list_accounts(ws: Workspace) -> list[Account]:
    _ensure_schema(ws)
    return [_account(row) for row in ws.query(
        "SELECT name, admin, created_at FROM accounts ORDER BY name COLLATE NOCASE")]


def get_account(ws: Workspace, name: str) -> Account | None:
    _ensure_schema(ws)
    rows = ws.query("SELECT name, admin, created_at FROM accounts WHERE name = ?",
                    (str(name).strip(),))
    return _account(rows[0]) if rows else None


def remove_account(ws: Workspace, name: str) -> None:
    """Delete the account, its sessions (signed out everywhere) and its memberships."""
    _ensure_schema(ws)
    with ws.transaction() as db:
        if not db.execute("DELETE FROM accounts WHERE name = ?", (name,)).rowcount:
            raise NotFound(f"No account named {name}.")
        db.execute("DELETE FROM sign_in_failures WHERE name = ?", (name,))
    access.forget_person(ws, name)


def retry_after(ws: Workspace, name: str, now: float | None = None) -> float | None:
    """When `name` may try again after too many failures; None when they may now."""
    _ensure_schema(ws)
    now = time.time() if now is None else now
    rows = ws.query("SELECT failed_at FROM sign_in_failures WHERE name = ? AND failed_at > ? "
                    "ORDER BY failed_at DESC LIMIT ?",
                    (str(name).strip(), now - FAILURE_WINDOW_S, MAX_FAILURES))
    if len(rows) < MAX_FAILURES:
        return None
    return rows[-1]["failed_at"] + FAILURE_WINDOW_S


def _locked_message(name: str, until: float, now: float) -> str:
    minutes = max(1, round((until - now) / 60))
    return (f"Too many failed sign-ins for {name}: try again after "
            f"{time.strftime('%H:%M', time.localtime(until))} (in about {minutes} minute"
            f"{'s' if minutes != 1 else ''}).")


_HASHING = threading.BoundedSemaphore(2)


def sign_in(ws: Workspace, name: str, password: str, now: float | None = None) -> Account:
    """The account when `password` is its password; else SignInRefused, which says when
    to try again once a name has failed too often. Names without an account fail and
    count like wrong passwords, so the reply does not tell which names exist."""
    from argon2.exceptions import InvalidHashError, VerificationError

    _ensure_schema(ws)
    now = time.time() if now is None else now
    name = str(name).strip()
    if not name or not password:
        raise SignInRefused("Enter your account name and password.")
    # The attempt counts as a failure from before the (slow) check: sign-ins racing in
    # parallel cannot get more guesses than the limit. A success clears it below.
    with ws.transaction() as db:
        db.execute("DELETE FROM sign_in_failures WHERE failed_at <= ?",
                   (now - FAILURE_WINDOW_S,))
        recent = db.execute("SELECT COUNT(*) FROM sign_in_failures WHERE name = ? AND "
                            "failed_at > ?", (name, now - FAILURE_WINDOW_S)).fetchone()[0]
        if recent < MAX_FAILURES:
            db.execute("INSERT INTO sign_in_failures (name, failed_at) VALUES (?, ?)",
                       (name, now))
    if recent >= MAX_FAILURES:
        until = retry_after(ws, name, now) or now + FAILURE_WINDOW_S
        raise SignInRefused(_locked_message(name, until, now))
    rows = ws.query("SELECT name, password_hash, admin, created_at FROM accounts "
                    "WHERE name = ?", (name,))
    stored = rows[0]["password_hash"] if rows else _unknown_name_hash()
    with _HASHING:  # each check takes tens of MB: a flood of sign-ins must not add up
        try:
            _hasher().verify(stored, password)
            matched = bool(rows)
        except (VerificationError, InvalidHashError):
            matched = False
    if not matched:
        if (until := retry_after(ws, name, now)) is not None:
            raise SignInRefused("Wrong name or password. " + _locked_message(name, until, now))
        raise SignInRefused("Wrong name or password.")
    with ws.transaction() as db:
        db.execute("DELETE FROM sign_in_failures WHERE name = ?", (name,))
        if _hasher().check_needs_rehash(stored):
            db.execute("UPDATE accounts SET password_hash = ? WHERE name = ?",
                       (_hasher().hash(password), name))
    return _account(rows[0])


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(ws: Workspace, name: str, now: float | None = None,
                  seconds: float = SESSION_S) -> str:
    """A new session token for account `name`, valid for `seconds`."""
    _ensure_schema(ws)
    now = time.time() if now is None else now
    token = secrets.token_urlsafe(32)
    with ws.transaction() as db:
        db.execute("DELETE FROM account_sessions WHERE expires_at <= ?", (now,))
        db.execute("INSERT INTO account_sessions (token_hash, name, created_at, expires_at) "
                   "VALUES (?, ?, ?, ?)", (_token_hash(token), name, now, now + seconds))
    return token


def session_account(ws: Workspace, token: str | None,
                    now: float | None = None) -> Account | None:
    """The account a session token belongs to, or None when it is unknown, expired,
    signed out, or its account was removed."""
    if not token:
        return None
    _ensure_schema(ws)
    now = time.time() if now is None else now
    rows = ws.query(
        "SELECT a.name, a.admin, a.created_at FROM account_sessions s "
        "JOIN accounts a ON a.name = s.name WHERE s.token_hash = ? AND s.expires_at > ?",
        (_token_hash(token), now))
    return _account(rows[0]) if rows else None


def end_session(ws: Workspace, token: str | None) -> None:
    """Sign a session out: its token no longer opens anything."""
    if not token:
        return
    _ensure_schema(ws)
    with ws.transaction() as db:
        db.execute("DELETE FROM account_sessions WHERE token_hash = ?", (_token_hash(token),))
