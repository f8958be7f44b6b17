"""Read-only questions people ask: how is a job doing, what failed and why, what are the reports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.engine import Database
from db.errors import NotFoundError
from db.listing import ReportFilter, ReportRow, as_utc, report_rows
from db.listing import export_batches as streamed
from db.schema import (
    OPEN,
    STATUSES,
    Evaluation,
    EvaluationScore,
    Image,
    Job,
    JobStudy,
    Model,
    Report,
    Study,
    Truth,
    utcnow,
)


@dataclass(frozen=True)
class Failure:
    study_id: int
    uid: str
    reason: str


@dataclass(frozen=True)
class JobSummary:
    job_id: int
    source: str
    model: str
    created_at: datetime
    counts: dict[str, int]
    failures: list[Failure] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def waiting(self) -> int:
        """Studies still to do: pending, queued or running."""
        return sum(self.counts.get(s, 0) for s in OPEN)

    @property
    def finished(self) -> bool:
        return self.waiting == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "source": self.source, "model": self.model,
            "created_at": self.created_at.isoformat(), "finished": self.finished, "studies": self.total,
            "counts": {s: self.counts.get(s, 0) for s in STATUSES},
            "failures": [{"study_id": f.study_id, "uid": f.uid, "reason": f.reason} for f in self.failures],
        }


def job_summary(db: Database, job_id: int, *, with_failures: bool = True) -> JobSummary:
    with db.session() as s:
        row = s.execute(select(Job, Model.name).join(Model, Job.model_id == Model.id)
                        .where(Job.id == job_id)).first()
        if row is None:
            raise NotFoundError(f"no job {job_id}; `xrq status` lists the jobs")
        job, model_name = row
        counts = dict(s.execute(select(JobStudy.status, func.count()).where(JobStudy.job_id == job_id)
                                .group_by(JobStudy.status)).all())
        failures = []
        if with_failures:
            failures = [Failure(sid, uid, err or "unknown") for sid, uid, err in s.execute(
                select(JobStudy.study_id, Study.uid, JobStudy.error).join(Study, Study.id == JobStudy.study_id)
                .where(JobStudy.job_id == job_id, JobStudy.status == "failed").order_by(Study.uid))]
        return JobSummary(job.id, job.source, model_name, as_utc(job.created_at), counts, failures)


def list_jobs(db: Database, *, limit: int = 20) -> list[JobSummary]:
    """The newest jobs with their studies counted by status: two queries, the counts from the
    (job_id, status) index alone."""
    with db.session() as s:
        rows = s.execute(select(Job, Model.name).join(Model, Job.model_id == Model.id)
                         .order_by(Job.id.desc()).limit(limit)).all()
        counts: dict[int, dict[str, int]] = {}
        for job_id, status, n in s.execute(
                select(JobStudy.job_id, JobStudy.status, func.count())
                .where(JobStudy.job_id.in_([job.id for job, _ in rows])).group_by(JobStudy.job_id, JobStudy.status)):
            counts.setdefault(job_id, {})[status] = n
    return [JobSummary(job.id, job.source, name, as_utc(job.created_at), counts.get(job.id, {})) for job, name in rows]


def reports(db: Database, *, job_id: int | None = None, limit: int | None = None,
            where: ReportFilter | None = None) -> list[ReportRow]:
    """Reports (or failed studies) as a list: `db.listing.report_rows` (which streams them) for few rows.

    With a job: every study of it that has a report by its model, including studies skipped because
    an earlier job had already reported them.
    """
    return list(report_rows(db, where or ReportFilter(job_id=job_id), limit=limit))


EXPORT_COLUMNS = ("job_id", "study_id", "uid", "status", "error", "attempts", "model", "report", "reported_at",
                  "reported_by_job", "images", "confidence", "token_logprobs")


def export_count(db: Database, job_ids: list[int]) -> int:
    """How many rows an export of the jobs has (one per study and job); every job must exist."""
    with db.session() as s:
        for job_id in job_ids:
            if s.get(Job, job_id) is None:
                raise NotFoundError(f"no job {job_id}; `xrq status` lists the jobs")
        return s.scalar(select(func.count()).select_from(JobStudy).where(JobStudy.job_id.in_(job_ids))) or 0


def export_batches(db: Database, job_ids: list[int], *, size: int = 2000) -> Iterator[list[dict[str, Any]]]:
    """Every study of the jobs in batches, streamed: see `db.listing.export_batches`."""
    return streamed(db, job_ids, size=size)


@dataclass(frozen=True)
class StudyDetail:
    """Everything a picture of a study shows: its images, its report, the ground truth, the scores."""

    study_id: int
    uid: str
    images: list[tuple[str, str, str | None]]  # (path, relpath, sha256) as the job found them
    root: str  # the folder that job was submitted from
    model: str | None
    report: str | None
    error: str | None  # why the study failed, when it did
    truth_findings: str | None
    truth_impression: str | None
    scores: dict[str, float | None] | None  # per-study scores from the newest evaluation of this report
    report_id: int | None = None  # the report shown (`db.evidence.report_evidence` has its tokens)
    report_job: int | None = None  # the job that wrote the report shown
    models: int = 0  # how many models have reported this study (more than 1: the newest report is shown)


def study_detail(db: Database, uid: str | None = None, *, study_id: int | None = None,
                 job_id: int | None = None) -> StudyDetail:
    """A study by its uid (what people type and `xrq reports` shows) or by its database id.

    With a job: the study must be one of the job's, and the report is the one by the job's model.
    A uid that names several studies (the same uid submitted with different images) is an error
    unless a job or the study id says which.
    """
    with db.session() as s:
        if job_id is not None and s.get(Job, job_id) is None:
            raise NotFoundError(f"no job {job_id}; `xrq status` lists the jobs")
        row = _find_study(s, uid, study_id, job_id)
        model_id = s.scalar(select(Job.model_id).where(Job.id == job_id)) if job_id is not None else None
        reports = select(Report, Model.name).join(Model, Model.id == Report.model_id).where(Report.study_id == row.id)
        if model_id is not None:
            reports = reports.where(Report.model_id == model_id)
        found = s.execute(reports.order_by(Report.created_at.desc(), Report.id.desc())).first()
        models = s.scalar(select(func.count(func.distinct(Report.model_id))).where(Report.study_id == row.id)) or 0
        report, model = (found[0], found[1]) if found else (None, None)
        failed = select(JobStudy.error).where(JobStudy.study_id == row.id, JobStudy.status == "failed")
        if job_id is not None:
            failed = failed.where(JobStudy.job_id == job_id)
        error = s.scalar(failed.order_by(JobStudy.updated_at.desc()))
        truth = s.scalars(select(Truth).where(Truth.uid == row.uid).order_by(Truth.id)).first()
        scores = None
        if report is not None:
            scored = s.scalars(select(EvaluationScore).join(Evaluation, Evaluation.id == EvaluationScore.evaluation_id)
                               .where(EvaluationScore.study_id == row.id, Evaluation.model_id == report.model_id)
                               .order_by(EvaluationScore.evaluation_id.desc())).first()
            if scored is not None:
                scores = {k: getattr(scored, k) for k in ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider")}
        # The files of the job asked for, else of the job that wrote the report, else of the newest job.
        source_job = job_id or (report.job_id if report is not None else None) or s.scalar(
            select(func.max(Image.job_id)).where(Image.study_id == row.id))
        images = [(i.path, i.relpath, i.sha256) for i in s.scalars(
            select(Image).where(Image.study_id == row.id, Image.job_id == source_job).order_by(Image.relpath))]
        root = s.scalar(select(Job.source).where(Job.id == source_job)) or ""
        return StudyDetail(row.id, row.uid, images, root, model, report.text if report else None, error,
                           truth.findings if truth else None, truth.impression if truth else None, scores,
                           report.id if report else None,
                           report.job_id if report is not None else None, models)


def _find_study(s: Session, uid: str | None, study_id: int | None, job_id: int | None) -> Study:
    """The one study named by id or uid (within the job, when one is given)."""
    in_job = f" in job {job_id}" if job_id is not None else ""
    if study_id is not None:
        row = s.get(Study, study_id)
        if row is None:
            raise NotFoundError(f"no study with id {study_id}: `xrq reports` lists study ids and uids")
        if job_id is not None and s.get(JobStudy, (job_id, study_id)) is None:
            raise NotFoundError(f"study id {study_id} (uid {row.uid!r}) is not part of job {job_id}; "
                                f"`xrq reports --job {job_id}` lists its studies")
        return row
    if uid is None:
        raise NotFoundError("no study named: give a study uid or id")
    stmt = select(Study).where(Study.uid == uid)
    if job_id is not None:
        stmt = stmt.join(JobStudy, JobStudy.study_id == Study.id).where(JobStudy.job_id == job_id)
    found = list(s.scalars(stmt.order_by(Study.id)))
    if not found:
        raise NotFoundError(f"no study with uid {uid!r}{in_job}: give a uid from `xrq reports`")
    if len(found) > 1:
        ids = ", ".join(str(row.id) for row in found)
        raise NotFoundError(f"uid {uid!r} names {len(found)} studies{in_job} (ids {ids}: the same uid with "
                            "different images); say which by its job or its study id")
    return found[0]


def job_study_ids(db: Database, job_id: int) -> list[int]:
    with db.session() as s:
        if s.get(Job, job_id) is None:
            raise NotFoundError(f"no job {job_id}; `xrq status` lists the jobs")
        return list(s.scalars(select(JobStudy.study_id).join(Study, Study.id == JobStudy.study_id)
                              .where(JobStudy.job_id == job_id).order_by(Study.uid)))


@dataclass(frozen=True)
class Activity:
    """What the system has been doing: throughput over a window and failures by reason."""

    since: datetime
    reports: int  # reports written since `since`
    failures: int  # studies failed since `since`
    by_reason: list[tuple[str, int]]  # studies failed since `reasons_since`, by the reason their first bad image gave
    reasons_since: datetime | None = None


REASONS_WINDOW = timedelta(days=1)  # how far back `xrq status` groups failures by reason


def activity(db: Database, since: datetime, *, top: int = 5, reasons_window: timedelta = REASONS_WINDOW) -> Activity:
    """Reports and failures since `since`, and the failures of the last `reasons_window` by reason: every
    count a walk of a time index over the window, so its cost follows the window's work, not the history's."""
    reasons_since = min(since, utcnow() - reasons_window)
    with db.session() as s:
        reports = s.scalar(select(func.count()).select_from(Report).where(Report.created_at >= since)) or 0
        failures = s.scalar(select(func.count()).select_from(JobStudy).where(
            JobStudy.status == "failed", JobStudy.updated_at >= since)) or 0
        rows = s.execute(select(JobStudy.error, func.count()).where(
            JobStudy.status == "failed", JobStudy.updated_at >= reasons_since).group_by(JobStudy.error)).all()
    counts: dict[str, int] = {}
    for error, n in rows:
        reason = _bare_reason(error or "unknown")
        counts[reason] = counts.get(reason, 0) + n
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return Activity(since, reports, failures, ranked[:top], reasons_since)


def _bare_reason(error: str) -> str:
    """'scans/a.png: empty file (0 bytes)' -> 'empty file (0 bytes)'; details in parentheses dropped."""
    reason = error.split(": ", 1)[1] if ": " in error else error
    return reason.split(" (", 1)[0]
