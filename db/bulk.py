"""Bulk statements that work on SQLite and PostgreSQL alike: conflict-free chunks, and the fast load path."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from db.engine import Database

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


def bulk_insert(db: Database, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
                chunk: int = 10_000) -> int:
    """Insert many rows fast: COPY on PostgreSQL, executemany in chunks on SQLite. Returns the row count.

    `rows` are tuples in the order of `columns` with Python values (datetimes, dicts for JSON columns);
    they are streamed, never held all at once. No conflict handling: for loading data (bench/scale.py,
    an import), not for the idempotent writes of the pipeline (`insert_ignore`). Rows given explicit ids
    leave PostgreSQL's id sequence behind: `reset_sequence` brings it past them.
    """
    names = ", ".join(columns)
    json_columns = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, JSON)]
    n = 0
    with db.engine.begin() as conn:
        raw: Any = conn.connection.dbapi_connection  # psycopg's own (for COPY) or sqlite3's
        if db.dialect == "postgresql":
            with raw.cursor() as cur, cur.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(_dumped(row, json_columns))
                    n += 1
            return n
        processors = [table.c[c].type.bind_processor(conn.dialect) for c in columns]
        sql = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' * len(columns))})"
        cur = raw.cursor()
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(tuple(v if p is None or v is None else p(v) for p, v in zip(processors, row, strict=True)))
            if len(batch) >= chunk:
                cur.executemany(sql, batch)
                n += len(batch)
                batch.clear()
        if batch:
            cur.executemany(sql, batch)
            n += len(batch)
        cur.close()
    return n


def _dumped(row: Sequence[Any], json_columns: list[int]) -> Sequence[Any]:
    if not json_columns:
        return row
    values = list(row)
    for i in json_columns:
        if values[i] is not None:
            values[i] = json.dumps(values[i])
    return values


def reset_sequence(db: Database, table: Table) -> None:
    """After rows with explicit ids: PostgreSQL's id sequence goes on past the largest (SQLite needs nothing)."""
    if db.dialect == "postgresql":
        with db.engine.begin() as conn:
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                              f"COALESCE(MAX(id), 0) + 1, false) FROM {table.name}"))
