"""Bounded echoes: a client's value shown back in an error message, a log line or a usage row is cut short,
so a 16000-character model name costs 200 characters wherever it goes."""

from __future__ import annotations

ECHO_LIMIT = 200


def clipped(value: str, limit: int = ECHO_LIMIT) -> str:
    """`value` itself when it is short enough, else its start and "...", `limit` characters in all."""
    return value if len(value) <= limit else value[: limit - 3] + "..."
