"""Whether a process still runs: one rule for every reader of a pid file or folder name."""

from __future__ import annotations

import contextlib
import os


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs. A child of this process that has ended is reaped
    first (a zombie would otherwise look alive); another user's process counts as alive."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
