"""Opening databases: migrations on both engines, URL errors with a message that says what to do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import inspect

from db.engine import normalise_url, open_database
from db.errors import DatabaseUnavailableError, DatabaseURLError

TABLES = {"models", "jobs", "studies", "images", "job_studies", "reports", "truth", "truth_images", "evaluations",
          "evaluation_scores", "locks", "deliveries", "alembic_version"}


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


@pytest.mark.postgres
def test_postgresql_sessions_run_without_jit(postgres_url: str) -> None:
    """At ten million rows the planner's costs pass jit_above_cost and each listing would first compile
    with LLVM: every connection xrq opens says jit = off, the server's default left as it is."""
    from sqlalchemy import text

    db = open_database(postgres_url)
    try:
        with db.engine.connect() as one, db.engine.connect() as two:  # two pooled connections, each set
            assert one.execute(text("SHOW jit")).scalar() == "off"
            assert two.execute(text("SHOW jit")).scalar() == "off"
            assert one.execute(text("SELECT reset_val FROM pg_settings WHERE name = 'jit'")).scalar() == "on"
    finally:
        db.dispose()


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


def test_images_of_an_older_database_go_to_the_first_job_of_their_study(db_url: str) -> None:
    """Migration 0005 on a database with data: images move from per-study to per-job rows."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from db.engine import MIGRATIONS, create, migrate

    engine = create(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")
        conn.execute(text("INSERT INTO models (id, name, fingerprint, meta, created_at) "
                          "VALUES (1, 'm', 'f', '{}', CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO studies (id, fingerprint, uid, grouping, created_at) "
                          "VALUES (1, 'a', '1', 'iu', CURRENT_TIMESTAMP)"))
        for job in (1, 2):
            conn.execute(text("INSERT INTO jobs (id, fingerprint, source, model_id, group_by, batch_size, settings, "
                              f"created_at) VALUES ({job}, 'j{job}', '/d', 1, 'auto', 8, '{{}}', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO job_studies (job_id, study_id, status, attempts, updated_at) "
                              f"VALUES ({job}, 1, 'done', 1, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO images (id, study_id, path, relpath, sha256) VALUES (7, 1, '/d/1_IM.png', "
                          "'1_IM.png', 'abc')"))
        if engine.dialect.name == "postgresql":  # rows inserted with explicit ids: move the sequences on
            for table in ("models", "studies", "jobs"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 10)"))
    migrate(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, job_id, study_id, relpath FROM images")).all()
        assert [tuple(r) for r in rows] == [(7, 1, 1, "1_IM.png")]
    engine.dispose()
    db = open_database(db_url)  # new rows get new ids after the copied ones
    from db import jobs

    rec = jobs.record_job(db, source="/e", model_id=1, group_by="auto", batch_size=8, settings={}, studies=[
        jobs.StudyIn("a", "1", "iu", [jobs.ImageIn("/e/1_IM.png", "1_IM.png", "abc", 3)])])
    with db.session() as s:
        assert s.execute(text("SELECT job_id, id > 7 FROM images WHERE job_id = :j"), {"j": rec.job_id}).one() \
            == (rec.job_id, True)


def test_without_automatic_migration_a_schema_behind_the_code_is_a_named_error(db_url: str) -> None:
    from db.engine import create, head_revision, migrate, schema_state, set_auto_migrate
    from db.errors import DatabaseBehindError

    engine = create(db_url)
    assert schema_state(engine).state == "empty"
    with pytest.raises(DatabaseBehindError, match=r"no xrq tables yet .* run `xrq db upgrade`"):
        open_database(db_url, upgrade=False)
    set_auto_migrate(False)
    try:
        with pytest.raises(DatabaseBehindError):
            open_database(db_url)  # the process's setting
        assert migrate(engine).current is None  # what `xrq db upgrade` does; it returns the state before
        state = schema_state(engine)
        assert (state.current, state.state) == (head_revision(), "up-to-date")
        open_database(db_url).dispose()
    finally:
        set_auto_migrate(True)
        engine.dispose()


def test_the_migration_files_are_one_line_named_by_revision() -> None:
    """What opening a database at its newest revision relies on to skip Alembic: file NNNN_*.py holds
    revision NNNN, revising the one before; the newest file is Alembic's head."""
    from db.engine import MIGRATIONS, head_revision, newest_migration_file

    files = sorted((MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    assert [p.name for p in files] == sorted(p.name for p in (MIGRATIONS / "versions").glob("*.py")
                                             if p.name != "__init__.py")
    previous = None
    for path in files:
        source = path.read_text()
        assert re.search(rf"^revision = [\"']{path.name[:4]}[\"']$", source, re.M), path.name
        assert re.search(rf"^down_revision = {repr(previous) if previous else 'None'}$".replace("'", "[\"']"),
                         source, re.M), path.name
        previous = path.name[:4]
    assert newest_migration_file() == head_revision() == previous


def test_a_database_at_the_newest_revision_opens_without_alembic(db_url: str) -> None:
    """Every command opens the database: at the newest revision that is one SELECT, not Alembic's import
    and scripts (a third of a second of each `xrq status`); a database behind still migrates."""
    import subprocess
    import sys

    from tests.conftest import REPO

    probe = ("import sys; from db.engine import open_database; open_database(sys.argv[1]).dispose(); "
             "print('alembic' in sys.modules)")
    run = [sys.executable, "-c", probe, db_url]
    first = subprocess.run(run, cwd=REPO, capture_output=True, text=True, check=True)
    assert first.stdout.strip() == "True"  # an empty database: migrated
    again = subprocess.run(run, cwd=REPO, capture_output=True, text=True, check=True)
    assert again.stdout.strip() == "False"


def test_driver_errors_a_user_can_fix_are_named(tmp_path: Path) -> None:
    from db.engine import driver_error
    from db.errors import DatabaseReadOnlyError, NumberOutOfRangeError

    too_large = driver_error(OverflowError("Python int too large to convert to SQLite INTEGER"))
    assert isinstance(too_large, NumberOutOfRangeError) and "up to 2147483647" in str(too_large)
    path = tmp_path / "x.db"
    open_database(f"sqlite:///{path}").dispose()
    db = open_database(f"sqlite:///file:{path}?mode=ro&uri=true")
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError) as caught, db.session() as s:
        s.execute(text("INSERT INTO locks (name, holder, acquired_at, expires_at) "
                       "VALUES ('a', 'b', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    assert isinstance(driver_error(caught.value), DatabaseReadOnlyError)
    assert driver_error(ValueError("other")) is None
    db.dispose()
