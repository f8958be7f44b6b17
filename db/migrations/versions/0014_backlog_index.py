"""A partial index of the studies not done, holding all the backlog reads: the nightly selection and the dry run.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04

At ten million studies with a backlog of 250,000 (bench/scale.py: 1% pending, 1% stuck, 0.5% failed
for a transient reason), `xrq backlog --dry-run` took 5.7 s on PostgreSQL: (status, updated_at) finds
the rows of a status but not their job, retry flag or attempts, so every one of them is fetched from
the table (hundreds of thousands of reads from 1.5 GB). job_studies (status, job_id, retryable, attempts, updated_at,
study_id) where status <> 'done' holds exactly the rows a backlog can want, with every column it
reads: the counts and the selection are index-only scans of a few percent of the table, on both
engines (db/backlog.py repeats the index's condition in each query, which SQLite needs to use it).

It is built on the running table (minutes at ten million studies, writes to job_studies wait): with
XRQ_AUTO_MIGRATE=0, run `xrq db upgrade` when no job is running.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

NOT_DONE = sa.text("status <> 'done'")


def upgrade() -> None:
    op.create_index("ix_job_studies_backlog", "job_studies",
                    ["status", "job_id", "retryable", "attempts", "updated_at", "study_id"],
                    sqlite_where=NOT_DONE, postgresql_where=NOT_DONE)


def downgrade() -> None:
    op.drop_index("ix_job_studies_backlog", table_name="job_studies")
