"""Opening the database: URL checks, connection settings, migrations, sessions.

Opening migrates the schema to the newest revision, unless the process turned that off
(`set_auto_migrate(False)`, from XRQ_AUTO_MIGRATE=0): then a schema behind this code is an error that
names `xrq db upgrade`, the one step that migrates.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.orm import Session, sessionmaker

from db.errors import (
    DatabaseBehindError,
    DatabaseError,
    DatabaseFullError,
    DatabaseReadOnlyError,
    DatabaseUnavailableError,
    DatabaseURLError,
    NumberOutOfRangeError,
)

MIGRATIONS = Path(__file__).parent / "migrations"
_URL_HELP = "use for example sqlite:///xrq.db or postgresql://user@host:5432/dbname"


class Database:
    """An engine plus a session factory. One per process; sessions are short and per unit of work."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on any exception."""
        with self._sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def normalise_url(url: str) -> str:
    """Accept the URLs people type: plain postgresql:// means psycopg 3, the driver xrq installs."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseURLError(f"{url!r} is not a database URL; {_URL_HELP}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseURLError(f"unsupported database {parsed.get_backend_name()!r}; {_URL_HELP}")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (xrq status) run beside a writer; busy_timeout makes concurrent writers wait
    # instead of failing; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _postgres_session(dbapi_connection: Any, _record: Any) -> None:
    # No JIT: xrq's queries are short walks of an index that stream their rows, and from about two
    # million rows up PostgreSQL's cost estimates for them pass jit_above_cost, so each would first
    # compile and optimise its expressions with LLVM (a third of a second or more) to save nothing.
    # A SET per new connection, not a startup option: connection poolers (PgBouncer) refuse those.
    try:
        dbapi_connection.execute("SET jit = off")
        dbapi_connection.commit()
    except Exception:  # a server without the setting (before PostgreSQL 11) or that forbids it: JIT stays
        dbapi_connection.rollback()


def create(url: str) -> Engine:
    """An engine for `url`, checked by connecting once. Raises DatabaseURLError/DatabaseUnavailableError."""
    url = normalise_url(url)
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
            event.listen(engine, "connect", _postgres_session)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise DatabaseURLError(f"cannot use {url!r}: {exc}; {_URL_HELP}") from exc
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SADatabaseError as exc:  # server down, bad credentials, a file that is not a database
        shown = engine.url.render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        full = driver_error(exc, engine)
        if isinstance(full, DatabaseFullError):
            raise full from exc
        hint = " (is its disk full? SQLite needs room for its -wal and -shm files)" \
            if "disk I/O error" in reason else ""
        raise DatabaseUnavailableError(
            f"cannot open the database {shown}: {reason}{hint}. Check XRQ_DATABASE_URL and that the server runs."
        ) from exc
    return engine


_auto_migrate = True


def set_auto_migrate(enabled: bool) -> None:
    """Whether `open_database` migrates (the default) or only checks the schema, for this process.

    Set once at start-up from XRQ_AUTO_MIGRATE by whoever reads the settings (the CLI, a worker).
    """
    global _auto_migrate
    _auto_migrate = enabled


def _config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest migration this xrq knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None  # there are migrations
    return head


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema is: `current` (None: no xrq tables yet) against this xrq's `head`."""

    current: str | None
    head: str
    known: bool  # False: a revision this xrq has never heard of (a newer xrq migrated it)

    @property
    def state(self) -> str:
        """up-to-date, behind, empty or newer."""
        if self.current == self.head:
            return "up-to-date"
        if self.current is None:
            return "empty"
        return "behind" if self.known else "newer"


