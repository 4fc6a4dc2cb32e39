"""bench/demo_path.py's promise that it never hangs: with too short a limit, the live-demo
path stops in the step that ran out of time, names it and what it waited for, reports the
steps done before it, and exits 1. (The full path takes longer than a test may: it is a
benchmark, run by hand.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("TL_CHROMIUM", "/usr/bin/chromium")
SHORT_LIMIT_S = 20  # of which the script keeps 15 for stopping the browser and the server


def test_a_path_past_its_limit_names_the_step_it_stopped_in(shared_dir):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    sys.path.insert(0, str(PROJECT_ROOT / "bench"))
    from demo_path import STEPS

    result = subprocess.run(
        [sys.executable, "bench/demo_path.py", "--json", "--limit", str(SHORT_LIMIT_S)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=4 * SHORT_LIMIT_S)

    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["ok"] is False
    done = list(report["steps_done"])
    assert done == list(STEPS[:len(done)]), "the steps done come first, in order"
    assert report["failed_step"] == STEPS[len(done)]
    assert "Timeout" in report["error"] or "limit" in report["error"], report["error"]
    assert report["limit_s"] == SHORT_LIMIT_S
