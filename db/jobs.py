"""Recording jobs and moving their studies through pending -> queued -> running -> done | failed.

Every write here is idempotent: recording the same job twice, claiming a finished study, or storing
a report that already exists changes nothing. That is what lets a broker deliver a message twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.bulk import chunks, insert_ignore
from db.engine import Database
from db.errors import NotFoundError
from db.schema import OPEN, Image, Job, JobStudy, Model, Report, Study, utcnow


@dataclass(frozen=True)
class ImageIn:
    path: str
    relpath: str
    sha256: str | None
    size_bytes: int | None
    error: str | None = None


@dataclass(frozen=True)
class StudyIn:
    fingerprint: str
    uid: str
    grouping: str
    images: Sequence[ImageIn]
    error: str | None = None  # known at scan time: the study fails without being decoded


@dataclass(frozen=True)
class JobRecord:
    job_id: int
    created: bool  # False: the same studies with the same model were submitted before
    to_run: list[int]  # study ids not finished yet, in a stable order
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # setting -> (before, now), on a resubmit
    retried: int = 0  # studies that had failed for a transient reason, opened again by this submission


@dataclass(frozen=True)
class ImageRef:
    id: int
    path: str
    relpath: str
    sha256: str | None = None  # what the file held when submitted; a worker checks it still does


@dataclass(frozen=True)
class WorkItem:
    study_id: int
    uid: str
    images: list[ImageRef]
    root: str = ""  # the folder the job was submitted from: nothing outside it is read


@dataclass
class BatchOutcome:
    """What a worker learned about a batch; stored in one transaction by record_results."""

    reports: dict[int, str] = field(default_factory=dict)  # study id -> text
    details: dict[int, dict[str, Any]] = field(default_factory=dict)  # study id -> more report columns
    failures: dict[int, str] = field(default_factory=dict)  # study id -> reason
    retryable: set[int] = field(default_factory=set)  # failed study ids worth another try later
    image_errors: dict[int, str] = field(default_factory=dict)  # image id -> reason
    image_sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # image id -> (width, height)


def upsert_model(db: Database, *, name: str, fingerprint: str, path: str | None, meta: dict[str, Any]) -> int:
    """The id of the model with these weights, recording it the first time it is seen."""
    with db.session() as s:
        insert_ignore(
            s, Model, [{"name": name, "fingerprint": fingerprint, "path": path, "meta": meta,
                        "created_at": utcnow()}], ["fingerprint"],
        )
        return s.scalars(select(Model.id).where(Model.fingerprint == fingerprint)).one()


def job_fingerprint(model_id: int, studies: Sequence[StudyIn]) -> str:
    digest = hashlib.sha256(f"model:{model_id}\n".encode())
    for fp in sorted(s.fingerprint for s in studies):
        digest.update(f"{fp}\n".encode())
    return digest.hexdigest()


def record_job(
    db: Database, *, source: str, model_id: int, group_by: str, batch_size: int,
    settings: dict[str, Any], studies: Sequence[StudyIn],
) -> JobRecord:
    """Record a job, its studies and images, in one transaction; or find the identical earlier job.

    Studies the model has already reported are marked skipped; studies with a scan-time error are
    failed at once. Submitting the same content again returns the earlier job and adds no rows, but
    what is still to do is done the way this submission says: its settings replace the job's (the
    change is returned), and studies that failed for a transient reason are opened again.
    """
    fingerprint = job_fingerprint(model_id, studies)
    try:
        return _record_job(db, fingerprint, source, model_id, group_by, batch_size, settings, studies)
    except IntegrityError:
        # The same submission, recorded at the same moment by another process: theirs stands.
        with db.session() as s:
            existing = s.scalars(select(Job.id).where(Job.fingerprint == fingerprint)).first()
            if existing is None:
                raise  # another constraint: not a race, a real error
            return _resubmitted(s, existing, batch_size, settings)


def _record_job(db: Database, fingerprint: str, source: str, model_id: int, group_by: str, batch_size: int,
                settings: dict[str, Any], studies: Sequence[StudyIn]) -> JobRecord:
    with db.session() as s:
        existing = s.scalars(select(Job.id).where(Job.fingerprint == fingerprint)).first()
        if existing is not None:
            return _resubmitted(s, existing, batch_size, settings)
        study_ids = _store_studies(s, studies)
        job = Job(fingerprint=fingerprint, source=source, model_id=model_id, group_by=group_by,
                  batch_size=batch_size, settings=settings)
        s.add(job)
        s.flush()
        _store_images(s, job.id, study_ids, studies)
        reported = set(s.scalars(select(Report.study_id).where(
            Report.model_id == model_id, Report.study_id.in_(study_ids.values()))))
        rows = []
        for study in studies:
            sid = study_ids[study.fingerprint]
            status, error = ("skipped", None) if sid in reported else (
                ("failed", study.error) if study.error else ("pending", None))
            rows.append({"job_id": job.id, "study_id": sid, "status": status, "error": error,
                         "attempts": 0, "updated_at": utcnow()})
        insert_ignore(s, JobStudy, rows, ["job_id", "study_id"])
        return JobRecord(job.id, True, _unfinished(s, job.id))


def _resubmitted(s: Session, job_id: int, batch_size: int, settings: dict[str, Any]) -> JobRecord:
    """The same job submitted again: its settings become these, its transient failures are retried."""
    job = s.get(Job, job_id)
    assert job is not None
    before, now = {**job.settings, "batch_size": job.batch_size}, {**settings, "batch_size": batch_size}
    changed = {k: (before.get(k), now.get(k)) for k in sorted(before.keys() | now.keys())
               if before.get(k) != now.get(k)}
    if changed:
        job.settings, job.batch_size = settings, batch_size
    retried = list(s.scalars(update(JobStudy).where(
        JobStudy.job_id == job_id, JobStudy.status == "failed", JobStudy.retryable.is_(True),
    ).values(status="pending", error=None, retryable=False, attempts=0, updated_at=utcnow())
        .returning(JobStudy.study_id)))
    return JobRecord(job_id, False, _unfinished(s, job_id), changed, len(retried))


class Sender:
    """The database side of handing a job's studies to the broker, in one transaction (`sending`)."""

    def __init__(self, session: Session, job_id: int) -> None:
        self.s, self.job_id = session, job_id

    def to_send(self, study_ids: Sequence[int], *, stale_before: datetime) -> list[int]:
        """Of these studies, the ones to send: pending ones, and queued or running ones last touched
        before `stale_before` (their message may be lost)."""
        found: list[int] = []
        for chunk in chunks(list(study_ids)):
            found += self.s.scalars(select(JobStudy.study_id).where(
                JobStudy.job_id == self.job_id, JobStudy.study_id.in_(chunk), self._wanted(stale_before)))
        return sorted(found)

    def claim(self, study_ids: Sequence[int], *, stale_before: datetime) -> list[int]:
        """Mark queued those of a message's studies still to send (see `to_send`); the ones marked."""
        return sorted(self.s.scalars(update(JobStudy).where(
            JobStudy.job_id == self.job_id, JobStudy.study_id.in_(list(study_ids)), self._wanted(stale_before),
        ).values(status="queued", updated_at=utcnow()).returning(JobStudy.study_id)).all())

    def sent(self) -> None:
        """The broker holds the message of the studies just claimed: commit, so the database says what
        the broker holds (a worker may take it at once), and hold the job for the next message."""
        self.s.commit()
        self._lock()

    @staticmethod
    def _wanted(stale_before: datetime) -> ColumnElement[bool]:
        return or_(JobStudy.status == "pending",
                   and_(JobStudy.status.in_(("queued", "running")), JobStudy.updated_at < stale_before))

    def _lock(self) -> None:
        """Hold the job's row until the end of the transaction: the next sender of this job waits."""
        if self.s.get_bind().dialect.name == "sqlite":  # SQLite has no row locks: take its write lock
            self.s.execute(update(Job).where(Job.id == self.job_id).values(id=Job.id))
        else:
            self.s.execute(select(Job.id).where(Job.id == self.job_id).with_for_update())


