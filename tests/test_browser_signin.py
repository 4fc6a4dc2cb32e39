"""Sign-in in a real browser: headless Chromium (Debian's) driven by Playwright against
`streamlit run app.py`, once through the organisation's OpenID Connect provider (a real
local one, oidc-provider-mock) and once through built-in accounts made with the CLI.
Screenshots land in $TL_SCREENSHOTS like the main flow's."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT
from test_browser_flow import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SCREENSHOTS,
    UI_TIMEOUT_MS,
    _free_port,
    _idle,
    _shot,
    _wait_healthy,
)

from dashboard.auth import SESSION_COOKIE

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "correct horse battery"
FIRST_PAGE_TIMEOUT_MS = 240_000


def _wait_listening(port: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the provider exited with {process.returncode}")
        try:
            url = f"http://127.0.0.1:{port}/.well-known/openid-configuration"
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)  # polling a server that is starting; not a synchronisation sleep
    raise AssertionError("the OpenID Connect provider did not start")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@contextmanager
def _studio(tmp_path: Path, env: dict[str, str], secrets_file: Path) -> Iterator[str]:
    """`streamlit run app.py` on a fresh workspace, reading secrets from `secrets_file`
    only (never the checkout's .streamlit/secrets.toml)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    inherited = {k: v for k, v in os.environ.items() if k not in ("TL_AUTH", "TL_ADMINS")}
    env = {**inherited, "TL_WORKSPACE": str(tmp_path / "ws"), "TL_OFFLINE": "1",
           "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    text = secrets_file.read_text() if secrets_file.exists() else ""
    secrets_file.write_text(text.replace("{port}", str(port)))
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--secrets.files", str(secrets_file)],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(url, server)
        yield url
    finally:
        _stop(server)
        log.close()


def _users_add(workspace: Path, name: str, admin: bool = False) -> None:
    added = subprocess.run(
        [sys.executable, "-m", "tl_engine", "users", "add", name, "--workspace", str(workspace),
         *(["--admin"] if admin else [])],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert added.returncode == 0, added.stderr


def _sign_in(page, url: str, name: str, password: str = PASSWORD) -> None:
    page.get_by_label("Account name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    _idle(page)


def _create_project(page, name: str) -> None:
    from playwright.sync_api import expect

    page.get_by_label("Project name").fill(name)
    page.get_by_role("button", name="Create project").click()
    expect(page).to_have_url(re.compile(rf"project={name}"))
    expect(page.get_by_text("What to do next")).to_be_visible()
    _idle(page)


def test_accounts_sign_in_and_a_project_refused_to_a_non_member(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    _users_add(tmp_path / "ws", "ann")
    _users_add(tmp_path / "ws", "bob")
    with _studio(tmp_path, {"TL_AUTH": "accounts"}, tmp_path / "secrets.toml") as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ann = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        ann.set_default_timeout(UI_TIMEOUT_MS)
        ann.goto(f"{url}/runs?project=Insects")  # a deep link, before signing in
        expect(ann.get_by_role("heading", name="Sign in")).to_be_visible()
        _idle(ann)
        expect(ann.get_by_test_id("stSidebar")).to_have_count(0)
        _shot(ann, "signin-01-accounts-sign-in")

        _sign_in(ann, url, "ann", "not the password")
        expect(ann.get_by_text("Wrong name or password.")).to_be_visible()
        _sign_in(ann, url, "ann")
        sidebar = ann.get_by_test_id("stSidebar")
        expect(sidebar.get_by_text("Signed in")).to_be_visible()
        expect(sidebar.get_by_text("ann", exact=True)).to_be_visible()
        expect(sidebar.get_by_role("link", name="ann")).to_have_count(0)
        expect(sidebar.get_by_label("Your name")).to_have_count(0)
        # The page stores the session in a cookie: a new page load signs in with it.
        ann.wait_for_function(f"document.cookie.includes('{SESSION_COOKIE}=')")
        ann.goto(url)
        # The first page past the sign-in loads TensorFlow (the sidebar's hardware line).
        ann.get_by_role("heading", name="Create your first project").wait_for(
            timeout=FIRST_PAGE_TIMEOUT_MS)
        _create_project(ann, "Insects")
        # A reload (a new server session) stays signed in: the cookie holds the session.
        ann.reload()
        expect(ann.get_by_text("What to do next")).to_be_visible()
        expect(ann.get_by_text("Your role here: owner")).to_be_visible()
        _idle(ann)
        _shot(ann, "signin-02-accounts-owner-home")

        # Bob, in another browser, is not a member: the picker does not offer the project,
        # and a link to it says so and shows nothing of it.
        bob = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        bob.set_default_timeout(UI_TIMEOUT_MS)
        bob.goto(url)
        _sign_in(bob, url, "bob")
        expect(bob.get_by_role("heading", name="Create your first project")).to_be_visible()
        expect(bob.get_by_test_id("stSidebar").get_by_label("Project")).to_have_count(0)
        bob.wait_for_function(f"document.cookie.includes('{SESSION_COOKIE}=')")
        bob.goto(f"{url}/runs?project=Insects")
        expect(bob.get_by_text("You don't have access to project “Insects”; ask its owner")
               ).to_be_visible()
        expect(bob.get_by_role("heading", name="Runs")).to_have_count(0)
        _idle(bob)
        _shot(bob, "signin-03-accounts-refused")

        # Signing out ends the session: a reload asks again.
        bob.get_by_test_id("stSidebar").get_by_role("button", name="Sign out").click()
        expect(bob.get_by_role("heading", name="Sign in")).to_be_visible()
        bob.wait_for_function(f"!document.cookie.includes('{SESSION_COOKIE}=')")
        bob.reload()
        expect(bob.get_by_role("heading", name="Sign in")).to_be_visible()
        browser.close()


@pytest.fixture
def oidc_provider(tmp_path) -> Iterator[str]:
    """A real OpenID Connect provider on 127.0.0.1 with one user, alice@example.org."""
    pytest.importorskip("oidc_provider_mock")
    pytest.importorskip("authlib")
    port = _free_port()
    log = open(tmp_path / "provider.log", "wb")  # noqa: SIM115 - closed below
    provider = subprocess.Popen(
        [sys.executable, "-m", "oidc_provider_mock", "--port", str(port), "--host",
         "127.0.0.1", "--user", "alice@example.org"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, provider)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(provider)
        log.close()


def test_oidc_sign_in_through_the_organisations_provider(tmp_path, oidc_provider):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    secrets_file = tmp_path / "secrets.toml"
    secrets_file.write_text(
        'TL_AUTH = "oidc"\nTL_ADMINS = "it@example.org, Alice@Example.org"\n\n[auth]\n'
        'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(32)}"\n'
        'client_id = "transfer-learning-studio"\n'
        f'client_secret = "{secrets.token_hex(16)}"\n'
        f'server_metadata_url = "{oidc_provider}/.well-known/openid-configuration"\n')
    # The provider speaks plain HTTP on 127.0.0.1: allow that for this test server only.
    with _studio(tmp_path, {"AUTHLIB_INSECURE_TRANSPORT": "1"}, secrets_file) as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.goto(f"{url}/training")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(page.get_by_role("heading", name="Training")).to_have_count(0)
        _idle(page)
        _shot(page, "signin-04-oidc-sign-in")

        page.get_by_role("button", name="Sign in with your organisation").click()
        # The provider's own page: choose the user it knows.
        page.get_by_role("button", name="alice@example.org").click()
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_text("alice@example.org")).to_be_visible(
            timeout=FIRST_PAGE_TIMEOUT_MS)
        expect(sidebar.get_by_role("link", name="alice@example.org")).to_have_count(0)
        expect(sidebar.get_by_text("Signed in · admin")).to_be_visible()  # TL_ADMINS
        expect(sidebar.get_by_label("Your name")).to_have_count(0)
        _create_project(page, "Bolts")
        expect(page.get_by_text("Your role here: owner, and you administer this instance")
               ).to_be_visible()
        _shot(page, "signin-05-oidc-signed-in")

        # Signing out ends the provider's session too (its end-session page), then back here.
        sidebar.get_by_role("button", name="Sign out").click()
        page.get_by_role("button", name="End session").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.goto(f"{url}/?project=Bolts")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(page.get_by_text("Bolts")).to_have_count(0)
        browser.close()
