"""Bulk statements that work on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

# SQLite and PostgreSQL both cap the parameters of one statement; stay well under both.
CHUNK = 500


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_ignore(session: Session, table: type, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING, in chunks, on SQLite and PostgreSQL alike."""
    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    for chunk in chunks(rows):
        stmt = dialect.insert(table).values(list(chunk)).on_conflict_do_nothing(index_elements=keys)
        session.execute(stmt)
