"""Shared fixtures: temporary workspaces, the shared image sets and weights, image files."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# One BLAS thread, as in the workers the app starts (tl_engine.jobs.spawn_worker): NumPy's
# BLAS threads spin against TensorFlow's in the in-process workers tests run. Read when
# NumPy loads, which no test has done yet.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def shared_root() -> Path:
    return Path(os.environ.get("TL_SHARED", PROJECT_ROOT.parent / "shared")).resolve()


def _offline_keras_home() -> None:
    """Keras reads KERAS_HOME once, at import: point it at a writable copy of the shared cache
    before any test imports Keras, and never let a test reach for the network."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TL_OFFLINE"] = "1"
    source = shared_root() / "weights" / "keras_home"
    home = Path(tempfile.mkdtemp(prefix="tl-keras-home-"))
    atexit.register(shutil.rmtree, home, True)  # one per test process, gone with it
    if source.is_dir():
        shutil.copytree(source, home, dirs_exist_ok=True)
        for path in [home, *home.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    os.environ["KERAS_HOME"] = str(home)


_offline_keras_home()
# A spawned worker exits as soon as the queue is empty, as it did before workers waited for
# the next job: a test about waiting sets its own period.
os.environ["TL_WORKER_IDLE_S"] = "0"


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
def keras_home(shared_dir: Path) -> Path:
    """The session's writable copy of the shared Keras cache (KERAS_HOME)."""
    return Path(os.environ["KERAS_HOME"])


def write_color_classes(
    root: Path, classes: dict[str, tuple[int, int, int]], per_class: int = 10, size: int = 40,
    seed: int = 0,
) -> Path:
    """Real JPEG files: one folder per class, noisy images around each class's colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, colour in classes.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 25, (size, size, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype("uint8")
            Image.fromarray(pixels).save(folder / f"{label}_{i:03d}.jpg", quality=92)
    return root


TINY_CLASSES = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Path:
    return write_color_classes(tmp_path / "tiny", TINY_CLASSES, per_class=10)


@pytest.fixture
def tiny_dataset(workspace, tiny_data_dir: Path):
    from tl_engine.datasets import ingest_folder

    return ingest_folder(workspace, tiny_data_dir, project="test")


def open_app(monkeypatch: pytest.MonkeyPatch, root: Path, page: str | None = None,
             **query: str):
    """A new browser tab on the app over workspace `root`: nothing in its session, only
    what the URL says (project=..., user=..., run=...), run once and on `page` if given."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TL_WORKSPACE", str(root))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    for name, value in query.items():
        at.query_params[name] = value
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def train_tiny_run(ws, dataset, **settings):
    """Queue and train a small run in this process (the worker's own code path)."""
    from tl_engine import runs
    from tl_engine.jobs import submit_run, worker_main
    from tl_engine.spec import RunSpec

    spec = RunSpec(**{"backbone": "MobileNetV2-0.35", "weights": "none", "image_size": 32,
                      "batch_size": 8, "learning_rate": 0.01, "epochs": 2, **settings})
    submission = submit_run(ws, dataset.project, dataset.id, spec, start_worker=False)
    worker_main(ws)
    return runs.get_run(ws, submission.run_id)


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory):
    """A workspace with project 'demo', a 3-class colour dataset and one completed run.
    Shared by the tests that only read it; do not modify it in a test."""
    from tl_engine.datasets import ingest_folder
    from tl_engine.store import Workspace

    root = tmp_path_factory.mktemp("trained")
    ws = Workspace(root / "ws")
    data = write_color_classes(root / "data", TINY_CLASSES, per_class=10)
    dataset = ingest_folder(ws, data, project="demo")
    run = train_tiny_run(ws, dataset, epochs=3)
    assert run.status == "completed", run.error
    return ws, dataset, run


# --- the hostile-input tally -----------------------------------------------------------------
# Tests that feed the engine bad input or inject a fault say so, and say when the outcome was
# right; the run ends with one line of totals. Whole tests are counted with the markers
# `@pytest.mark.bad_input` / `@pytest.mark.fault` (one each, counted as handled or survived
# when the test passes); single provocations inside a test with the `hostile` fixture.


