"""Benchmark: the live-demo path, from nothing to a first prediction, in a real browser.

Starts `streamlit run app.py` on a fresh temporary workspace, then drives headless Chromium
(Playwright) as a presenter would: create a project, take the real-photo "ants vs bees"
sample, train with the default settings, wait for the run to complete, and predict one
photo on the Prediction page until its label is shown. Reports the total time from starting
the server to the first prediction shown, and each step's time. The training step is split
further by watching the run in the store: queued until a worker claims it, the worker
starting up (TensorFlow import, backbone build) until its first progress report, and the
training itself.

Every wait is bounded by its own timeout and by one deadline for the whole script
(`--limit`, 2 minutes by default, stopping the browser and the server included): a step
that does not finish fails with the step's name and what it was waiting for, and the
script exits 1. A watchdog ends the script at the limit should anything else hang.

    python bench/demo_path.py [--json] [--limit 120] [--screenshots DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from studio_server import print_report, start_studio  # noqa: E402 - beside this file

SHARED = Path(os.environ.get("TL_SHARED", ROOT.parent / "shared"))
CHROMIUM = os.environ.get("TL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
PROJECT = "Demo"
UI_STEP_S = 30  # a page or a click answering; training and the server start get the rest
CLEANUP_S = 15  # of the limit, kept for closing the browser and stopping the server
STOP_WAIT_S = 5
STORE_POLL_S = 0.1
# The steps the report times, in order; the training step's parts follow it.
STEPS = ("server_start", "home_page", "create_project", "dataset_page", "sample_ingest",
         "training_page", "training", "prediction_page", "prediction")
TRAINING_PARTS = ("queued_s", "worker_start_s", "worker_training_s", "completed_shown_s")


class StepFailed(Exception):
    """A step did not finish in time, or the app showed an error instead."""


class Deadline:
    """One budget for the whole path: each wait gets its own cap, never more than is left."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left_s(self) -> float:
        return self.end - time.monotonic()

    def ms(self, cap_s: float) -> float:
        left = self.left_s()
        if left <= 0:
            raise StepFailed(f"the whole path ran past its {self.seconds:.0f} s limit")
        return 1000 * min(cap_s, left)


class Timings:
    """Each step's time, from the end of the one before (or the start of the clock)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.last = self.started
        self.steps: dict[str, float] = {}
        self.current: str | None = None

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.current = name
        yield
        now = time.perf_counter()
        self.steps[name] = round(now - self.last, 2)
        self.last = now
        self.current = None

    def total(self) -> float:
        return round(self.last - self.started, 2)


class RunWatcher:
    """Follows the demo's run in the store from a thread, so the report can split the
    training step into queued, worker start-up and training without touching the engine.
    Reads only the run's row; `tl_engine` here never imports TensorFlow."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: dict[str, float] = {}
        self.run_id: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="run-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _first(self, event: str) -> None:
        self.seen.setdefault(event, time.perf_counter())

    def _follow(self) -> None:
        import tl_engine as tle

        while not self._stop.wait(STORE_POLL_S):
            try:
                runs = tle.list_runs(self.ws, PROJECT)
            except Exception:  # the project or the index is not there yet
                continue
            if not runs:
                continue
            run = runs[-1]  # the first run of the project: the demo's
            self.run_id = run.id
            self._first("queued")
            if run.status != tle.RunStatus.QUEUED:
                self._first("claimed")
            if run.progress != tle.Progress():
                self._first("first_progress")
            if not run.is_active:
                self._first("finished")
                return

    def parts(self, clicked: float, shown: float) -> dict[str, float | None]:
        """Seconds of each part of the training step (None for a part not seen)."""
        marks = [clicked, self.seen.get("claimed"), self.seen.get("first_progress"),
                 self.seen.get("finished"), shown]
        parts: dict[str, float | None] = {}
        for name, begin, end in zip(TRAINING_PARTS, marks, marks[1:], strict=False):
            parts[name] = None if begin is None or end is None else round(end - begin, 2)
        return parts


