"""Deliveries: each document (SR, FHIR) of a report sent to a destination, with its state and attempts.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-03

One row per (report, destination, document UID): a second push sends only what is not delivered,
and the backlog retries what failed. No patient data: the documents are rebuilt from the source
files when sent.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["report_id"], ["reports.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("report_id", "destination", "sop_instance_uid", name="uq_deliveries_report_dest_uid"),
    )
    op.create_index("ix_deliveries_state", "deliveries", ["state"])
    op.create_index("ix_deliveries_report_id", "deliveries", ["report_id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_report_id", table_name="deliveries")
    op.drop_index("ix_deliveries_state", table_name="deliveries")
    op.drop_table("deliveries")