class HostileTally:
    """Counts of bad inputs tried and handled, faults injected and survived, this session.

    Each count rides on its test's report (`user_properties`), and the tally adds up the
    reports where they are logged: in the one pytest process, or in the controller when
    pytest-xdist runs the tests in several."""

    KINDS = ("tried", "handled", "injected", "survived")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.KINDS, 0)

    def add(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and report.failed):
            for key, value in report.user_properties:
                if key == TALLY_KEY:
                    self.counts[value[0]] += 1

    def line(self) -> str:
        c = self.counts
        return (f"bad inputs tried: {c['tried']}, handled: {c['handled']}; "
                f"faults injected: {c['injected']}, survived: {c['survived']}")


TALLY_KEY = "hostile-tally"
_TALLY = HostileTally()


class Hostile:
    """The `hostile` fixture: `bad_input(name)` when a test provokes a bad input and
    `handled(name)` once the outcome is checked right; `fault(name)` / `survived(name)` the
    same for injected faults. `with hostile.input(name):` and `with hostile.injected(name):`
    count the first on entry and the second on a clean exit."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item
        self._seen: dict[str, list[str]] = {kind: [] for kind in HostileTally.KINDS}

    def _count(self, kind: str, name: str) -> None:
        self._seen[kind].append(name)
        self._item.user_properties.append((TALLY_KEY, (kind, name)))

    def bad_input(self, name: str) -> None:
        self._count("tried", name)

    def handled(self, name: str) -> None:
        if name not in self._seen["tried"]:
            raise ValueError(f"handled({name!r}) without bad_input({name!r})")
        self._count("handled", name)

    def fault(self, name: str) -> None:
        self._count("injected", name)

    def survived(self, name: str) -> None:
        if name not in self._seen["injected"]:
            raise ValueError(f"survived({name!r}) without fault({name!r})")
        self._count("survived", name)

    @contextmanager
    def input(self, name: str) -> Iterator[None]:
        self.bad_input(name)
        yield
        self.handled(name)

    @contextmanager
    def injected(self, name: str) -> Iterator[None]:
        self.fault(name)
        yield
        self.survived(name)


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Hostile:
    return Hostile(request.node)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bad_input: the test feeds a bad input (counted)")
    config.addinivalue_line("markers", "fault: the test injects a fault (counted)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call" or (report.when == "setup" and report.failed):
        name = item.nodeid
        if item.get_closest_marker("bad_input"):
            report.user_properties.append((TALLY_KEY, ("tried", name)))
            if report.passed:
                report.user_properties.append((TALLY_KEY, ("handled", name)))
        if item.get_closest_marker("fault"):
            report.user_properties.append((TALLY_KEY, ("injected", name)))
            if report.passed:
                report.user_properties.append((TALLY_KEY, ("survived", name)))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _TALLY.add(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Written just before pytest's own closing line ("N passed in ..."), which stays last
    # for whatever reads a test run's outcome from its final line.
    terminalreporter.write_line(_TALLY.line())


@pytest.fixture
def demo_ws(tmp_path: Path):
    """A workspace with project "demo": 30 real JPEGs in three colour classes."""
    from tl_engine.datasets import ingest_folder
    from tl_engine.store import Workspace

    ws = Workspace(tmp_path / "ws")
    ingest_folder(ws, write_color_classes(tmp_path / "data", TINY_CLASSES, per_class=10),
                  project="demo")
    return ws


def texts(elements) -> str:
    """The values of AppTest elements, one per line."""
    return "\n".join(str(e.value) for e in elements)


def kill_worker(pid: int) -> None:
    """SIGKILL a worker process, as a crash would, and return once it is gone."""
    import signal
    import time

    from tl_engine.processes import process_alive

    os.kill(pid, signal.SIGKILL)
    while process_alive(pid):
        time.sleep(0.1)  # the kernel reaps a non-child asynchronously


