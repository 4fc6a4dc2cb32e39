"""Load benchmark: several people using one instance at once while a training runs.

N sessions (Streamlit AppTest instances, one per thread, all in this one process: they
share the engine's caches and the loaded models the way browser sessions share one
server) load pages and predict for a fixed time against one workspace, while the worker
trains a long run in the background. Reported: pages and predictions served, their p50
and p95 latency, and errors (which must be 0). No figure is asserted.

    python bench/bench_load.py [--sessions 4] [--seconds 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("TL_SHARED", ROOT.parent / "shared"))
PAGES = ["views/home.py", "views/dataset.py", "views/model.py", "views/freeze.py",
         "views/training.py", "views/runs.py"]


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def _session(number: int, root: Path, photos: list[Path], until: float, results: dict,
             lock: threading.Lock) -> None:
    from streamlit.testing.v1 import AppTest

    rng = random.Random(number)
    pages: list[float] = []
    predictions: list[float] = []
    errors: list[str] = []
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        at.query_params["project"] = "load"
        at.query_params["user"] = f"user-{number}"
        at.run()
        while time.monotonic() < until:
            if rng.random() < 0.3:
                started = time.perf_counter()
                at.switch_page("views/prediction.py").run()
                photo = rng.choice(photos)
                at.file_uploader(key="predict_uploads").set_value(
                    [(photo.name, photo.read_bytes(), "image/jpeg")]).run()
                took, kind = time.perf_counter() - started, predictions
                if not any(m.label == "Prediction" for m in at.metric):
                    errors.append(f"session {number}: no prediction for {photo.name}")
            else:
                started = time.perf_counter()
                at.switch_page(rng.choice(PAGES)).run()
                took, kind = time.perf_counter() - started, pages
            if at.exception:
                errors.append(f"session {number}: {at.exception[0].value}")
            kind.append(took)
    except Exception as exc:  # a crashed session is an error to report, not a crashed bench
        errors.append(f"session {number}: {type(exc).__name__}: {exc}")
    with lock:
        results["pages"] += pages
        results["predictions"] += predictions
        results["errors"] += errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("KERAS_HOME", str(SHARED / "weights" / "keras_home"))
    os.environ.setdefault("TL_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="tl-bench-load-")) / "ws"
    os.environ["TL_WORKSPACE"] = str(root)
    import tl_engine as tle

    ws = tle.Workspace(root)
    data = SHARED / "data" / "hymenoptera"
    dataset = tle.ingest_folder(ws, data, project="load")
    first = tle.submit_run(ws, "load", dataset.id, tle.RunSpec(epochs=3), started_by="setup")
    assert tle.wait_for_run(ws, first.run_id).status == "completed"
    # A long training keeps the worker busy for the whole measurement.
    busy = tle.submit_run(ws, "load", dataset.id,
                          tle.RunSpec(epochs=500, augment=("flip",), batch_size=16),
                          started_by="trainer").run_id
    photos = sorted((data / "val").rglob("*.jpg"))
    results: dict = {"pages": [], "predictions": [], "errors": []}
    lock = threading.Lock()
    until = time.monotonic() + args.seconds
    threads = [threading.Thread(target=_session, args=(i, root, photos, until, results, lock))
               for i in range(args.sessions)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        training = tle.get_run(ws, busy)
    finally:
        tle.cancel_run(ws, busy)
        tle.wait_for_run(ws, busy, timeout_s=120)

    def seconds(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    report = {
        "sessions": args.sessions,
        "seconds": args.seconds,
        "pages_served": len(results["pages"]),
        "page_p50_s": seconds(_percentile(results["pages"], 0.5)),
        "page_p95_s": seconds(_percentile(results["pages"], 0.95)),
        "predictions_served": len(results["predictions"]),
        "prediction_p50_s": seconds(_percentile(results["predictions"], 0.5)),
        "prediction_p95_s": seconds(_percentile(results["predictions"], 0.95)),
        "errors": len(results["errors"]),
        "training_status_during": training.status,
        "training_epochs_meanwhile": training.progress.get("epoch"),
        "cpu": os.cpu_count(),
    }
    for error in results["errors"][:10]:
        print(f"error: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    else:
        for name, value in report.items():
            print(f"{name:28s} {value}")


if __name__ == "__main__":
    main()
