"""Migration 0007 (the review tables, the worklist indexes, `reviewed_reports`) goes down and up again."""

from __future__ import annotations

from sqlalchemy import inspect, text

from db.engine import _config, create, migrate


def test_0007_downgrades_and_upgrades(db_url: str) -> None:
    from alembic import command

    engine = create(db_url)
    try:
        migrate(engine)
        tables = set(inspect(engine).get_table_names())
        assert {"users", "reviews", "review_versions", "reader_studies", "reader_cases"} <= tables
        indexes = {i["name"] for i in inspect(engine).get_indexes("reports")}
        assert {"ix_reports_worklist", "ix_reports_worklist_job", "ix_reports_worklist_model"} <= indexes
        if engine.dialect.name == "postgresql":  # the trigram index, where pg_trgm can be had
            with engine.connect() as conn:
                trgm = conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).first()
            assert trgm is None or "ix_reports_text_trgm" in indexes
        config = _config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0006")  # the revision before 0007
        assert "users" not in set(inspect(engine).get_table_names())
        assert "reviewed_reports" not in set(inspect(engine).get_view_names())
        migrate(engine)
        assert "reviewed_reports" in set(inspect(engine).get_view_names())
    finally:
        engine.dispose()