@contextmanager
def sending(db: Database, job_id: int) -> Iterator[Sender]:
    """One sender of a job's studies at a time: a second submitter of the same job waits here until the
    first has handed its studies to the broker, then finds them queued (and the broker not empty).
    A claim whose message the broker refused is rolled back with the transaction: the studies stay
    as they were, and only what the broker holds is ever marked queued."""
    with Session(db.engine, expire_on_commit=False) as s:  # commits per message: not db.session()'s one
        sender = Sender(s, job_id)
        sender._lock()
        try:
            yield sender
        except BaseException:
            s.rollback()
            raise
        s.commit()


def _store_studies(s: Session, studies: Sequence[StudyIn]) -> dict[str, int]:
    """Insert the studies not stored yet; map every fingerprint to its id."""
    now = utcnow()
    insert_ignore(s, Study, [{"fingerprint": st.fingerprint, "uid": st.uid, "grouping": st.grouping,
                               "created_at": now} for st in studies], ["fingerprint"])
    ids: dict[str, int] = {}
    fps = [st.fingerprint for st in studies]
    for chunk in chunks(fps):
        ids.update(s.execute(select(Study.fingerprint, Study.id).where(Study.fingerprint.in_(chunk))).all())
    return ids


def _store_images(s: Session, job_id: int, study_ids: dict[str, int], studies: Sequence[StudyIn]) -> None:
    """This job's files of each study: the ones its workers will read, wherever earlier jobs found them."""
    images = [{"job_id": job_id, "study_id": study_ids[st.fingerprint], "path": im.path, "relpath": im.relpath,
               "sha256": im.sha256, "size_bytes": im.size_bytes, "error": im.error}
              for st in studies for im in st.images]
    insert_ignore(s, Image, images, ["job_id", "study_id", "relpath"])


