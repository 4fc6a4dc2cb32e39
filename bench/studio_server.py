"""What the browser-level benchmarks share: the app started on a workspace, and the report."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120


def start_studio(timeout_s: float = START_TIMEOUT_S, log: Path | None = None,
                 **env: str) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on a free local port with these environment variables added;
    returns the process and its URL once it answers its health check (SystemExit when it
    does not within `timeout_s`). The server's output goes to `log` when given."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    output = subprocess.DEVNULL if log is None else log.open("ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=dict(os.environ, **env), stdout=output, stderr=subprocess.STDOUT)
    if log is not None:
        output.close()  # the server holds its own copy
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.3)  # the server is starting
    server.kill()
    raise SystemExit(f"streamlit did not answer its health check within {timeout_s:.0f} s")


def print_report(report: dict[str, Any], as_json: bool) -> None:
    """One JSON line, or one aligned line per figure."""
    if as_json:
        print(json.dumps(report))
        return
    width = max(map(len, report)) + 2
    for name, value in report.items():
        print(f"{name:{width}s} {value}")
