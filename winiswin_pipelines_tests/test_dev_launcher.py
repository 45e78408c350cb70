"""`make dev`: the Dagster UI comes up on loopback and an interrupt stops every process it started within 5 s."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from winiswin_pipelines.settings import PROJECT_DIR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serving(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).status == 200
    except OSError:
        return False


def _session_processes(session: int) -> list[str]:
    """Every process of the session, zombies included (`ps` still lists them)."""
    left = []
    for proc in psutil.process_iter(["pid", "status", "cmdline"]):
        with contextlib.suppress(ProcessLookupError):
            if os.getsid(proc.pid) == session:
                left.append(f"{proc.pid} {proc.info['status']} {' '.join((proc.info['cmdline'] or [])[:4])}")
    return left


def test_dev_serves_on_loopback_and_ctrl_c_stops_everything(database_url: str, tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_DIR / "config" / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "DATABASE_URL": database_url, "DAGSTER_PORT": str(port)}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "winiswin_pipelines.dev"], cwd=PROJECT_DIR, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not _serving(port):
            assert launcher.poll() is None, "make dev exited before serving"
            assert time.monotonic() < deadline, "the Dagster UI did not come up"
            time.sleep(1)
        (dagster_dev,) = psutil.Process(launcher.pid).children()
        session = os.getsid(dagster_dev.pid)  # dagster dev and everything it started
        assert len(_session_processes(session)) > 1, "dagster dev started no processes"
        interrupted = time.monotonic()
        launcher.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        assert launcher.wait(60) == 0
        assert time.monotonic() - interrupted < 5, "Ctrl-C took 5 s or more to give the prompt back"
        while (left := _session_processes(session)) and time.monotonic() - interrupted < 5:
            time.sleep(0.1)
        assert left == [], f"processes left 5 s after Ctrl-C: {left}"
        assert not _serving(port)
    finally:
        if launcher.poll() is None:
            launcher.kill()
