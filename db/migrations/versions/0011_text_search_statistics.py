"""PostgreSQL keeps ten times the statistics on lower(reports.text), the expression `--text` searches.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

With the default statistics target PostgreSQL estimates how many reports a `--text` substring matches
from the 100 bounds of one histogram drawn from a 30,000-row sample: a term in 0.45% of the reports hits
none, one or two of them, and is estimated at 10, 979 or 1,959 rows of the true 453 depending on the
sample of the last ANALYZE. The plan follows that luck: above about 0.3% it reads the whole of `studies`
to join rather than look up each match. At a target of 1,000 the histogram has 1,000 bounds and the
sample is 300,000 rows: the same search is estimated at 370, the same after every ANALYZE, and each
match's study is looked up by its key (tests/cli/test_scale.py). SQLite has no such statistics: nothing
to do there. The next ANALYZE (autovacuum's, after a load) takes the new target.
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TARGET = 1000


def _set(target: int) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    exists = bind.exec_driver_sql("SELECT to_regclass('ix_reports_text_trgm') IS NOT NULL").scalar()
    if exists:  # absent where pg_trgm could not be installed (0006)
        op.execute(f"ALTER INDEX ix_reports_text_trgm ALTER COLUMN 1 SET STATISTICS {target}")


def upgrade() -> None:
    _set(TARGET)


def downgrade() -> None:
    _set(-1)
