"""Instants as the rules compare them: aware, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime) -> datetime:
    """The instant in UTC. psycopg hands ``timestamptz`` back in the session's TimeZone, and
    Python subtracts, adds to and compares two datetimes of one zone by their wall clocks:
    across a daylight-saving change that is an hour off. In UTC it is exact seconds. SQLite
    hands back naive datetimes; everything we store is UTC."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
