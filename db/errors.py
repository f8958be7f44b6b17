"""Every error that db/ raises on purpose. The CLI prints their messages as `Error: ...`.

All are `XrqError`s (common/errors.py).
"""

from common.errors import XrqError


class DatabaseError(XrqError):
    """Base class: raised for database failures a user can cause or fix."""


class DatabaseURLError(DatabaseError):
    """Raised when XRQ_DATABASE_URL (or --database-url) is not a URL SQLAlchemy can use."""


class DatabaseUnavailableError(DatabaseError):
    """Raised when the database cannot be reached or opened (server down, bad credentials, no such file)."""


class NotFoundError(DatabaseError):
    """Raised when a job, study or model id asked for does not exist."""


class DatabaseBehindError(DatabaseError):
    """Raised when automatic migration is off and the schema is older than this xrq (or empty)."""


class DatabaseReadOnlyError(DatabaseError):
    """Raised when the database refuses writes: a read-only SQLite file or folder, a read-only server."""


class NumberOutOfRangeError(DatabaseError):
    """Raised when a number given (an id, a limit) is too large for the database's integer columns."""


class DatabaseFullError(DatabaseError):
    """Raised when the database cannot grow: SQLite's disk (or its page limit) full, PostgreSQL's disk full."""


class JobBusyError(DatabaseError):
    """Raised when a job to delete has studies queued or running: a worker may hold them."""
