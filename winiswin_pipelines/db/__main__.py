"""`python -m winiswin_pipelines.db <command>`: the data layer from the command line.

  start     start (or reuse) the server (embedded unless DATABASE_URL) and bring the schema to head
  stop      stop the embedded server
  destroy   stop the embedded server and delete its data (`make clean`)
  status    where the database is and its schema version
  upgrade   bring the schema to a revision (default head)
  downgrade take the schema down to a revision (default base)
"""

from __future__ import annotations

import argparse
import sys

from winiswin_pipelines import settings
from winiswin_pipelines.db.embedded import EmbeddedPostgres, ensure_database_exists
from winiswin_pipelines.db.manager import DAGSTER_DATABASE, DatabaseManager
from winiswin_pipelines.db.url import DatabaseConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m winiswin_pipelines.db", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "destroy", "status", "upgrade", "downgrade"])
    parser.add_argument("revision", nargs="?", help="target revision for upgrade/downgrade")
    args = parser.parse_args(argv)
    try:
        return _run(args.command, args.revision)
    except DatabaseConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(command: str, revision: str | None) -> int:
    if command == "stop":
        stopped = EmbeddedPostgres(settings.state_dir()).stop()
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return 0
    if command == "destroy":
        EmbeddedPostgres(settings.state_dir()).destroy()
        print("embedded PostgreSQL stopped and its data deleted")
        return 0
    manager = DatabaseManager(migrate=command == "start")
    if command == "upgrade":
        manager.upgrade(revision or "head")
    elif command == "downgrade":
        manager.downgrade(revision or "base")
    if command == "start":
        ensure_database_exists(manager.url, DAGSTER_DATABASE)  # Dagster's own database on the same server
    where = "DATABASE_URL" if settings.database_url() else "embedded server"
    print(f"{where}: {manager.masked_url}; schema {manager.current_revision()} (head {manager.head_revision()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
