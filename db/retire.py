"""Retiring old jobs: `xrq jobs delete`, in short transactions that workers can run beside.

A job is deleted a chunk of its studies at a time (each chunk one short transaction, so that workers
writing other jobs' reports never wait long on it), in study order:

- its images' rows and its studies' statuses (job_studies) go;
- its reports go too, unless asked to keep them. A report that another job of the same model also
  counts (that job skipped the study because this one had reported it) is never deleted: it moves to
  that job. Kept reports keep their job row as their provenance;
- studies left with no job, report, image or score go;
- its evaluations stay (their scores are history) without their job.

A study queued or running in the job may be in a worker's hands: such a job is refused, whole, before
anything is deleted (and a study queued while the deletion runs is left with its job). Pending studies
(never sent) go with the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.orm import Session, aliased

from db.engine import Database
from db.errors import JobBusyError, NotFoundError
from db.schema import Evaluation, EvaluationScore, Image, Job, JobStudy, Report, Study

CHUNK = 2000
BUSY = ("queued", "running")


@dataclass
class Retired:
    job_id: int
    studies: int = 0  # the job's study rows deleted
    images: int = 0
    reports_deleted: int = 0
    reports_moved: int = 0  # to another job of the same model that counts the study
    reports_kept: int = 0  # asked to keep them: they stay, with the job row
    orphans_deleted: int = 0  # studies nothing refers to any more
    job_deleted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def retire_job(db: Database, job_id: int, *, keep_reports: bool = False, chunk: int = CHUNK) -> Retired:
    """Delete job `job_id` (see the module's docstring). Raises NotFoundError, or JobBusyError when some of
    its studies are queued or running."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}; `xrq status` lists the jobs")
        model_id = job.model_id
        busy = s.scalar(select(func.count()).select_from(JobStudy)
                        .where(JobStudy.job_id == job_id, JobStudy.status.in_(BUSY))) or 0
    if busy:
        raise JobBusyError(f"job {job_id} has {busy} studies queued or running (a worker may hold them): wait until "
                           f"none is waiting, then delete it")
    done = Retired(job_id)
    after = 0
    while True:
        with db.session() as s:
            ids = list(s.scalars(select(JobStudy.study_id).where(JobStudy.job_id == job_id, JobStudy.study_id > after)
                                 .order_by(JobStudy.study_id).limit(chunk)))
            if not ids:
                break
            after = ids[-1]
            _retire_chunk(s, job_id, model_id, ids, keep_reports, done)
    with db.session() as s:
        s.execute(update(Evaluation).where(Evaluation.job_id == job_id).values(job_id=None))
        still = s.scalar(select(func.count()).select_from(JobStudy).where(JobStudy.job_id == job_id)) or 0
        reports = s.scalar(select(func.count()).select_from(Report).where(Report.job_id == job_id)) or 0
        done.reports_kept = reports
        if not still and not reports:
            s.execute(delete(Image).where(Image.job_id == job_id))
            s.execute(delete(Job).where(Job.id == job_id))
            done.job_deleted = True
    return done


def _retire_chunk(s: Session, job_id: int, model_id: int, ids: list[int], keep_reports: bool, done: Retired) -> None:
    if not keep_reports:
        other = aliased(JobStudy)
        counted_elsewhere = exists().where(other.study_id == Report.study_id, other.job_id != job_id,
                                           other.job_id == Job.id, Job.model_id == model_id)
        ours = and_(Report.job_id == job_id, Report.study_id.in_(ids))
        for study_id, new_job in s.execute(
                select(Report.study_id, func.min(other.job_id)).join(other, other.study_id == Report.study_id)
                .join(Job, Job.id == other.job_id)
                .where(ours, other.job_id != job_id, Job.model_id == model_id).group_by(Report.study_id)).all():
            s.execute(update(Report).where(Report.job_id == job_id, Report.study_id == study_id).values(job_id=new_job))
            done.reports_moved += 1
        done.reports_deleted += _rows(s, delete(Report).where(ours, ~counted_elsewhere))
    done.images += _rows(s, delete(Image).where(Image.job_id == job_id, Image.study_id.in_(ids)))
    done.studies += _rows(s, delete(JobStudy).where(JobStudy.job_id == job_id, JobStudy.study_id.in_(ids),
                                                    JobStudy.status.not_in(BUSY)))
    orphan = and_(Study.id.in_(ids), ~exists().where(JobStudy.study_id == Study.id),
                  ~exists().where(Report.study_id == Study.id), ~exists().where(Image.study_id == Study.id),
                  ~exists().where(EvaluationScore.study_id == Study.id))
    done.orphans_deleted += _rows(s, delete(Study).where(orphan))


def _rows(s: Session, stmt: Any) -> int:
    """Run a DELETE; the number of rows it deleted."""
    result: Any = s.execute(stmt)
    return int(result.rowcount or 0)
