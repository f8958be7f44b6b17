"""What the nightly backlog job looks for, and the lock that keeps two runs from overlapping."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from db.engine import Database, plan_lines
from db.schema import Evaluation, JobStudy, Lock, Report, Study, Truth, utcnow


@dataclass(frozen=True)
class Backlog:
    """Study ids to queue again, by job, and why."""

    pending: dict[int, list[int]]  # never queued (the broker was down, the submitter died)
    stuck: dict[int, list[int]]  # queued or running for longer than the timeout (a lost message or worker)
    retry: dict[int, list[int]]  # failed for a transient reason, attempts below the limit
    exhausted: int  # retryable failures that reached the attempt limit: left alone

    def by_job(self) -> dict[int, list[int]]:
        merged: dict[int, list[int]] = {}
        for part in (self.pending, self.stuck, self.retry):
            for job_id, ids in part.items():
                merged.setdefault(job_id, []).extend(ids)
        return {job_id: sorted(set(ids)) for job_id, ids in sorted(merged.items())}


@dataclass(frozen=True)
class BacklogCounts:
    """How many studies of each job a backlog run would queue again, and why (what a dry run says)."""

    pending: dict[int, int]
    stuck: dict[int, int]
    retry: dict[int, int]
    exhausted: int

    def by_job(self) -> dict[int, int]:
        merged: dict[int, int] = {}
        for part in (self.pending, self.stuck, self.retry):  # disjoint: each asks for another status
            for job_id, n in part.items():
                merged[job_id] = merged.get(job_id, 0) + n
        return dict(sorted(merged.items()))


def _conditions(stuck_after: timedelta, max_attempts: int, now: datetime | None) -> dict[str, ColumnElement[bool]]:
    """Each part of the backlog as a condition on job_studies, read from ix_job_studies_backlog alone.

    Each repeats the index's own condition (status <> 'done'): PostgreSQL would infer it, SQLite uses a
    partial index only for a query that states its condition term for term.
    """
    cutoff = (now or utcnow()) - stuck_after
    not_done = JobStudy.status != "done"
    failed_retryable = and_(not_done, JobStudy.status == "failed", JobStudy.retryable.is_(True))
    return {"pending": and_(not_done, JobStudy.status == "pending"),
            "stuck": and_(not_done, JobStudy.status.in_(("queued", "running")), JobStudy.updated_at < cutoff),
            "retry": and_(failed_retryable, JobStudy.attempts < max_attempts),
            "exhausted": and_(failed_retryable, JobStudy.attempts >= max_attempts)}


PARTS = ("pending", "stuck", "retry")


def backlog_queries(*, stuck_after: timedelta, max_attempts: int,
                    now: datetime | None = None) -> dict[str, Select[*tuple[Any, ...]]]:
    """The statements of the backlog: each part's (job, study) ids ('pending', 'stuck', 'retry'), its
    count by job ('pending counts' ...: the dry run), and 'exhausted'. Named for their plans
    (tests/cli/test_scale.py, bench/scale.py): each reads ix_job_studies_backlog only."""
    parts = _conditions(stuck_after, max_attempts, now)
    queries: dict[str, Select[*tuple[Any, ...]]] = {}
    for part in PARTS:
        # Not sorted by the database: an ORDER BY (job, study) would sort what the index gives in
        # (status, job) order; find_backlog sorts each job's few ids itself.
        queries[part] = select(JobStudy.job_id, JobStudy.study_id).where(parts[part])
        queries[f"{part} counts"] = (select(JobStudy.job_id, func.count()).where(parts[part])
                                     .group_by(JobStudy.job_id))
    queries["exhausted"] = select(func.count()).select_from(JobStudy).where(parts["exhausted"])
    return queries


def backlog_plans(db: Database, *, stuck_after: timedelta, max_attempts: int) -> dict[str, list[str]]:
    """Each backlog statement's plan (PostgreSQL's EXPLAIN, SQLite's EXPLAIN QUERY PLAN), a line a step."""
    with db.engine.connect() as conn:
        return {name: plan_lines(conn, query)
                for name, query in backlog_queries(stuck_after=stuck_after, max_attempts=max_attempts).items()}


