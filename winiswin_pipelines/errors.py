"""How an exception is shown in logs, metadata and stored reasons: its type and first line."""

from __future__ import annotations


def describe(exc: BaseException, *, secret: str | None = None) -> str:
    """`Type: first line of the message` (a driver error's original exception when it wraps one);
    `secret`, when given, is masked."""
    detail = getattr(exc, "orig", None) or exc
    lines = str(detail).strip().splitlines()
    message = lines[0] if lines else ""
    if secret:
        message = message.replace(secret, "***")
    return f"{type(detail).__name__}: {message}" if message else type(detail).__name__
