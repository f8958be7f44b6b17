"""Opening databases: migrations on both engines, URL errors with a message that says what to do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import inspect

from db.engine import normalise_url, open_database
from db.errors import DatabaseUnavailableError, DatabaseURLError

TABLES = {"models", "jobs", "studies", "images", "job_studies", "reports", "truth", "truth_images", "evaluations",
          "evaluation_scores", "locks", "alembic_version"}


def test_migrations_create_the_documented_tables(db_url: str) -> None:
    db = open_database(db_url)
    assert set(inspect(db.engine).get_table_names()) >= TABLES
    db.dispose()
    open_database(db_url).dispose()  # migrating again is a no-op


def test_schema_doc_names_every_table_and_column(sqlite_url: str) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "schema.md").read_text()
    db = open_database(sqlite_url)
    for table in TABLES - {"alembic_version"}:
        assert f"## {table}" in doc
        for column in inspect(db.engine).get_columns(table):
            assert f"`{column['name']}`" in doc, (table, column["name"])


def test_plain_postgresql_url_uses_psycopg3() -> None:
    assert normalise_url("postgresql://u@h/db").startswith("postgresql+psycopg://")


@pytest.mark.parametrize("url", ["not a url", "mysql://u@h/db"])
def test_bad_url_is_a_named_error(url: str) -> None:
    with pytest.raises(DatabaseURLError, match=re.escape("sqlite:///xrq.db")):
        open_database(url)


def test_unreachable_server_is_a_named_error() -> None:
    with pytest.raises(DatabaseUnavailableError, match="XRQ_DATABASE_URL"):
        open_database("postgresql://nobody@127.0.0.1:1/none")


def test_sqlite_file_in_missing_folder_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailableError):
        open_database(f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}")