def _idle(page: Any, deadline: Deadline) -> None:
    """Until Streamlit has finished the current script run (its status widget is gone)."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=deadline.ms(UI_STEP_S))


def _first_of(page: Any, deadline: Deadline, cap_s: float,
              outcomes: dict[str, Any]) -> str:
    """Waits until one of the named locators is visible, or the app shows an exception
    (which fails the step with its text); returns the name of the one seen."""
    exception = page.get_by_test_id("stException")
    either = exception
    for locator in outcomes.values():
        either = either.or_(locator)  # one bounded wait for whichever comes first
    either.first.wait_for(state="visible", timeout=deadline.ms(cap_s))
    if exception.first.is_visible():
        raise StepFailed("the app showed an exception: "
                         + " ".join(exception.first.inner_text().split())[:300])
    return next(name for name, locator in outcomes.items() if locator.first.is_visible())


def _visible(page: Any, locator: Any, deadline: Deadline, cap_s: float = UI_STEP_S) -> None:
    _first_of(page, deadline, cap_s, {"expected": locator})


def _goto(page: Any, title: str, deadline: Deadline) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click(
        timeout=deadline.ms(UI_STEP_S))
    _visible(page, page.get_by_role("heading", name=title), deadline)
    _idle(page, deadline)


def demo_path(page: Any, url: str, photo: Path, deadline: Deadline, timings: Timings,
              watcher: RunWatcher, screenshots: Path | None) -> dict[str, Any]:
    """The presenter's clicks; returns what the path saw (the label, the run's accuracy)."""
    def shot(name: str) -> None:
        if screenshots is not None:
            page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)

    seen: dict[str, Any] = {}
    with timings.step("home_page"):
        page.goto(url, timeout=deadline.ms(UI_STEP_S))
        _visible(page, page.get_by_role("heading", name="Create your first project"), deadline)
        _idle(page, deadline)
    shot("demo-01-home")

    with timings.step("create_project"):
        page.get_by_label("Project name", exact=True).fill(PROJECT, timeout=deadline.ms(UI_STEP_S))
        page.get_by_role("button", name="Create project").first.click(
            timeout=deadline.ms(UI_STEP_S))
        _visible(page, page.get_by_text("What to do next"), deadline)
        _idle(page, deadline)

    with timings.step("dataset_page"):
        _goto(page, "Dataset", deadline)

    with timings.step("sample_ingest"):
        page.get_by_role("tab", name="Sample data").click(timeout=deadline.ms(UI_STEP_S))
        page.get_by_role("button", name="Use the ants vs bees sample").click(
            timeout=deadline.ms(UI_STEP_S))
        created = page.get_by_text(re.compile(r"^Created .*ants vs bees.*images"))
        outcome = _first_of(page, deadline, UI_STEP_S, {
            "created": created, "error": page.get_by_text("No dataset was created")})
        if outcome != "created":
            raise StepFailed("the sample was not ingested: "
                             + page.get_by_text("No dataset was created").first.inner_text())
        seen["dataset"] = created.first.inner_text()
        _idle(page, deadline)
    shot("demo-02-dataset")

    with timings.step("training_page"):
        _goto(page, "Training", deadline)

    with timings.step("training"):
        page.get_by_role("button", name="Start training").click(timeout=deadline.ms(UI_STEP_S))
        clicked = time.perf_counter()
        completed = page.get_by_text(re.compile(r"^Completed — validation accuracy"))
        outcome = _first_of(page, deadline, deadline.left_s(), {
            "completed": completed,
            "failed": page.get_by_text(re.compile(r"^The run (failed|was )"))})
        shown = time.perf_counter()
        if outcome != "completed":
            raise StepFailed("the run did not complete: "
                             + page.get_by_text(re.compile(r"^The run ")).first.inner_text())
        seen["run"] = completed.first.inner_text()
        seen["training_parts"] = watcher.parts(clicked, shown)
        _idle(page, deadline)
    shot("demo-03-training")

    with timings.step("prediction_page"):
        _goto(page, "Prediction", deadline)
        # The model is loaded once the page names its classes.
        _visible(page, page.get_by_text(re.compile(r"^Classes: ")), deadline)

    with timings.step("prediction"):
        page.get_by_test_id("stFileUploaderDropzoneInput").first.set_input_files(
            str(photo), timeout=deadline.ms(UI_STEP_S))
        label = page.get_by_test_id("stMetric").filter(has_text="Prediction").get_by_test_id(
            "stMetricValue")
        not_sure = page.get_by_test_id("stAlertContentInfo").filter(has_text="Not sure")
        outcome = _first_of(page, deadline, UI_STEP_S, {"label": label, "not sure": not_sure})
        seen["prediction"] = (label.first.inner_text() if outcome == "label"
                              else not_sure.first.inner_text().splitlines()[0])
    shot("demo-04-prediction")
    return seen


def _stop(server: Any) -> None:
    server.terminate()
    try:
        server.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        server.kill()


def _failure_text(exc: BaseException) -> str:
    """One line: the error, and for a Playwright timeout what it was waiting for."""
    lines = [line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines()]
    waiting = next((line for line in lines if line.startswith("- waiting for")), None)
    return lines[0] + (f" ({waiting[2:]})" if waiting else "")


class Watchdog:
    """The last resort behind the bounded waits: whatever hangs (a browser that does not
    close, a server that does not stop), the script ends at its limit, with a report and
    without leaving the server running."""

    def __init__(self, limit_s: float, as_json: bool) -> None:
        self.server: Any = None
        self._limit_s = limit_s
        self._as_json = as_json
        self._timer = threading.Timer(limit_s, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        report = {"ok": False, "failed_step": "watchdog",
                  "error": f"still running after {self._limit_s:.0f} s: stopped"}
        print_report(report, self._as_json)
        sys.stdout.flush()
        if self.server is not None:
            self.server.kill()
        os._exit(1)


def _tail(log: Path, lines: int = 20) -> str:
    """The end of the server's output: a traceback says why a page failed."""
    try:
        text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))  # no colours
        return "\n".join(text.splitlines()[-lines:])
    except OSError:
        return ""


