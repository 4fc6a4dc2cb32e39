"""Shared fixtures: temporary workspaces, the shared image sets and weights, image files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_root() -> Path:
    return Path(os.environ.get("TL_SHARED", PROJECT_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not (root / "data").is_dir() or not (root / "weights").is_dir():
        pytest.skip(f"shared data and weights not found at {root} (set TL_SHARED)")
    return root


@pytest.fixture(scope="session")
def hymenoptera(shared_dir: Path) -> Path:
    return shared_dir / "data" / "hymenoptera"


@pytest.fixture(scope="session")
def flowers(shared_dir: Path) -> Path:
    return shared_dir / "data" / "flowers128"


@pytest.fixture
def workspace(tmp_path: Path):
    from tl_engine.store import Workspace

    return Workspace(tmp_path / "ws")


@pytest.fixture
def keras_home(shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable copy of the shared Keras cache, as KERAS_HOME, with downloads disabled."""
    home = tmp_path / "keras_home"
    shutil.copytree(shared_dir / "weights" / "keras_home", home)
    for path in [home, *home.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv("TL_OFFLINE", "1")
    return home