def find_backlog(db: Database, *, stuck_after: timedelta, max_attempts: int,
                 now: datetime | None = None) -> Backlog:
    """The study ids a backlog run queues again (its work: as many rows as the backlog has)."""
    queries = backlog_queries(stuck_after=stuck_after, max_attempts=max_attempts, now=now)
    with db.session() as s:
        def grouped(part: str) -> dict[int, list[int]]:
            out: dict[int, list[int]] = {}
            for job_id, study_id in s.execute(queries[part]):
                out.setdefault(job_id, []).append(study_id)
            return {job_id: sorted(ids) for job_id, ids in sorted(out.items())}

        return Backlog(pending=grouped("pending"), stuck=grouped("stuck"), retry=grouped("retry"),
                       exhausted=s.scalar(queries["exhausted"]) or 0)


def count_backlog(db: Database, *, stuck_after: timedelta, max_attempts: int,
                  now: datetime | None = None) -> BacklogCounts:
    """What `find_backlog` would find, counted by job in the database: a dry run reads no study ids (a
    backlog left to grow for a year can hold hundreds of thousands)."""
    queries = backlog_queries(stuck_after=stuck_after, max_attempts=max_attempts, now=now)
    with db.session() as s:
        def counted(part: str) -> dict[int, int]:
            return {job_id: n for job_id, n in s.execute(queries[f"{part} counts"])}

        return BacklogCounts(pending=counted("pending"), stuck=counted("stuck"), retry=counted("retry"),
                             exhausted=s.scalar(queries["exhausted"]) or 0)


def reopen(db: Database, job_id: int, study_ids: list[int]) -> None:
    """Put studies back to pending so that they can be queued (or run) again; done ones are left alone."""
    with db.session() as s:
        s.execute(update(JobStudy).where(
            JobStudy.job_id == job_id, JobStudy.study_id.in_(study_ids),
            JobStudy.status.in_(("queued", "running", "failed", "pending")),
        ).values(status="pending", error=None, retryable=False, updated_at=utcnow()))


def jobs_to_score(db: Database) -> list[int]:
    """Jobs with reports of studies that have ground truth, and no evaluation since their newest such report."""
    with db.session() as s:
        reported = dict(s.execute(
            select(Report.job_id, func.max(Report.created_at)).join(Study, Study.id == Report.study_id)
            .where(Study.uid.in_(select(Truth.uid))).group_by(Report.job_id)).all())
        scored = dict(s.execute(select(Evaluation.job_id, func.max(Evaluation.created_at))
                                .where(Evaluation.job_id.is_not(None)).group_by(Evaluation.job_id)).all())
    return sorted(job for job, last in reported.items()
                  if job not in scored or _aware(scored[job]) < _aware(last))


def _aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; everything xrq writes is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire(db: Database, name: str, *, ttl: timedelta, holder: str | None = None) -> bool:
    """Take the lock unless someone holds it and it has not expired. Atomic on SQLite and PostgreSQL."""
    holder = holder or holder_name()
    now = utcnow()
    with db.session() as s:
        s.execute(delete(Lock).where(Lock.name == name, Lock.expires_at < now))
    try:
        with db.session() as s:
            s.add(Lock(name=name, holder=holder, acquired_at=now, expires_at=now + ttl))
        return True
    except IntegrityError:
        return False


def release(db: Database, name: str, *, holder: str | None = None) -> None:
    with db.session() as s:
        s.execute(delete(Lock).where(Lock.name == name, Lock.holder == (holder or holder_name())))


def extend(db: Database, name: str, *, ttl: timedelta, holder: str | None = None) -> None:
    """Push the lock's expiry on while its holder is still working (a long run must not lose it)."""
    with db.session() as s:
        s.execute(update(Lock).where(Lock.name == name, Lock.holder == (holder or holder_name()))
                  .values(expires_at=utcnow() + ttl))
