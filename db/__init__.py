"""The database: SQLAlchemy models, engine and sessions, migrations, and the queries xrq needs.

Imports nothing from cli/, worker/ or model/.
"""

from db.engine import DEFAULT_URL, Database, open_database

__all__ = ["DEFAULT_URL", "Database", "open_database"]
