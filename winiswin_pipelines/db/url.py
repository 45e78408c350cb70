"""DATABASE_URL parsing: normalise to the psycopg 3 driver, mask the password for messages."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

DATABASE_URL_VAR = "DATABASE_URL"
_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "postgresql+psycopg_async"}


class DatabaseConfigError(RuntimeError):
    """DATABASE_URL is malformed or the server behind it cannot be reached."""


def mask_url(url: str | URL) -> str:
    """The URL as text with the password replaced by ***, safe for logs, errors and metadata."""
    try:
        parsed = url if isinstance(url, URL) else make_url(str(url))
    except ArgumentError:
        return _mask_unparseable(str(url))
    return parsed.render_as_string(hide_password=True)


def _mask_unparseable(text: str) -> str:
    # user:secret@host -> user:***@host, even when the rest of the URL is broken.
    if "@" not in text or "://" not in text:
        return text
    scheme, rest = text.split("://", 1)
    userinfo, host = rest.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in userinfo else text


def normalize_database_url(raw: str, *, driver: str = "psycopg") -> URL:
    """Parse `postgres://` / `postgresql://` / `postgresql+<driver>://` into a URL for `driver`."""
    text = (raw or "").strip()
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise DatabaseConfigError(f"{DATABASE_URL_VAR} is not a valid URL: {mask_url(text)!r}") from exc
    if url.drivername not in _POSTGRES_SCHEMES:
        raise DatabaseConfigError(
            f"{DATABASE_URL_VAR} must be a PostgreSQL URL (postgres:// or postgresql://), got scheme "
            f"{url.drivername!r} in {mask_url(url)!r}"
        )
    if not url.host and not url.query.get("host"):
        raise DatabaseConfigError(f"{DATABASE_URL_VAR} names no host: {mask_url(url)!r}")
    if not url.database:
        raise DatabaseConfigError(f"{DATABASE_URL_VAR} names no database: {mask_url(url)!r}")
    return url.set(drivername=f"postgresql+{driver}")
