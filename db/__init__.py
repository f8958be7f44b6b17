"""The database: SQLAlchemy models, engine and sessions, migrations, and the queries xrq needs.

Imports nothing from cli/, worker/ or model/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from db.engine import Database, open_database

__all__ = ["Database", "open_database"]


def __getattr__(name: str) -> Any:
    # Resolved on first use: db.engine imports SQLAlchemy and Alembic (about 0.3 s), and `import db.errors`
    # (which every `xrq` command does, `--help` included) should not pay for them (docs/architecture.md:
    # cheap commands stay cheap).
    if name in __all__:
        from db import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'db' has no attribute {name!r}")
