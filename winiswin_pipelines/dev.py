"""`make dev`: the Dagster UI and daemon on 127.0.0.1, stopped cleanly by Ctrl-C or SIGTERM.

`dagster dev` started from a script can inherit an ignored SIGINT and then hang on shutdown
(environment-notes.md). This launcher starts it in its own session with default signal handling,
forwards one interrupt to it, and within 5 s leaves nothing of its process group behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from winiswin_pipelines import settings

# dagster dev's services are down about 1 s after SIGTERM; what still runs after the grace period is
# killed, so Ctrl-C gives the prompt back within 5 s.
_GRACE_SECONDS = 3.0
_KILL_WAIT_SECONDS = 1.0
_POLL_SECONDS = 0.1


def _restore_default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interrupt(_signum: int, _frame: object) -> None:
    # Stopping happens in main(), not here: a handler runs inside child.wait(), which holds the lock
    # Popen needs to reap the child, so a wait in the handler always ran into its timeout.
    raise KeyboardInterrupt


def main() -> int:
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-h", "127.0.0.1", "-p", settings.dagster_port(),
               "-w", "workspace.yaml"]
    child = subprocess.Popen(command, start_new_session=True, preexec_fn=_restore_default_signals)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return child.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_group(child)


def _stop_group(child: subprocess.Popen[bytes]) -> None:
    """Let dagster dev stop its services, then kill what is left of its group (code servers can outlive it)."""
    pgid = child.pid  # start_new_session: the child leads its own session and process group
    child.send_signal(signal.SIGTERM)  # dagster dev stops its webserver, daemon and code servers itself
    if _group_gone(child, pgid, _GRACE_SECONDS):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    _group_gone(child, pgid, _KILL_WAIT_SECONDS)


def _group_gone(child: subprocess.Popen[bytes], pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        child.poll()  # reap dagster dev: a zombie still counts as a member of its group
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
