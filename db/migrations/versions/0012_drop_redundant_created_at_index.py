"""Drop ix_reports_created_at: the review's ix_reports_worklist (created_at, id) serves every query it did.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03

0006 indexed reports.created_at for `xrq reports --since/--until`; 0007 added (created_at, id) for the
worklist's keyset pages, which starts with the same column. Two indexes in the same order cost every
report written a second index entry and, at ten million reports, a few hundred MB, for nothing: the
`--since` plan takes ix_reports_worklist (tests/cli/test_scale.py).
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_reports_created_at", table_name="reports")


def downgrade() -> None:
    op.create_index("ix_reports_created_at", "reports", ["created_at"])
