"""Reports carry how sure the model was and their sections: confidence, token log-probabilities, token
ids, findings and impression; the report views show the confidence.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

`confidence` is exp(mean token log-probability), indexed with the listing's order for triage
(`ORDER BY confidence, study_id, model_id`: `xrq reports --order-by confidence` needs no sort); the
per-token log-probabilities and ids are JSON lists (the ids let `xrq show --attention` replay the
report through the model). `findings` and `impression` are the report's sections when the model
writes section markers (`xrq train --text both`); `text` stays the whole report. Reports written
before this migration have NULLs. The views are dropped and created again with `confidence` added
(SQLite cannot alter a view).
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

LATEST_REPORTS = """
CREATE VIEW latest_reports AS
SELECT report_id, study_id, uid, model_id, model, job_id, text, confidence, findings, impression, created_at
FROM (
    SELECT r.id AS report_id, r.study_id, s.uid, r.model_id, m.name AS model, r.job_id, r.text, r.confidence,
           r.findings, r.impression, r.created_at,
           ROW_NUMBER() OVER (PARTITION BY s.uid, r.model_id ORDER BY r.created_at DESC, r.id DESC) AS rank
    FROM reports r
    JOIN studies s ON s.id = r.study_id
    JOIN models m ON m.id = r.model_id
) ranked
WHERE rank = 1
"""

REPORT_SCORES = """
CREATE VIEW report_scores AS
SELECT r.id AS report_id, r.study_id, s.uid, m.name AS model, r.job_id, r.text AS report, r.confidence,
       t.collection, t.split, t.findings AS truth_findings, t.impression AS truth_impression, t.mesh,
       es.evaluation_id, es.bleu_1, es.bleu_4, es.meteor, es.rouge_l, es.cider
FROM reports r
JOIN studies s ON s.id = r.study_id
JOIN models m ON m.id = r.model_id
LEFT JOIN truth t ON t.uid = s.uid
LEFT JOIN (
    SELECT e2.*, ROW_NUMBER() OVER (PARTITION BY e2.study_id, ev.model_id ORDER BY e2.evaluation_id DESC) AS rank,
           ev.model_id AS scored_model_id, ev.collection AS scored_collection
    FROM evaluation_scores e2
    JOIN evaluations ev ON ev.id = e2.evaluation_id
    WHERE e2.study_id IS NOT NULL
) es ON es.study_id = r.study_id AND es.scored_model_id = r.model_id AND es.rank = 1
     AND es.scored_collection = t.collection
"""

OLD_VIEWS = ("latest_reports", "report_scores")


def upgrade() -> None:
    for name in OLD_VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.add_column("reports", sa.Column("confidence", sa.Float(), nullable=True))
    op.add_column("reports", sa.Column("token_logprobs", sa.JSON(), nullable=True))
    op.add_column("reports", sa.Column("token_ids", sa.JSON(), nullable=True))
    op.add_column("reports", sa.Column("findings", sa.Text(), nullable=True))
    op.add_column("reports", sa.Column("impression", sa.Text(), nullable=True))
    op.create_index("ix_reports_confidence", "reports", ["confidence", "study_id", "model_id"])
    op.execute(LATEST_REPORTS)
    op.execute(REPORT_SCORES)


def downgrade() -> None:
    from importlib import import_module

    previous = import_module("db.migrations.versions.0003_report_views").VIEWS
    reviewed = import_module("db.migrations.versions.0007_review").REVIEWED_REPORTS
    # Every view on reports goes while SQLite's batch mode copies the table (a view naming it would break
    # the copy's rename), and comes back after: 0003's two as they were, 0007's unchanged.
    for name in (*OLD_VIEWS, "reviewed_reports"):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("ix_reports_confidence", table_name="reports")
    with op.batch_alter_table("reports") as batch:
        for column in ("impression", "findings", "token_ids", "token_logprobs", "confidence"):
            batch.drop_column(column)
    for name in OLD_VIEWS:
        op.execute(previous[name])
    op.execute(reviewed)
