"""A deployment id: a random id stored in the database when it is created, that every task message carries.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

Two deployments pointed at one broker (one Redis database) would otherwise take each other's messages.
A worker compares a message's deployment with its database's and leaves another's message for its owner
(worker/tasks.py). The id is made here, once: an upgraded database gets one too.
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    meta = op.create_table(
        "xrq_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.bulk_insert(meta, [{"key": "deployment_id", "value": uuid.uuid4().hex}])


def downgrade() -> None:
    op.drop_table("xrq_meta")
