"""`make dev`: the Dagster UI comes up on loopback and an interrupt stops every process it started."""

from __future__ import annotations

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


def test_dev_serves_on_loopback_and_ctrl_c_stops_everything(database_url: str, tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_DIR / "dagster.yaml", home / "dagster.yaml")
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
        started = [p for p in psutil.Process(launcher.pid).children(recursive=True)]
        assert started, "dagster dev started no processes"
        launcher.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        assert launcher.wait(60) == 0
        time.sleep(0.5)
        left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert left == [], f"processes left running: {[p.cmdline()[:3] for p in left]}"
        assert not _serving(port)
    finally:
        if launcher.poll() is None:
            launcher.kill()
