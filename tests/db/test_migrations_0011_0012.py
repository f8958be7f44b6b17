"""Migrations 0011 (the statistics target of --text's expression) and 0012 (a redundant index dropped)
go up, down and up again on both databases."""

from __future__ import annotations

from sqlalchemy import Engine, inspect, text

from db.engine import _config, create, migrate


def _indexes(engine: Engine) -> set[str]:
    return {i["name"] for i in inspect(engine).get_indexes("reports") if i["name"]}


def _statistics_target(engine: Engine) -> int | None:
    """attstattarget of ix_reports_text_trgm's expression; None where the index is not (SQLite, no pg_trgm)."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return conn.execute(text("SELECT attstattarget FROM pg_attribute "
                                 "WHERE attrelid = to_regclass('ix_reports_text_trgm') AND attnum = 1")).scalar()


def _downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def test_0011_and_0012_go_down_and_up(db_url: str) -> None:
    engine = create(db_url)
    try:
        migrate(engine)
        indexes = _indexes(engine)
        assert "ix_reports_created_at" not in indexes and "ix_reports_worklist" in indexes
        trgm = "ix_reports_text_trgm" in indexes
        assert _statistics_target(engine) == (1000 if trgm else None)
        _downgrade(engine, "0010")
        assert "ix_reports_created_at" in _indexes(engine)
        assert _statistics_target(engine) in ((None, -1) if trgm else (None,))  # the default again
        migrate(engine)
        assert "ix_reports_created_at" not in _indexes(engine)
        assert _statistics_target(engine) == (1000 if trgm else None)
    finally:
        engine.dispose()