def _cancel_active_runs(ws: Any) -> None:
    """A path that failed mid-training leaves no worker training into a deleted folder."""
    import tl_engine as tle

    for run in tle.list_runs(ws):
        if run.is_active:
            tle.cancel_run(ws, run.id)


def run_demo(limit_s: float, screenshots: Path | None = None,
             log: Callable[[str], None] = lambda _: None,
             watchdog: Watchdog | None = None) -> dict[str, Any]:
    """The whole path once; the report, with `ok` false and the failed step on failure.
    Every wait, the browser's launch included, ends within `limit_s` less the time kept
    for stopping the browser and the server."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    import tl_engine as tle

    deadline = Deadline(limit_s - CLEANUP_S)
    keras_home = SHARED / "weights" / "keras_home"
    sample = SHARED / "data" / "hymenoptera"
    photo = sorted((sample / "val" / "bees").glob("*.jpg"))[0]
    tmp = Path(tempfile.mkdtemp(prefix="tl-demo-path-"))
    ws = tle.Workspace(tmp / "ws")
    server_log = tmp / "streamlit.log"
    report: dict[str, Any] = {"ok": False}
    server = None
    with sync_playwright() as playwright:
        # The presenter's browser is open before the demo starts: not part of the total.
        launched = time.perf_counter()
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             timeout=deadline.ms(UI_STEP_S))
        page = browser.new_page(viewport={"width": 1440, "height": 1400})
        report["browser_launch_s"] = round(time.perf_counter() - launched, 2)
        timings = Timings()
        watcher = RunWatcher(ws)
        try:
            with timings.step("server_start"):
                server, url = start_studio(
                    TL_WORKSPACE=str(ws.root), KERAS_HOME=str(keras_home), TL_OFFLINE="1",
                    TL_SAMPLE_DATA=str(sample), TF_CPP_MIN_LOG_LEVEL="3",
                    timeout_s=deadline.left_s(), log=server_log)
                if watchdog is not None:
                    watchdog.server = server
            watcher.start()
            log(f"server up at {url}")
            seen = demo_path(page, url, photo, deadline, timings, watcher, screenshots)
            report.update(ok=True, total_s=timings.total(), **{
                f"{name}_s": timings.steps[name] for name in STEPS})
            report.update({f"training_{name}": value
                           for name, value in seen.pop("training_parts").items()})
            report.update(seen)
        except (StepFailed, PlaywrightError, SystemExit) as exc:
            step = timings.current or "setup"
            report.update(failed_step=step, error=_failure_text(exc),
                          elapsed_s=round(time.perf_counter() - timings.started, 2),
                          steps_done={name: timings.steps[name] for name in timings.steps},
                          server_log_tail=_tail(server_log))
            if screenshots is not None:
                page.screenshot(path=str(screenshots / f"demo-failed-{step}.png"),
                                full_page=True, timeout=STOP_WAIT_S * 1000)
        finally:
            watcher.stop()
            browser.close()
            if server is not None:
                _stop(server)
            _cancel_active_runs(ws)
            shutil.rmtree(tmp, ignore_errors=True)
    report["limit_s"] = limit_s
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument("--limit", type=float, default=120.0,
                        help="seconds the whole path may take before it fails (default 120)")
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="a folder for a screenshot of each page on the path")
    args = parser.parse_args()
    if args.screenshots is not None:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    with Watchdog(args.limit, args.json) as watchdog:
        report = run_demo(args.limit, args.screenshots,
                          log=(lambda _: None) if args.json else print, watchdog=watchdog)
    print_report(report, args.json)
    if not report["ok"]:
        if not args.json:
            print(f"\nFAILED in step {report['failed_step']}: {report['error']}\n"
                  f"server output, last lines:\n{report['server_log_tail']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
