"""Opening the database: URL checks, connection settings, migrations, sessions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.orm import Session, sessionmaker

from db.errors import DatabaseError, DatabaseUnavailableError, DatabaseURLError

DEFAULT_URL = "sqlite:///xrq.db"
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


def create(url: str) -> Engine:
    """An engine for `url`, checked by connecting once. Raises DatabaseURLError/DatabaseUnavailableError."""
    url = normalise_url(url)
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise DatabaseURLError(f"cannot use {url!r}: {exc}; {_URL_HELP}") from exc
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SADatabaseError as exc:  # server down, bad credentials, a file that is not a database
        shown = engine.url.render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailableError(
            f"cannot open the database {shown}: {reason}. Check XRQ_DATABASE_URL and that the server runs."
        ) from exc
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (Alembic). Safe to call from many processes at once."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
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


def open_database(url: str = DEFAULT_URL, *, upgrade: bool = True) -> Database:
    """Connect to `url` and (by default) migrate it: the one way the rest of xrq gets a database."""
    engine = create(url)
    if upgrade:
        migrate(engine)
    return Database(engine)
