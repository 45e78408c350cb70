"""`make dev`: the Dagster UI and daemon on 127.0.0.1, stopped cleanly by Ctrl-C or SIGTERM.

`dagster dev` started from a script can inherit an ignored SIGINT and then hang on shutdown
(environment-notes.md). This launcher starts it in its own session with default signal handling,
forwards one interrupt to it, and then stops what is left of its process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from winiswin_pipelines import settings

_GRACE_SECONDS = 20


def _restore_default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main() -> int:
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-h", "127.0.0.1", "-p", settings.dagster_port(),
               "-w", "workspace.yaml"]
    child = subprocess.Popen(command, start_new_session=True, preexec_fn=_restore_default_signals)

    def stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child.send_signal(signal.SIGTERM)  # dagster dev shuts its services down on SIGTERM
        try:
            child.wait(_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
        _reap_group(child.pid)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return child.wait()


def _reap_group(pgid: int) -> None:
    # Code servers can outlive `dagster dev`; nothing of its session may be left behind.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
