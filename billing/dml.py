"""Statement helpers shared by the modules that write."""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert


class KeyRaced(Exception):
    """Another transaction committed this key while ours ran; ours must roll back and replay."""


def insert_unless_exists(session: Session, table: Table) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING in the session's dialect."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()
