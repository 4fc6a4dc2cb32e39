"""Benchmark: how long a page switch takes to settle in the browser, with the server idle
and while a training runs with two other tabs watching it live.

Headless Chromium (Playwright) against `streamlit run app.py` on a workspace holding the
ants-vs-bees photos. Each page switch is timed from the click in the sidebar until the
page's title is shown and Streamlit reports the script run finished. Reported as the
median per condition and their ratio (target: under 2); no absolute figure is asserted.

    python bench/bench_page_switch.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from studio_server import print_report, start_studio  # noqa: E402 - beside this file

SHARED = Path(os.environ.get("TL_SHARED", ROOT.parent / "shared"))
CHROMIUM = os.environ.get("TL_CHROMIUM", "/usr/bin/chromium")
PAGES = ["Dataset", "Model", "Freeze strategy", "Training", "Runs", "Home"]
TIMEOUT_MS = 120_000


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle(page) -> None:
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=TIMEOUT_MS)


def _switch_times(page, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        for title in PAGES:
            started = time.perf_counter()
            page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
            page.get_by_role("heading", name=title if title != "Home" else
                             "Transfer Learning Studio").first.wait_for(timeout=TIMEOUT_MS)
            _idle(page)
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--watchers", type=int, default=2,
                        help="other tabs following the training live")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    import tl_engine as tle

    tmp = Path(tempfile.mkdtemp(prefix="tl-bench-pages-"))
    keras_home = SHARED / "weights" / "keras_home"
    os.environ["KERAS_HOME"] = str(keras_home)
    os.environ["TL_OFFLINE"] = "1"
    ws = tle.Workspace(tmp / "ws")
    dataset = tle.ingest_folder(ws, SHARED / "data" / "hymenoptera", project="bench")
    server, url = start_studio(TL_WORKSPACE=str(ws.root), KERAS_HOME=str(keras_home),
                               TL_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="3")
    start = f"{url}/?project=bench&user=viewer"
    run_id = None
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM,
                                        args=["--no-sandbox", "--disable-gpu"])
            viewer = browser.new_page(viewport={"width": 1440, "height": 1600})
            viewer.goto(start)
            _idle(viewer)
            _switch_times(viewer, 1)  # warm up: imports and caches of every page
            idle = _switch_times(viewer, args.rounds)

            # Augmentation keeps the backbone busy on every image, every epoch.
            spec = tle.RunSpec(backbone="MobileNetV2-0.35", epochs=200, augment=("flip",),
                               batch_size=16)
            run_id = tle.submit_run(ws, "bench", dataset.id, spec, started_by="trainer",
                                    force=True).run_id
            while tle.get_run(ws, run_id).status != "running" or not tle.get_run(
                    ws, run_id).progress.epochs:
                time.sleep(0.5)
            watchers = []
            for name in [f"watcher-{i + 1}" for i in range(args.watchers)]:
                watcher = browser.new_context().new_page()
                watcher.goto(f"{url}/training?project=bench&user={name}&run={run_id}")
                watcher.get_by_text("Running").first.wait_for(timeout=TIMEOUT_MS)
                watchers.append(watcher)
            cpu_before, wall_before = _cpu_seconds(server.pid), time.perf_counter()
            viewer.wait_for_timeout(10_000)  # the watchers alone, for the server's CPU share
            watch_cpu = (_cpu_seconds(server.pid) - cpu_before) / (
                time.perf_counter() - wall_before)
            busy = _switch_times(viewer, args.rounds)
            browser.close()
    finally:
        if run_id:
            tle.cancel_run(ws, run_id)
            tle.wait_for_run(ws, run_id, timeout_s=120)
        server.terminate()
        server.wait(timeout=30)

    result = {
        "page_switch_idle_median_s": round(statistics.median(idle), 3),
        "page_switch_training_median_s": round(statistics.median(busy), 3),
        "ratio": round(statistics.median(busy) / statistics.median(idle), 2),
        "switches_per_condition": len(idle),
        "watchers": args.watchers,
        "server_cpu_share_while_watched": round(watch_cpu, 3),
        "cpu": os.cpu_count(),
    }
    print_report(result, args.json)

if __name__ == "__main__":
    main()