def schema_state(engine: Engine) -> SchemaState:
    """The schema revision of the database against this xrq's newest; changes nothing."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    known = current is None or current in {rev.revision for rev in script.walk_revisions()}
    head = script.get_current_head()
    assert head is not None
    return SchemaState(current=current, head=head, known=known)


def migrate(engine: Engine) -> SchemaState:
    """Bring the schema to the newest migration (Alembic). Safe to call from many processes at once.

    Returns the state before. Alembic's own log lines are at INFO, which workers quiet (worker/logs.py).
    """
    from alembic import command
    from alembic.util.exc import CommandError

    config = _config()
    before = schema_state(engine)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Workers start together; one of them migrates, the others wait for it here.
            conn.execute(text("SELECT pg_advisory_xact_lock(7468201)"))
        config.attributes["connection"] = conn
        try:
            command.upgrade(config, "head")
        except CommandError as exc:  # e.g. a revision this xrq does not know: a newer xrq migrated it
            raise DatabaseError(f"cannot use the database {engine.url.render_as_string(hide_password=True)}: "
                                f"{exc}. Was it made by a newer xrq? Upgrade xrq, or use another database.") from exc
        except SADatabaseError as exc:
            raise driver_error(exc, engine) or exc from exc
    return before


def check_schema(engine: Engine) -> None:
    """Raise DatabaseBehindError unless the schema is this xrq's newest (what opening does when
    automatic migration is off)."""
    state = schema_state(engine)
    shown = engine.url.render_as_string(hide_password=True)
    if state.state == "empty":
        raise DatabaseBehindError(f"the database {shown} has no xrq tables yet and automatic migration is off "
                                  f"(XRQ_AUTO_MIGRATE=0): run `xrq db upgrade` to create them")
    if state.state == "behind":
        raise DatabaseBehindError(f"the database {shown} is at schema revision {state.current}, this xrq needs "
                                  f"{state.head}, and automatic migration is off (XRQ_AUTO_MIGRATE=0): "
                                  "run `xrq db upgrade`")
    if state.state == "newer":
        raise DatabaseError(f"cannot use the database {shown}: its schema revision {state.current} is unknown to "
                            "this xrq. Was it made by a newer xrq? Upgrade xrq, or use another database.")


def driver_error(exc: BaseException, engine: Engine | None = None) -> DatabaseError | None:
    """A named error for a driver error a user can fix (read-only database, a number too large), else None."""
    from sqlalchemy.exc import DataError, OperationalError

    shown = f" {engine.url.render_as_string(hide_password=True)}" if engine is not None else ""
    orig = getattr(exc, "orig", None)
    reason = (str(orig or exc).strip().splitlines() or [""])[0]
    sqlstate = getattr(orig, "sqlstate", None)
    if (isinstance(exc, OperationalError) and "readonly database" in reason) or sqlstate == "25006":
        return DatabaseReadOnlyError(
            f"the database{shown} is read-only ({reason}): make the SQLite file and its folder writable by "
            "this user, or set XRQ_DATABASE_URL to a database it may write")
    if _is_full(reason, sqlstate):
        return DatabaseFullError(
            f"the database{shown} is full ({reason}): free space on its disk, or set XRQ_DATABASE_URL to a "
            "database with room, then run the command again (work not recorded stays to be done)")
    if isinstance(exc, OverflowError) or (isinstance(exc, DataError) and sqlstate == "22003"):
        return NumberOutOfRangeError(
            f"a number given is too large for the database ({reason}): ids and counts go up to 2147483647; "
            "check the numbers in the command")
    return None


def _is_full(reason: str, sqlstate: str | None) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full"), PostgreSQL's disk_full (53100), ENOSPC."""
    lowered = reason.lower()
    return (sqlstate == "53100" or "database or disk is full" in lowered or "no space left on device" in lowered
            or "could not extend file" in lowered)


def plan_lines(conn: Connection, query: Any, *, cursor: bool = False) -> list[str]:
    """`query`'s plan on `conn`, one line a step: PostgreSQL's EXPLAIN (`cursor`: of the query as a
    server-side cursor runs it, which plans for the first rows), SQLite's EXPLAIN QUERY PLAN."""
    sql = str(query.compile(conn.engine, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "postgresql":
        declare = "DECLARE c NO SCROLL CURSOR FOR " if cursor else ""
        return [row[0] for row in conn.exec_driver_sql(f"EXPLAIN {declare}{sql}")]
    return [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]


@functools.cache
def newest_migration_file() -> str:
    """The newest revision in migrations/versions, read from the file names alone (NNNN_what.py, revision
    NNNN, one line of history: tests/db/test_engine.py holds every file to that) without Alembic."""
    return max(p.name[:4] for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def _at_newest(engine: Engine) -> bool:
    """Whether the database's recorded revision is already this xrq's newest, by one plain SELECT.

    The common case of every command: Alembic (a third of a second to import and to read its scripts
    on a busy two-core host) is only loaded when there is something to migrate or to explain.
    """
    try:
        with engine.connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except SADatabaseError:  # no xrq tables yet, or a database error Alembic's path will name
        return False
    return current == [newest_migration_file()]


def open_database(url: str, *, upgrade: bool | None = None) -> Database:
    """Connect to `url` and migrate it (or, with automatic migration off, check it is migrated): the one
    way the rest of xrq gets a database. `upgrade` overrides the process's setting."""
    engine = create(url)
    try:
        if _at_newest(engine):
            pass  # the common case: nothing to migrate, nothing to check
        elif _auto_migrate if upgrade is None else upgrade:
            migrate(engine)
        else:
            check_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return Database(engine)
