"""Indexes for every filter at ten million reports, and a trigram index for `--text` on PostgreSQL.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

- reports (model_id, study_id) replaces reports (model_id): `--model` walks the model's reports in
  study order, the listing's order, with no sort before the first row;
- reports (created_at): `--since` / `--until` and `xrq status`'s last hour;
- job_studies (status, updated_at): the backlog's selection (pending, stuck, retryable) and
  `xrq status`'s failures, without reading every job's studies;
- job_studies (study_id, job_id) where status = 'failed' (a partial index, as small as the failures):
  `--status failed` in its listing's order;
- PostgreSQL: pg_trgm's GIN index on lower(reports.text), for `--text` (a substring, any case). The
  extension is created when the server has it and this user may (it is a trusted extension from
  PostgreSQL 13); otherwise the index is left out with a warning and `--text` reads the rows the
  other filters leave. SQLite has no such index: there `--text` reads them too (docs/operations.md
  gives the cost).

On a large database these take a while and block writes to the table while they build (minutes at
ten million reports): with XRQ_AUTO_MIGRATE=0, run `xrq db upgrade` when no job is running.
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    op.drop_index("ix_reports_model_id", table_name="reports")
    op.create_index("ix_reports_model_study", "reports", ["model_id", "study_id"])
    op.create_index("ix_reports_created_at", "reports", ["created_at"])
    op.create_index("ix_job_studies_status_updated", "job_studies", ["status", "updated_at"])
    failed = sa.text("status = 'failed'")
    op.create_index("ix_job_studies_failed", "job_studies", ["study_id", "job_id"], sqlite_where=failed,
                    postgresql_where=failed)
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    available = bind.exec_driver_sql("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'").scalar()
    if not available:
        log.warning("pg_trgm is not installed on this server: `xrq reports --text` will not have an index")
        return
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except Exception as exc:  # no right to create it: the index is an optimisation, not a requirement
        log.warning("cannot create the pg_trgm extension (%s): `xrq reports --text` will not have an index",
                    str(exc).splitlines()[0])
        return
    op.execute("CREATE INDEX ix_reports_text_trgm ON reports USING gin (lower(text) gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_reports_text_trgm")
    op.drop_index("ix_job_studies_failed", table_name="job_studies")
    op.drop_index("ix_job_studies_status_updated", table_name="job_studies")
    op.drop_index("ix_reports_created_at", table_name="reports")
    op.drop_index("ix_reports_model_study", table_name="reports")
    op.create_index("ix_reports_model_id", "reports", ["model_id"])
