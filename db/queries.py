"""Read-only questions people ask: how is a job doing, what failed and why, what are the reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from db.engine import Database
from db.errors import NotFoundError
from db.schema import STATUSES, Image, Job, JobStudy, Model, Report, Study


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
    def finished(self) -> bool:
        return not any(self.counts.get(s, 0) for s in ("pending", "queued", "running"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "source": self.source, "model": self.model,
            "created_at": self.created_at.isoformat(), "finished": self.finished, "studies": self.total,
            "counts": {s: self.counts.get(s, 0) for s in STATUSES},
            "failures": [{"study_id": f.study_id, "uid": f.uid, "reason": f.reason} for f in self.failures],
        }


@dataclass(frozen=True)
class ReportRow:
    study_id: int
    uid: str
    job_id: int
    model: str
    text: str
    created_at: datetime
    images: list[str]
    settings: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"study_id": self.study_id, "uid": self.uid, "job_id": self.job_id, "model": self.model,
                "report": self.text, "created_at": self.created_at.isoformat(), "images": self.images,
                "settings": self.settings}


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
        return JobSummary(job.id, job.source, model_name, job.created_at, counts, failures)


def list_jobs(db: Database, *, limit: int = 20) -> list[JobSummary]:
    with db.session() as s:
        ids = list(s.scalars(select(Job.id).order_by(Job.id.desc()).limit(limit)))
    return [job_summary(db, i, with_failures=False) for i in ids]


def reports(db: Database, *, job_id: int | None = None, limit: int | None = None) -> list[ReportRow]:
    """Reports, newest job first. With a job: every study of it that has a report by its model,
    including studies skipped because an earlier job had already reported them."""
    with db.session() as s:
        stmt = (select(Report, Study.uid, Model.name).join(Study, Study.id == Report.study_id)
                .join(Model, Model.id == Report.model_id))
        if job_id is not None:
            if s.get(Job, job_id) is None:
                raise NotFoundError(f"no job {job_id}; `xrq status` lists the jobs")
            stmt = stmt.join(JobStudy, JobStudy.study_id == Report.study_id).join(
                Job, (Job.id == JobStudy.job_id) & (Job.model_id == Report.model_id)
            ).where(JobStudy.job_id == job_id)
        stmt = stmt.order_by(Report.job_id.desc(), Study.uid, Report.id)
        if limit:
            stmt = stmt.limit(limit)
        rows = s.execute(stmt).all()
        study_ids = [row[0].study_id for row in rows]
        images: dict[int, list[str]] = {sid: [] for sid in study_ids}
        if study_ids:
            for sid, rel in s.execute(select(Image.study_id, Image.relpath)
                                      .where(Image.study_id.in_(study_ids)).order_by(Image.relpath)).all():
                images[sid].append(rel)
        return [ReportRow(r.study_id, uid, r.job_id, name, r.text, r.created_at, images[r.study_id], r.settings)
                for r, uid, name in rows]