def _unfinished(s: Session, job_id: int) -> list[int]:
    return list(s.scalars(select(JobStudy.study_id).where(
        JobStudy.job_id == job_id, JobStudy.status.in_(OPEN),
    ).order_by(JobStudy.study_id)))


def get_job(db: Database, job_id: int) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}; `xrq status` lists the jobs")
        return job


def claim_batch(db: Database, job_id: int, study_ids: Sequence[int], *,
                max_attempts: int | None = None) -> list[WorkItem]:
    """Start work on a batch: the studies still to do, with this job's files, marked running.

    One transaction of four steps, each its own function below: find the batch's open studies;
    close those the job's model has already reported (a duplicate delivery, another job); give up on
    those started `max_attempts` times (a batch that kills its worker must not come back for ever);
    mark the rest running and return them with their files.
    """
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}")
        attempts = _open_attempts(s, job_id, study_ids)
        todo = _close_reported(s, job, sorted(attempts))
        todo = _give_up_exhausted(s, job_id, todo, attempts, max_attempts)
        _mark_running(s, job_id, todo)
        return _work_items(s, job, todo)


def _open_attempts(s: Session, job_id: int, study_ids: Sequence[int]) -> dict[int, int]:
    """Study id -> attempts so far, for the batch's studies still open in this job."""
    return dict(s.execute(select(JobStudy.study_id, JobStudy.attempts).where(
        JobStudy.job_id == job_id, JobStudy.study_id.in_(list(study_ids)), JobStudy.status.in_(OPEN))).all())


def _close_reported(s: Session, job: Job, open_ids: list[int]) -> list[int]:
    """Close the open studies the job's model has reported already: done if by this job, skipped if
    by another. Returns the ones still to do."""
    reported = dict(s.execute(select(Report.study_id, Report.job_id).where(
        Report.model_id == job.model_id, Report.study_id.in_(open_ids))).all())
    for status, ids in (("done", [i for i, j in reported.items() if j == job.id]),
                        ("skipped", [i for i, j in reported.items() if j != job.id])):
        if ids:
            s.execute(update(JobStudy).where(JobStudy.job_id == job.id, JobStudy.study_id.in_(ids))
                      .values(status=status, error=None, updated_at=utcnow()))
    return [i for i in open_ids if i not in reported]


def _give_up_exhausted(s: Session, job_id: int, todo: list[int], attempts: dict[int, int],
                       max_attempts: int | None) -> list[int]:
    """Fail, for good, the studies already started `max_attempts` times; returns the others."""
    if max_attempts is None:
        return todo
    spent = [i for i in todo if attempts[i] >= max_attempts]
    if spent:
        s.execute(update(JobStudy).where(JobStudy.job_id == job_id, JobStudy.study_id.in_(spent)).values(
            status="failed", retryable=False, updated_at=utcnow(),
            error=f"gave up after {max_attempts} attempts: the worker stopped each time "
                  "(out of memory, or a crash while decoding?)"))
    return [i for i in todo if i not in set(spent)]


def _mark_running(s: Session, job_id: int, todo: list[int]) -> None:
    s.execute(update(JobStudy).where(JobStudy.job_id == job_id, JobStudy.study_id.in_(todo)).values(
        status="running", attempts=JobStudy.attempts + 1, updated_at=utcnow()))


def _work_items(s: Session, job: Job, todo: list[int]) -> list[WorkItem]:
    """The studies with this job's own files (never another job's paths), in relpath order."""
    uids = dict(s.execute(select(Study.id, Study.uid).where(Study.id.in_(todo))).all())
    images: dict[int, list[ImageRef]] = {sid: [] for sid in todo}
    for img in s.scalars(select(Image).where(Image.job_id == job.id, Image.study_id.in_(todo))
                         .order_by(Image.relpath)):
        images[img.study_id].append(ImageRef(img.id, img.path, img.relpath, img.sha256))
    return [WorkItem(sid, uids[sid], images[sid], job.source) for sid in todo]


