"""`make dev`: the Dagster UI and daemon on 127.0.0.1, stopped cleanly by Ctrl-C or SIGTERM.

`dagster dev` started from a script can inherit an ignored SIGINT and then hang on shutdown
(environment-notes.md). This launcher starts it in its own session with default signal handling,
passes one interrupt on to that session's process group and within 5 s leaves nothing of it behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from winiswin_pipelines import settings

# dagster dev's services are down about 1 s after SIGTERM; what still runs after the grace period is
# killed, so Ctrl-C gives the prompt back within 5 s.
_GRACE_SECONDS = 3.0
_KILL_WAIT_SECONDS = 1.0
_POLL_SECONDS = 0.1
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def _handle_signals(handler: signal.Handlers | Callable[[int, object], None]) -> None:
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _become_subreaper() -> None:
    # Processes orphaned by dagster dev become our children, so we reap them at once: a zombie still
    # counts as a member of its group, and some inits (this machine's) reap orphans only seconds later.
    with contextlib.suppress(AttributeError, OSError):  # not Linux: the init reaps them
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _interrupt(_signum: int, _frame: object) -> None:
    # Stopping happens in main(), not here: a handler runs inside child.wait(), which holds the lock
    # Popen needs to reap the child, so a wait in the handler always ran into its timeout.
    _handle_signals(signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
    raise KeyboardInterrupt


def main() -> int:
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-h", "127.0.0.1", "-p", settings.dagster_port(),
               "-w", "workspace.yaml"]
    _become_subreaper()
    child = subprocess.Popen(command, start_new_session=True, preexec_fn=lambda: _handle_signals(signal.SIG_DFL))
    _handle_signals(_interrupt)
    try:
        return child.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _handle_signals(signal.SIG_IGN)
        _stop_group(child)  # also when dagster dev exits by itself: its code servers may outlive it


def _stop_group(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole group (code servers can outlive dagster dev), SIGKILL to what is left after the grace."""
    pgid = child.pid  # start_new_session: the child leads its own session and process group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)  # each of dagster's processes shuts down gracefully on SIGTERM
    if _group_gone(child, pgid, _GRACE_SECONDS):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    _group_gone(child, pgid, _KILL_WAIT_SECONDS)


def _group_gone(child: subprocess.Popen[bytes], pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        child.poll()  # reap dagster dev, then the orphans left to us as subreaper
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
