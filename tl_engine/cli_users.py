"""`python -m tl_engine users ...`: accounts of a team instance, managed headless."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .cli_format import print_json as _print_json
from .cli_format import table as _table
from .store import INDEX_FILE, Workspace, resolve_workspace


def _read_password(name: str) -> str:
    """One line from stdin, never echoed: typed at a prompt, or piped in."""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"Password for {name}: ")
    return sys.stdin.readline().rstrip("\r\n")


def cmd_users_add(args: argparse.Namespace) -> int:
    from .accounts import add_account, check_password, validate_account_name

    root = resolve_workspace(args.workspace)
    new = not (root / INDEX_FILE).is_file()
    validate_account_name(args.name)
    password = _read_password(args.name)
    check_password(password)  # before a new workspace is made for an account refused
    ws = Workspace(root)
    account = add_account(ws, args.name, password, admin=args.admin)
    # Named in full when it is new: a mistyped --workspace shows here, not at sign-in.
    where = f" to a new workspace at {root}" if new else ""
    print(f"added {account.name}" + (" (admin)" if account.admin else "") + where)
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    import time

    from .accounts import list_accounts

    accounts = list_accounts(Workspace(args.workspace))
    if args.json:
        _print_json([{"name": a.name, "admin": a.admin, "created_at": a.created_at}
                     for a in accounts])
        return 0
    rows = [{"name": a.name, "admin": "yes" if a.admin else "no",
             "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(a.created_at))}
            for a in accounts]
    print(_table(rows, ["name", "admin", "created"]) if rows else "no accounts yet")
    return 0


def cmd_users_remove(args: argparse.Namespace) -> int:
    from .accounts import remove_account

    remove_account(Workspace(args.workspace), args.name)
    print(f"removed {args.name}")
    return 0


def add_users_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    users = sub.add_parser("users", parents=[common],
                           help="accounts for TL_AUTH=accounts: add, list, remove")
    commands = users.add_subparsers(dest="users_command", required=True)
    p = commands.add_parser("add", parents=[common],
                            help="add an account; the password is read from stdin")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="may see and manage every project")
    p.set_defaults(func=cmd_users_add)
    p = commands.add_parser("list", parents=[common], help="accounts: name, admin, created")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_users_list, needs_workspace=True)
    p = commands.add_parser("remove", parents=[common],
                            help="remove an account, its sessions and its memberships")
    p.add_argument("name")
    p.set_defaults(func=cmd_users_remove, needs_workspace=True)
