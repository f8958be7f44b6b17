"""The tables the code declares are the tables the migrations build, index for index, on both databases.

The schema is created only by migrations; the declarations in db/ are what queries are written (and
read) against. When the two drift apart (0012 dropped an index the declaration still named, and
0007's worklist indexes were never declared) a reader is misled about what a query can use. Alembic's
own comparison finds every difference.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from db.engine import _config, create, migrate

# Exists on PostgreSQL only (pg_trgm GIN on lower(text), migration 0006): not declarable for both dialects.
MIGRATIONS_ONLY = {"ix_reports_text_trgm"}


def _differences(engine: Engine) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    # Each module that declares tables registers them with Base.metadata when imported.
    import db.deliveries
    import db.review_schema  # noqa: F401
    from db.schema import Base

    def include(obj: Any, name: str | None, kind: str, reflected: bool, compare_to: Any) -> bool:
        return not (kind == "index" and name in MIGRATIONS_ONLY)

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": include})
        return list(compare_metadata(context, Base.metadata))


def test_the_declared_schema_is_the_migrated_one(db_url: str) -> None:
    engine = create(db_url)
    try:
        migrate(engine)
        assert _differences(engine) == []
    finally:
        engine.dispose()


def test_the_look_for_unsent_sign_offs_walks_a_time_window(db_url: str) -> None:
    """The backlog's look for sign-offs never sent reads the week's versions on their index (0013), not
    every version ever written; 0013 goes down and up."""
    from sqlalchemy import text

    from db.deliveries import unsent_signed_query
    from db.engine import open_database
    from db.schema import utcnow

    db = open_database(db_url)
    try:
        query = unsent_signed_query("dicom://PACS@127.0.0.1:104", "sr-signed", utcnow(), 1000)
        sql = str(query.compile(db.engine, compile_kwargs={"literal_binds": True}))
        with db.engine.connect() as conn:
            if db.dialect == "postgresql":
                conn.exec_driver_sql("SET enable_seqscan = off")  # an empty table: ask whether the index serves
                plan = [row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}")]
            else:
                plan = [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
        assert any("ix_review_versions_created_at" in line for line in plan), plan
        from alembic import command

        config = _config()
        with db.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0012")
        with db.engine.connect() as conn:
            names = {r[0] for r in conn.execute(text(
                "SELECT indexname FROM pg_indexes" if db.dialect == "postgresql"
                else "SELECT name FROM sqlite_master WHERE type = 'index'"))}
        assert "ix_review_versions_created_at" not in names
    finally:
        db.dispose()