def view_counts(db: Database, job_id: int, study_ids: Sequence[int]) -> dict[int, int]:
    """Study id -> number of this job's images: what batches are grouped by (padded views cost work)."""
    counts = dict.fromkeys(study_ids, 0)
    with db.session() as s:
        for chunk in chunks(list(study_ids)):
            counts.update(s.execute(select(Image.study_id, func.count()).where(
                Image.job_id == job_id, Image.study_id.in_(chunk)).group_by(Image.study_id)).all())
    return counts


def open_view_counts(db: Database, job_id: int, study_ids: Sequence[int]) -> dict[int, int]:
    """Like `view_counts`, for the studies of `study_ids` that this job has and has still to do, in one
    query whatever their number: a message's ids that the job does not have (made up, or of another job)
    or has finished cost nothing. The query takes the id range, not the ids, so it never outgrows a
    database's limit on bound parameters."""
    wanted = set(study_ids)
    if not wanted:
        return {}
    joined = JobStudy.__table__.outerjoin(Image.__table__, and_(Image.job_id == JobStudy.job_id,
                                                                 Image.study_id == JobStudy.study_id))
    with db.session() as s:
        rows = s.execute(select(JobStudy.study_id, func.count(Image.id)).select_from(joined).where(
            JobStudy.job_id == job_id, JobStudy.study_id.between(min(wanted), max(wanted)),
            JobStudy.status.in_(OPEN)).group_by(JobStudy.study_id)).all()
    return {sid: int(n) for sid, n in rows if sid in wanted}


def job_model(db: Database, job_id: int) -> tuple[Job, Model]:
    """A job and the model it must be reported with."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}; `xrq status` lists the jobs")
        model_row = s.get(Model, job.model_id)
        assert model_row is not None  # a foreign key
        return job, model_row


def record_results(
    db: Database, *, job_id: int, model_id: int, outcome: BatchOutcome, settings: dict[str, Any],
) -> None:
    """Store a batch's reports and failures in one transaction. A report that exists is kept."""
    now = utcnow()
    with db.session() as s:
        if outcome.reports:
            insert_ignore(s, Report, [
                {"study_id": sid, "model_id": model_id, "job_id": job_id, "text": text,
                 "settings": settings, "created_at": now, **_details(outcome, sid)}
                for sid, text in outcome.reports.items()
            ], ["study_id", "model_id"])
            # Another job may have written a study's report since this batch claimed it (three
            # submissions of one folder at once): that study is skipped here, not done twice.
            by = dict(s.execute(select(Report.study_id, Report.job_id).where(
                Report.model_id == model_id, Report.study_id.in_(list(outcome.reports)))).all())
            for status, ids in (("done", [i for i in outcome.reports if by.get(i) == job_id]),
                                ("skipped", [i for i in outcome.reports if by.get(i) != job_id])):
                if ids:
                    s.execute(update(JobStudy).where(JobStudy.job_id == job_id, JobStudy.study_id.in_(ids))
                              .values(status=status, error=None, retryable=False, updated_at=now))
        for sid, reason in outcome.failures.items():
            # Only an open study fails: a duplicate delivery must not undo another's finished work.
            s.execute(update(JobStudy).where(and_(JobStudy.job_id == job_id, JobStudy.study_id == sid,
                                                  JobStudy.status.in_(OPEN)))
                      .values(status="failed", error=reason, retryable=sid in outcome.retryable, updated_at=now))
        for iid, reason in outcome.image_errors.items():
            s.execute(update(Image).where(Image.id == iid).values(error=reason))
        for iid, (width, height) in outcome.image_sizes.items():
            s.execute(update(Image).where(Image.id == iid).values(width=width, height=height))


REPORT_DETAILS = ("confidence", "token_logprobs", "token_ids", "findings", "impression")


def _details(outcome: BatchOutcome, study_id: int) -> dict[str, Any]:
    """A report's columns beyond its text (None where the batch did not say), so every row has the same keys."""
    given = outcome.details.get(study_id, {})
    return {key: given.get(key) for key in REPORT_DETAILS}


def count_by_status(db: Database, job_id: int) -> dict[str, int]:
    with db.session() as s:
        rows = s.execute(select(JobStudy.status, func.count()).where(JobStudy.job_id == job_id)
                         .group_by(JobStudy.status)).all()
        return dict(rows)


def fail_open(db: Database, job_id: int, study_ids: Sequence[int], reason: str) -> None:
    """Fail a batch's unfinished studies with the reason, as worth another try (the backlog retries them).

    For failures of the machinery (a worker error, a model missing on this host), not of the images.
    """
    with db.session() as s:
        s.execute(update(JobStudy).where(
            JobStudy.job_id == job_id, JobStudy.study_id.in_(list(study_ids)), JobStudy.status.in_(OPEN),
        ).values(status="failed", error=reason, retryable=True, updated_at=utcnow()))
