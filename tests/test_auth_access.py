"""Sign-in and project access: the engine's accounts and access check on real workspaces,
the CLI that manages accounts, and every page driven through Streamlit's AppTest as
people with and without the role an action needs."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, texts
from streamlit.testing.v1 import AppTest

import tl_engine as tle
from tl_engine import access, accounts
from tl_engine.runs import RunRecord

PASSWORD = "correct horse battery"
TINY_SPEC = {"backbone": "MobileNetV2-0.35", "weights": "none", "image_size": 32, "epochs": 1,
             "batch_size": 8, "learning_rate": 0.01}
OWNER, EDITOR, VIEWER, OUTSIDER = (tle.Identity("olga"), tle.Identity("eddie"),
                                   tle.Identity("vera"), tle.Identity("bob"))
ADMIN = tle.Identity("root", admin=True)


def a_run(project: str, started_by: str | None) -> RunRecord:
    return RunRecord(id="r1", project=project, dataset_id="d1", spec=tle.RunSpec(),
                     cache_key="k", status="completed", started_by=started_by, created_at=0.0,
                     started_at=None, finished_at=None, heartbeat_at=None, worker_pid=None)


@pytest.fixture
def team(tmp_path: Path) -> tle.Workspace:
    """Project "lab" owned by olga, with eddie as editor and vera as viewer; bob is in
    nothing; root is an admin."""
    ws = tle.Workspace(tmp_path / "ws")
    access.create_project(ws, OWNER, "lab")
    access.add_member(ws, OWNER, "lab", "eddie", "editor")
    access.add_member(ws, OWNER, "lab", "vera", "viewer")
    return ws


# --- the access check ---------------------------------------------------------------------


def test_creator_owns_the_project_and_members_see_only_their_projects(team):
    access.create_project(team, OUTSIDER, "bobs")
    assert access.owner_of(team, "lab") == "olga"
    assert [(m.name, m.role) for m in access.members(team, "lab")] == [
        ("olga", tle.Role.OWNER), ("eddie", tle.Role.EDITOR), ("vera", tle.Role.VIEWER)]
    assert access.visible_projects(team, VIEWER) == ["lab"]
    assert access.visible_projects(team, tle.Identity("VERA")) == ["lab"]  # names ignore case
    assert access.visible_projects(team, OUTSIDER) == ["bobs"]
    assert access.visible_projects(team, ADMIN) == ["lab", "bobs"]
    assert access.visible_projects(team, tle.Identity.everyone()) == ["lab", "bobs"]


def test_each_role_may_do_what_it_should_and_nothing_more(team):
    viewer_may = {"view", "predict", "export"}
    # Which runs an editor may cancel, change or delete is checked per run (below).
    editor_may = set(access.ACTIONS) - {"manage_members"}
    for who, expected in ((VIEWER, viewer_may), (EDITOR, editor_may),
                          (OWNER, set(access.ACTIONS)), (ADMIN, set(access.ACTIONS)),
                          (tle.Identity.everyone(), set(access.ACTIONS)),
                          (OUTSIDER, set()), (tle.Identity(""), set())):
        allowed = {a for a in access.ACTIONS if access.allowed(team, who, "lab", a)}
        assert allowed == expected, who
    with pytest.raises(tle.AccessDenied, match="Starting a training run .* needs the editor "
                       "role; you are a viewer"):
        access.require(team, VIEWER, "lab", "train")
    with pytest.raises(tle.AccessDenied, match="You don't have access to project “lab”; ask "
                       "its owner"):
        access.require(team, OUTSIDER, "lab", "view")
    with pytest.raises(ValueError, match="unknown action"):
        access.require(team, OWNER, "lab", "launch")


def test_editors_cancel_and_delete_only_their_own_runs(team):
    own, others, anonymous = a_run("lab", "Eddie"), a_run("lab", "olga"), a_run("lab", None)
    for action in ("delete_run", "cancel_run", "change_run", "resume_run"):
        assert access.require(team, EDITOR, "lab", action, own) is tle.Role.EDITOR
        for run in (others, anonymous):
            with pytest.raises(tle.AccessDenied, match="only they, the project's owner or an "
                               "admin"):
                access.require(team, EDITOR, "lab", action, run)
            assert access.allowed(team, OWNER, "lab", action, run)
            assert access.allowed(team, ADMIN, "lab", action, run)
    # Resuming someone else's run would leave a run the editor could not cancel.
    with pytest.raises(tle.AccessDenied, match="not part of project"):
        access.require(team, OWNER, "lab", "delete_run", a_run("elsewhere", "olga"))


def test_only_the_owner_and_admins_manage_members(team):
    for who in (EDITOR, VIEWER, OUTSIDER):
        with pytest.raises(tle.AccessDenied):
            access.add_member(team, who, "lab", "bob", "editor")
        with pytest.raises(tle.AccessDenied):
            access.remove_member(team, who, "lab", "vera")
    access.add_member(team, ADMIN, "lab", "bob", "viewer")
    access.add_member(team, OWNER, "lab", "bob", "editor")  # a new role, not a second row
    assert [m.role for m in access.members(team, "lab") if m.name == "bob"] == [tle.Role.EDITOR]
    access.remove_member(team, OWNER, "lab", "bob")
    assert access.visible_projects(team, OUTSIDER) == []
    with pytest.raises(tle.TLError, match="owns project"):
        access.remove_member(team, ADMIN, "lab", "olga")
    with pytest.raises(tle.TLError, match="owner stays the owner"):
        access.add_member(team, ADMIN, "lab", "olga", "viewer")
    with pytest.raises(tle.TLError, match="viewer or an editor"):
        access.add_member(team, OWNER, "lab", "bob", "owner")
    with pytest.raises(tle.NotFound):
        access.remove_member(team, OWNER, "lab", "nobody")


def test_a_project_name_cannot_be_taken_over(team):
    with pytest.raises(tle.AccessDenied, match="exists already"):
        access.create_project(team, OUTSIDER, "lab")
    assert access.create_project(team, VIEWER, "lab") == "lab"  # a member just opens it
    assert access.owner_of(team, "lab") == "olga"
    # Laptop mode records no owner and opens what exists, as before.
    assert access.create_project(team, tle.Identity.everyone(), "notes") == "notes"
    assert access.members(team, "notes") == []


# --- accounts -----------------------------------------------------------------------------


def test_passwords_are_stored_only_as_argon2id_hashes(tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    accounts.add_account(ws, "ann", PASSWORD, admin=True)
    accounts.add_account(ws, "bob@example.org", PASSWORD)
    assert [(a.name, a.admin) for a in accounts.list_accounts(ws)] == [
        ("ann", True), ("bob@example.org", False)]
    (stored,) = ws.query("SELECT password_hash FROM accounts WHERE name = 'ann'")
    assert stored[0].startswith("$argon2id$")
    assert PASSWORD.encode() not in ws.db_path.read_bytes()
    for bad in ("", "short"):
        with pytest.raises(tle.TLError, match="password"):
            accounts.add_account(ws, "cid", bad)
    for name in ("", "has space", "<b>", "x" * 65):
        with pytest.raises(tle.TLError, match="account name"):
            accounts.add_account(ws, name, PASSWORD)
    with pytest.raises(tle.TLError, match="exists already"):
        accounts.add_account(ws, "ANN", PASSWORD)
    assert accounts.sign_in(ws, "ann", PASSWORD).identity == tle.Identity("ann", admin=True)


def test_failed_sign_ins_are_limited_per_name_across_processes(tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    accounts.add_account(ws, "ann", PASSWORD)
    start = 1_000_000.0
    for attempt in range(accounts.MAX_FAILURES - 1):
        with pytest.raises(tle.SignInRefused, match="^Wrong name or password.$"):
            accounts.sign_in(ws, "ann", "guess", now=start + attempt)
    accounts.sign_in(ws, "ann", PASSWORD, now=start + 10)  # success clears the count
    for attempt in range(accounts.MAX_FAILURES):
        with pytest.raises(tle.SignInRefused, match="Wrong name or password"):
            accounts.sign_in(ws, "ann", "guess", now=start + 20 + attempt)
    # Another server process (its own Workspace object) refuses even the right password.
    other = tle.Workspace(ws.root)
    with pytest.raises(tle.SignInRefused, match=r"Too many failed sign-ins for ann: try again "
                       r"after \d\d:\d\d \(in about 15 minutes\)"):
        accounts.sign_in(other, "ann", PASSWORD, now=start + 30)
    assert accounts.retry_after(other, "ann", now=start + 30) == start + 20 + 15 * 60
    # Once the window has passed, the right password works again.
    assert accounts.sign_in(other, "ann", PASSWORD, now=start + 20 + 15 * 60 + 1).name == "ann"
    # Names without an account are counted too, and the reply is the same.
    for attempt in range(accounts.MAX_FAILURES):
        with pytest.raises(tle.SignInRefused, match="Wrong name or password"):
            accounts.sign_in(ws, "ghost", "guess", now=start + attempt)
    with pytest.raises(tle.SignInRefused, match="Too many failed sign-ins for ghost"):
        accounts.sign_in(ws, "ghost", "guess", now=start + 10)


def test_sessions_end_with_sign_out_expiry_or_the_account(tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    accounts.add_account(ws, "ann", PASSWORD)
    token = accounts.start_session(ws, "ann", now=1000.0, seconds=60)
    assert accounts.session_account(ws, token, now=1030.0).name == "ann"
    assert accounts.session_account(ws, token, now=1061.0) is None  # expired
    assert accounts.session_account(ws, token + "x") is None
    assert accounts.session_account(ws, None) is None
    token = accounts.start_session(ws, "ann")
    (stored,) = ws.query("SELECT token_hash FROM account_sessions")
    assert token not in stored[0]  # only its hash is kept
    accounts.end_session(ws, token)
    assert accounts.session_account(ws, token) is None
    token = accounts.start_session(ws, "ann")
    access.create_project(ws, tle.Identity("olga"), "lab")
    access.add_member(ws, tle.Identity("olga"), "lab", "ann", "editor")
    accounts.remove_account(ws, "ann")
    assert accounts.session_account(ws, token) is None
    assert access.visible_projects(ws, tle.Identity("ann")) == []
    with pytest.raises(tle.NotFound):
        accounts.remove_account(ws, "ann")


def cli(ws: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tl_engine", "users", *args, "--workspace",
                           str(ws)], input=stdin, capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=120)


def test_cli_adds_lists_and_removes_accounts(tmp_path):
    root = tmp_path / "ws"
    # Listing a workspace that is not there (a mistyped path) is refused, and makes none.
    missing = cli(root, "list")
    assert missing.returncode == 2 and f"No workspace at {root}" in missing.stderr
    refused = cli(root, "add", "ann", stdin="\n")  # refused before anything is made
    assert refused.returncode == 2 and "password is empty" in refused.stderr
    assert not root.exists()
    added = cli(root, "add", "ann", "--admin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    assert added.stdout.strip() == f"added ann (admin) to a new workspace at {root}"
    bob = cli(root, "add", "bob", stdin=PASSWORD + "\r\n")
    assert bob.returncode == 0 and bob.stdout.strip() == "added bob"
    for blank in ("\n", " " * 12 + "\n"):
        empty = cli(root, "add", "cid", stdin=blank)
        assert empty.returncode == 2 and "password is empty" in empty.stderr
    listed = cli(root, "list").stdout.splitlines()
    assert listed[0].split() == ["name", "admin", "created"]
    assert [line.split()[:2] for line in listed[1:]] == [["ann", "yes"], ["bob", "no"]]
    rows = json.loads(cli(root, "list", "--json").stdout)
    assert [(r["name"], r["admin"]) for r in rows] == [("ann", True), ("bob", False)]
    assert all(isinstance(r["created_at"], float) for r in rows)
    ws = tle.Workspace(root)
    assert accounts.sign_in(ws, "bob", PASSWORD).name == "bob"  # the line ending is not kept
    assert cli(root, "remove", "bob").returncode == 0
    gone = cli(root, "remove", "bob")
    assert gone.returncode == 2 and "No account named bob" in gone.stderr
    assert [a.name for a in accounts.list_accounts(ws)] == ["ann"]


def test_the_schema_is_added_to_an_existing_workspace(tmp_path):
    ws = tle.Workspace(tmp_path / "ws")
    ws.ensure_project("old")  # made before sign-in existed: no owner, admins manage it
    db = sqlite3.connect(ws.db_path)
    assert not db.execute("SELECT name FROM sqlite_master WHERE name = 'accounts'").fetchall()
    db.close()
    assert access.visible_projects(ws, tle.Identity("ann")) == []
    access.add_member(ws, ADMIN, "old", "ann", "viewer")
    assert access.visible_projects(tle.Workspace(ws.root), tle.Identity("ann")) == ["old"]


# --- pages ---------------------------------------------------------------------------------


def all_shown(at: AppTest) -> str:
    """Every element the page sent (labels, values, options), main area and sidebar."""
    def walk(node):
        proto = getattr(node, "proto", None)
        if proto is not None:
            yield str(proto)
        for child in getattr(node, "children", {}).values():
            yield from walk(child)
    return "\n".join([*walk(at.main), *walk(at.sidebar)])


def open_as(monkeypatch, root: Path, name: str | None, page: str | None = None,
            mode: str = "accounts", draft: dict | None = None, **query: str) -> AppTest:
    """The app as `name`, signed in the way the sign-in form does it (a session token in
    session state); None: a visitor who has not signed in."""
    monkeypatch.setenv("TL_WORKSPACE", str(root))
    monkeypatch.setenv("TL_AUTH", mode)
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    for key, value in query.items():
        at.query_params[key] = value
    if draft is not None:
        at.session_state["spec_draft"] = draft
    if name is not None:
        at.session_state["auth_token"] = accounts.start_session(tle.Workspace(root), name)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def team_root(trained_workspace, tmp_path) -> Path:
    """A copy of the trained workspace: project "demo" (one completed run, started by
    nobody) with eddie as editor and vera as viewer; olga's project "secret"; accounts for
    all of them, bob in no project and root an admin."""
    source, _, _ = trained_workspace
    root = tmp_path / "team"
    shutil.copytree(source.root, root)
    ws = tle.Workspace(root)
    for name in ("olga", "eddie", "vera", "bob"):
        accounts.add_account(ws, name, PASSWORD)
    accounts.add_account(ws, "root", PASSWORD, admin=True)
    access.add_member(ws, ADMIN, "demo", "eddie", "editor")
    access.add_member(ws, ADMIN, "demo", "vera", "viewer")
    access.create_project(ws, OWNER, "secret")
    return root


@pytest.mark.parametrize("page", [None, "views/dataset.py", "views/training.py",
                                  "views/prediction.py", "views/runs.py"])
def test_a_visitor_sees_only_the_sign_in_whatever_the_link(monkeypatch, team_root, page):
    run_id = tle.list_runs(tle.Workspace(team_root), "demo")[0].id
    at = open_as(monkeypatch, team_root, None, page, project="demo", run=run_id)
    assert texts(at.subheader) == "Sign in"
    assert at.text_input(key="sign_in_name") and at.text_input(key="sign_in_password")
    shown = all_shown(at)
    for secret in ("demo", run_id, "secret", "Your name", "Sign out", "Signed in", "Project"):
        assert secret not in shown, secret
    assert not at.sidebar.children or "selectbox" not in str(at.sidebar)


def test_signing_in_through_the_form_then_out(monkeypatch, team_root):
    at = open_as(monkeypatch, team_root, None, "views/training.py", project="demo")
    at.text_input(key="sign_in_name").input("vera")
    at.text_input(key="sign_in_password").input("wrong password")
    at.button(key="FormSubmitter:sign_in_form-Sign in").click().run()
    assert "Wrong name or password." in texts(at.error)
    assert texts(at.subheader) == "Sign in"
    at.text_input(key="sign_in_name").input("vera")
    at.text_input(key="sign_in_password").input(PASSWORD)
    at.button(key="FormSubmitter:sign_in_form-Sign in").click().run()
    assert not at.exception
    # The deep link still holds: the Training page of "demo", as vera.
    assert "Training" in texts(at.title)
    assert "Signed in" in texts(at.sidebar.caption) and "vera" in texts(at.sidebar.text)
    assert not [t for t in at.text_input if t.label == "Your name"]
    assert "You are a viewer in this project" in texts(at.info)
    token = at.session_state["auth_token"]
    assert accounts.session_account(tle.Workspace(team_root), token).name == "vera"
    at.button(key="sign_out").click().run()
    assert texts(at.subheader) == "Sign in"
    assert accounts.session_account(tle.Workspace(team_root), token) is None
    assert "demo" not in all_shown(at)


def test_laptop_mode_keeps_the_typed_name_and_no_sign_in(monkeypatch, team_root):
    at = open_as(monkeypatch, team_root, None, mode="none", project="secret")
    assert [t for t in at.sidebar.text_input if t.label == "Your name"]
    assert not [b for b in at.button if b.label == "Sign out"]
    assert "Project · secret" in texts(at.subheader)  # everyone sees every project
    assert "Members" not in texts(at.markdown)


def test_an_unknown_mode_lets_nobody_in(monkeypatch, team_root):
    at = open_as(monkeypatch, team_root, None, mode="ldap", project="demo")
    assert "TL_AUTH is set to ldap" in texts(at.error)
    assert "demo" not in all_shown(at)


def test_oidc_mode_offers_the_organisation_sign_in(monkeypatch, team_root):
    at = open_as(monkeypatch, team_root, None, mode="oidc", project="demo")
    assert [b for b in at.button if b.label == "Sign in with your organisation"]
    assert "demo" not in all_shown(at)


@pytest.mark.parametrize("page", [None, "views/dataset.py", "views/model.py",
                                  "views/training.py", "views/prediction.py", "views/runs.py"])
def test_a_link_to_a_project_of_others_is_refused_on_every_page(monkeypatch, team_root, page):
    at = open_as(monkeypatch, team_root, "bob", page, project="demo")
    assert "You don't have access to project “demo”; ask its owner" in texts(at.error)
    picker = [s for s in at.sidebar.selectbox if s.label == "Project"]
    assert not picker or "demo" not in picker[0].options
    assert not at.metric and not at.dataframe and not at.subheader
    assert "views/" not in str(page) or not at.title  # the page itself never ran
    at.button(key="leave_denied").click().run()
    assert "project" not in at.query_params
    assert ("Create your first project" in texts(at.subheader) if page is None
            else "Choose or create a project" in texts(at.info))


def test_the_picker_lists_only_the_projects_one_may_open(monkeypatch, team_root):
    at = open_as(monkeypatch, team_root, "vera")
    assert at.sidebar.selectbox[0].options == ["demo"]
    at = open_as(monkeypatch, team_root, "root")
    assert at.sidebar.selectbox[0].options == ["demo", "secret"]
    assert "Signed in · admin" in texts(at.sidebar.caption)
    assert "root" in texts(at.sidebar.text)


def test_a_new_project_is_owned_by_its_creator_and_names_are_not_taken(monkeypatch, team_root):
    at = open_as(monkeypatch, team_root, "bob")
    at.text_input(key="home_new_name").input("bobs")
    at.button(key="FormSubmitter:home_new_form-Create project").click().run()
    assert access.owner_of(tle.Workspace(team_root), "bobs") == "bob"
    at = open_as(monkeypatch, team_root, "bob")
    at.text_input(key="home_new_name").input("secret")
    at.button(key="FormSubmitter:home_new_form-Create project").click().run()
    assert "exists already and you are not among its members" in texts(at.error)
    assert access.visible_projects(tle.Workspace(team_root), tle.Identity("bob")) == ["bobs"]


def test_the_owner_manages_members_on_home_and_others_only_see_them(monkeypatch, team_root):
    ws = tle.Workspace(team_root)
    at = open_as(monkeypatch, team_root, "olga", project="secret")
    assert "Your role here: owner" in texts(at.caption)
    at.text_input(key="member_name").input("nobody")
    at.button(key="FormSubmitter:add_member_form-Add").click().run()
    assert "No account named nobody" in texts(at.error)
    at.text_input(key="member_name").input("bob")
    at.selectbox(key="member_role").select("editor")
    at.button(key="FormSubmitter:add_member_form-Add").click().run()
    assert not at.exception
    assert access.role_of(ws, OUTSIDER, "secret") is tle.Role.EDITOR
    assert "bob" in texts(at.text)

    bob = open_as(monkeypatch, team_root, "bob", project="secret")
    assert "Your role here: editor" in texts(bob.caption)
    assert "olga" in texts(bob.text)
    assert not [t for t in bob.text_input if t.key == "member_name"]
    assert not [b for b in bob.button if str(b.key).startswith("remove_member_")]

    at.button(key="remove_member_bob").click().run()
    assert access.role_of(ws, OUTSIDER, "secret") is None
    again = open_as(monkeypatch, team_root, "bob", project="secret")
    assert "You don't have access to project “secret”" in texts(again.error)


def test_a_viewer_cannot_add_or_delete_datasets(monkeypatch, team_root):
    ws = tle.Workspace(team_root)
    before = [d.id for d in tle.list_datasets(ws, "demo")]
    at = open_as(monkeypatch, team_root, "vera", "views/dataset.py", project="demo")
    assert "to add or delete datasets you need the editor role" in texts(at.info)
    # Told before trying: the actions are disabled, each saying why.
    shapes = at.button(key="sample_shapes")
    assert shapes.disabled
    assert "Adding a dataset in project “demo” needs the editor role" in shapes.help
    at.checkbox(key=f"confirm_delete_{before[0]}").check().run()
    delete = at.button(key="delete_dataset")
    assert delete.disabled
    assert "Deleting a dataset in project “demo” needs the editor role" in delete.help
    assert [d.id for d in tle.list_datasets(ws, "demo")] == before

    editor = open_as(monkeypatch, team_root, "eddie", "views/dataset.py", project="demo")
    assert "editor role" not in texts(editor.info)
    editor.button(key="sample_shapes").click().run()
    assert not editor.exception
    assert len(tle.list_datasets(ws, "demo")) == len(before) + 1


def test_training_actions_need_the_editor_role_and_ones_own_run(monkeypatch, team_root):
    ws = tle.Workspace(team_root)
    (dataset,) = tle.list_datasets(ws, "demo")
    # Many epochs, so the cancel lands before the run could finish on its own.
    spec = tle.RunSpec(**{**TINY_SPEC, "epochs": 50})
    run_id = tle.submit_run(ws, "demo", dataset.id, spec, start_worker=False,
                            started_by="eddie").run_id
    runs_before = len(tle.list_runs(ws, "demo"))
    try:
        at = open_as(monkeypatch, team_root, "vera", "views/training.py", project="demo",
                     run=run_id)
        # Told before trying: Start training is disabled for a viewer, with the reason.
        start = at.button(key="FormSubmitter:train_form-Start training")
        assert start.disabled
        assert "Starting a training run in project “demo” needs the editor role" in start.help
        assert len(tle.list_runs(ws, "demo")) == runs_before
        # The live panel refreshes itself: the button is disabled and says why, rather
        # than refuse on click and have the refusal vanish with the next refresh.
        cancel = at.button(key=f"cancel_{run_id}")
        assert cancel.disabled
        assert "Cancelling a run in project “demo” needs the editor role" in cancel.help
        assert not tle.get_run(ws, run_id).cancel_requested
        assert tle.get_run(ws, run_id).status in ("queued", "running")

        owner = open_as(monkeypatch, team_root, "eddie", "views/training.py", project="demo",
                        run=run_id)
        owner.button(key=f"cancel_{run_id}").click().run()
        assert not owner.exception
        assert tle.wait_for_run(ws, run_id, timeout_s=180).status == "cancelled"

        at.run()
        at.button(key=f"resume_{run_id}").click().run()
        assert "Resuming a run in project “demo” needs the editor role" in texts(at.error)
        assert tle.get_run(ws, run_id).status == "cancelled"
    finally:
        tle.cancel_run(ws, run_id)
        tle.wait_for_run(ws, run_id, timeout_s=180)


def test_runs_page_deletes_only_with_the_right_role(monkeypatch, team_root):
    ws = tle.Workspace(team_root)
    (completed,) = tle.list_runs(ws, "demo")  # started by nobody in particular
    (dataset,) = tle.list_datasets(ws, "demo")
    own = tle.submit_run(ws, "demo", dataset.id, tle.RunSpec(**TINY_SPEC), start_worker=False,
                         started_by="eddie").run_id
    tle.cancel_run(ws, own)

    def delete(name: str, run_id: str) -> AppTest:
        at = open_as(monkeypatch, team_root, name, "views/runs.py", project="demo", run=run_id)
        at.checkbox(key=f"confirm_delete_{run_id}").check().run()
        at.button(key="delete_run").click().run()
        assert not at.exception
        return at

    viewer = delete("vera", completed.id)
    assert "Deleting a run in project “demo” needs the editor role" in texts(viewer.error)
    # Viewers still export: the small files are ready at once.
    assert {"dl_labels", "dl_card"} <= {b.key for b in viewer.get("download_button")}
    # The sweep is offered disabled, saying why, not refused after a click.
    sweep = viewer.button(key="sweep_start")
    assert sweep.disabled
    assert "Sweeping the freeze strategies in project “demo” needs the editor role" in sweep.help
    assert "only they, the project's owner or an admin" in texts(
        delete("eddie", completed.id).error)
    assert tle.get_run(ws, completed.id).status == "completed"
    assert f"Deleted run {own}." in texts(delete("eddie", own).success)
    assert f"Deleted run {completed.id}." in texts(delete("root", completed.id).success)
    assert tle.list_runs(ws, "demo") == []


def test_a_viewer_predicts_and_runs_record_who_started_them(monkeypatch, team_root):
    at = open_as(monkeypatch, team_root, "vera", "views/prediction.py", project="demo")
    assert "Classes:" in texts(at.caption)
    assert not at.error

    at = open_as(monkeypatch, team_root, "eddie", "views/training.py", project="demo",
                 draft=tle.RunSpec(**TINY_SPEC).to_dict())
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    assert not at.exception
    ws = tle.Workspace(team_root)
    started = [r for r in tle.list_runs(ws, "demo") if r.started_by == "eddie"]
    assert len(started) == 1
    tle.cancel_run(ws, started[0].id)
    tle.wait_for_run(ws, started[0].id, timeout_s=180)


@pytest.mark.bad_input
def test_parallel_wrong_passwords_get_no_more_guesses_than_the_limit(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    ws = tle.Workspace(tmp_path / "ws")
    accounts.add_account(ws, "ann", "the right password")

    def attempt(i: int) -> str:
        try:
            accounts.sign_in(tle.Workspace(ws.root), "ann", f"guess number {i}")
        except tle.SignInRefused as exc:
            return str(exc)
        return "signed in"

    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(attempt, range(12)))
    checked = [r for r in replies if r.startswith("Wrong name or password")]
    assert "signed in" not in replies
    assert len(checked) <= accounts.MAX_FAILURES
    assert all(r.startswith(("Wrong name or password", "Too many failed")) for r in replies)
    with pytest.raises(tle.SignInRefused, match="Too many failed"):
        accounts.sign_in(ws, "ann", "the right password")
