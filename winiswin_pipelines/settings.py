"""Environment variables, in one place. Nothing else reads os.environ directly."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
SAMPLE_DATA_DIR = PACKAGE_DIR / "sample_data"


def env(name: str, default: str | None = None) -> str | None:
    """An environment variable, with empty strings treated as unset."""
    value = os.environ.get(name, "").strip()
    return value or default


def database_url() -> str | None:
    """`DATABASE_URL`; None means: use the embedded PostgreSQL server."""
    return env("DATABASE_URL")


def state_dir() -> Path:
    """Project-local folder for generated state (embedded PostgreSQL, spools, cold storage)."""
    return Path(env("WINISWIN_STATE_DIR") or PROJECT_DIR / ".state").resolve()


def pg_bin_dir() -> str | None:
    """`WINISWIN_PG_BIN`: the PostgreSQL server binaries for the embedded server (default: found)."""
    return env("WINISWIN_PG_BIN")


def dagster_port() -> str:
    """`DAGSTER_PORT`: the port of `make dev`'s Dagster UI on 127.0.0.1."""
    return env("DAGSTER_PORT", "3000")


def dagster_home() -> Path:
    """`DAGSTER_HOME`: the Dagster instance folder (default: the one the Makefile sets up in the state dir)."""
    return Path(env("DAGSTER_HOME") or state_dir() / "dagster_home").resolve()


def cold_storage_dir() -> Path:
    """The local cold-storage folder used when no `BUCKET_NAME` is set."""
    return Path(env("COLD_STORAGE_DIR") or state_dir() / "cold_storage").resolve()


def bucket_name() -> str | None:
    """`BUCKET_NAME`: the S3 / R2 bucket for cold storage; unset: the local folder."""
    return env("BUCKET_NAME")


def s3_prefix() -> str:
    """`S3_PREFIX`: the key prefix inside the bucket."""
    return env("S3_PREFIX", "winiswin")


def s3_endpoint_url() -> str | None:
    """`S3_ENDPOINT_URL`: the endpoint of R2 or another S3-compatible store (unset: AWS)."""
    return env("S3_ENDPOINT_URL")


def aws_region(endpoint_url: str | None = None) -> str:
    """`AWS_REGION`; R2 and other custom endpoints take "auto"."""
    return env("AWS_REGION", "auto" if endpoint_url else "us-east-1")


def aws_access_key() -> str | None:
    return env("AWS_ACCESS_KEY") or env("AWS_ACCESS_KEY_ID")


def aws_secret_access_key() -> str | None:
    return env("AWS_SECRET_ACCESS_KEY")


def legacy_dir() -> Path:
    """`WINISWIN_LEGACY_DIR`: the legacy bot's folder to migrate (default `data/` in the working directory)."""
    return Path(env("WINISWIN_LEGACY_DIR") or "data").resolve()


def live_trading_opt_in() -> bool:
    """`WINISWIN_LIVE_TRADING=1`: the explicit opt-in live trading needs besides the Binance keys."""
    return env("WINISWIN_LIVE_TRADING") in ("1", "true", "yes")


def trading_feed() -> str:
    """`WINISWIN_TRADING_FEED`: the feed of sessions the supervisor sensor starts, `replay` (default) or `binance`."""
    return env("WINISWIN_TRADING_FEED", "replay")


def binance_api_key() -> str | None:
    return env("BINANCE_API_KEY")


def binance_api_secret() -> str | None:
    return env("BINANCE_API_SECRET")


def capture_symbols() -> list[str]:
    """`WINISWIN_CAPTURE_SYMBOLS`: the symbols the live market-data capture records, comma-separated
    (default BTCUSDT,ETHUSDT); upper-cased, blanks and repeats dropped."""
    raw = env("WINISWIN_CAPTURE_SYMBOLS", "BTCUSDT,ETHUSDT")
    return list(dict.fromkeys(s.strip().upper() for s in raw.split(",") if s.strip()))


def retention_days() -> int:
    """`WINISWIN_RETENTION_DAYS`: days a growing table keeps hot in PostgreSQL before archival (default 30)."""
    value = env("WINISWIN_RETENTION_DAYS", "30")
    if not value.isdigit():
        raise ValueError(f"WINISWIN_RETENTION_DAYS must be a whole number of days, got {value!r}")
    return int(value)
