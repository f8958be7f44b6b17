"""Views for the questions people ask in SQL: latest reports, reports with truth and scores, job summaries.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

The SQL is plain enough for SQLite (3.25+, window functions) and PostgreSQL alike; docs/queries.md
documents each view, and tests run every example query there on both databases.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LATEST_REPORTS = """
CREATE VIEW latest_reports AS
SELECT report_id, study_id, uid, model_id, model, job_id, text, created_at
FROM (
    SELECT r.id AS report_id, r.study_id, s.uid, r.model_id, m.name AS model, r.job_id, r.text, r.created_at,
           ROW_NUMBER() OVER (PARTITION BY s.uid, r.model_id ORDER BY r.created_at DESC, r.id DESC) AS rank
    FROM reports r
    JOIN studies s ON s.id = r.study_id
    JOIN models m ON m.id = r.model_id
) ranked
WHERE rank = 1
"""

REPORT_SCORES = """
CREATE VIEW report_scores AS
SELECT r.id AS report_id, r.study_id, s.uid, m.name AS model, r.job_id, r.text AS report,
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

JOB_SUMMARY = """
CREATE VIEW job_summary AS
SELECT j.id AS job_id, j.source, m.name AS model, j.created_at,
       COUNT(js.study_id) AS studies,
       SUM(CASE WHEN js.status = 'done' THEN 1 ELSE 0 END) AS done,
       SUM(CASE WHEN js.status = 'failed' THEN 1 ELSE 0 END) AS failed,
       SUM(CASE WHEN js.status = 'skipped' THEN 1 ELSE 0 END) AS skipped,
       SUM(CASE WHEN js.status IN ('pending', 'queued', 'running') THEN 1 ELSE 0 END) AS waiting,
       MAX(js.updated_at) AS last_update
FROM jobs j
JOIN models m ON m.id = j.model_id
LEFT JOIN job_studies js ON js.job_id = j.id
GROUP BY j.id, j.source, m.name, j.created_at
"""

VIEWS = {"latest_reports": LATEST_REPORTS, "report_scores": REPORT_SCORES, "job_summary": JOB_SUMMARY}


def upgrade() -> None:
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
