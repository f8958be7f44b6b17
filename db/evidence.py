"""What a report was written with: its tokens, their log-probabilities, and the model that wrote them.

`xrq show --attention` (and the review application) replay a report's tokens through its model; this
is the one read that gives them what that takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from db.engine import Database
from db.errors import NotFoundError
from db.schema import Model, Report


@dataclass(frozen=True)
class ReportEvidence:
    report_id: int
    text: str
    confidence: float | None
    token_ids: list[int] | None  # None for reports stored before xrq recorded them
    token_logprobs: list[float] | None
    findings: str | None
    impression: str | None
    model: Model  # detached: name, fingerprint, path


def report_evidence(db: Database, report_id: int) -> ReportEvidence:
    with db.session() as s:
        found = s.execute(select(Report, Model).join(Model, Model.id == Report.model_id)
                          .where(Report.id == report_id)).first()
        if found is None:
            raise NotFoundError(f"no report with id {report_id}")
        report, model = found
        s.expunge(model)
        return ReportEvidence(report.id, report.text, report.confidence, report.token_ids, report.token_logprobs,
                              report.findings, report.impression, model)


def report_place(db: Database, report_id: int) -> tuple[int, int]:
    """(study id, job id) of a report: where its views are (the files as that job found them)."""
    with db.session() as s:
        found = s.execute(select(Report.study_id, Report.job_id).where(Report.id == report_id)).first()
    if found is None:
        raise NotFoundError(f"no report with id {report_id}")
    return int(found[0]), int(found[1])
