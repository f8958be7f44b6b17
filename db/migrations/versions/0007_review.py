"""The review application: accounts, review versions, reader studies, and the `reviewed_reports` view.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Reports themselves are not changed: a review is rows beside them (db/review_schema.py says why).
The worklist lists reports newest first, by job, model, state and text: indexes on (created_at, id)
with and without a job or model first serve its keyset pages; its "contains" filter uses 0006's
trigram index on PostgreSQL.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

REVIEWED_REPORTS = """
CREATE VIEW reviewed_reports AS
SELECT r.id AS report_id, r.study_id, s.uid, m.name AS model, r.job_id, r.text AS draft_text,
       r.created_at, COALESCE(v.state, 'draft') AS review_state, v.version AS review_version,
       v.final_text, u.name AS signed_by, v.signed_at, v.reject_reason, v.updated_at AS reviewed_at
FROM reports r
JOIN studies s ON s.id = r.study_id
JOIN models m ON m.id = r.model_id
LEFT JOIN reviews v ON v.report_id = r.id
LEFT JOIN users u ON u.id = v.signed_by
"""


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "reviews",
        sa.Column("report_id", sa.Integer(), sa.ForeignKey("reports.id"), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("final_text", sa.Text()),
        sa.Column("signed_by", sa.Integer(), sa.ForeignKey("users.id")),
        sa.Column("signed_at", sa.DateTime(timezone=True)),
        sa.Column("reject_reason", sa.Text()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_reviews_state", "reviews", ["state"])
    op.create_table(
        "review_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("report_id", sa.Integer(), sa.ForeignKey("reports.id"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("author_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("report_id", "version", name="uq_review_versions_report_version"),
    )
    op.create_table(
        "reader_studies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "reader_study_readers",
        sa.Column("reader_study_id", sa.Integer(), sa.ForeignKey("reader_studies.id"), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), primary_key=True),
    )
    op.create_table(
        "reader_cases",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("reader_study_id", sa.Integer(), sa.ForeignKey("reader_studies.id"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("image_job_id", sa.Integer(), sa.ForeignKey("jobs.id")),
        sa.Column("left_source", sa.String(64), nullable=False),
        sa.Column("left_text", sa.Text(), nullable=False),
        sa.Column("right_source", sa.String(64), nullable=False),
        sa.Column("right_text", sa.Text(), nullable=False),
        sa.UniqueConstraint("reader_study_id", "position", name="uq_reader_cases_position"),
    )
    op.create_index("ix_reader_cases_reader_study_id", "reader_cases", ["reader_study_id"])
    op.create_table(
        "reader_answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("reader_cases.id"), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("preferred", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("case_id", "user_id", name="uq_reader_answers_case_user"),
    )
    op.create_table(
        "reader_errors",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("answer_id", sa.Integer(), sa.ForeignKey("reader_answers.id"), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("significant", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_reader_errors_answer_id", "reader_errors", ["answer_id"])
    # The worklist's keyset pages: newest first, overall, within a job, within a model.
    op.create_index("ix_reports_worklist", "reports", ["created_at", "id"])
    op.create_index("ix_reports_worklist_job", "reports", ["job_id", "created_at", "id"])
    op.create_index("ix_reports_worklist_model", "reports", ["model_id", "created_at", "id"])
    # The text filter's trigram index is 0006's (ix_reports_text_trgm).
    op.execute(REVIEWED_REPORTS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS reviewed_reports")
    for name in ("ix_reports_worklist_model", "ix_reports_worklist_job", "ix_reports_worklist"):
        op.drop_index(name, table_name="reports")
    for table in ("reader_errors", "reader_answers", "reader_cases", "reader_study_readers", "reader_studies",
                  "review_versions", "reviews", "users"):
        op.drop_table(table)
