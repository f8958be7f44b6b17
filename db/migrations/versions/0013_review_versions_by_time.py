"""Index review_versions.created_at: the nightly look for sign-offs never sent walks a time window.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03

`db.deliveries.unsent_signed` (the backlog's retry of signed SRs) selects the sign-offs and addenda
of the last seven days. Without an index that is a scan of every version ever written, which grows
with the years a hospital keeps its reviews; with it, a walk of one week.
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_review_versions_created_at", "review_versions", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_review_versions_created_at", table_name="review_versions")
