"""Deliveries of reports' documents (DICOM SR, FHIR) to destinations (a PACS, a DICOMweb server).

A delivery is one document of one report sent to one destination: (report, destination, SOP instance
UID) is unique, so a second push finds what is already delivered and sends only the rest. `state` is
delivered or failed (with `attempts` and `last_error`); the backlog retries failed ones.

Also here: `report_sources`, the plain facts a document is built from (no patient data: xrq stores
none; the documents take it from the study's files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Integer, Select, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, mapped_column

from db.bulk import chunks
from db.engine import Database
from db.errors import NotFoundError
from db.queries import as_utc
from db.schema import Base, Image, Job, JobStudy, Model, Report, Study, utcnow

DELIVERY_STATES = ("delivered", "failed")
UNSENT_WINDOW = timedelta(days=7)  # how far back the backlog looks for sign-offs that were never sent


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("report_id", "destination", "sop_instance_uid",
                                       name="uq_deliveries_report_dest_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    destination: Mapped[str] = mapped_column(Text)  # as the user gave it, without credentials
    kind: Mapped[str] = mapped_column(String(16))  # sr (the draft's SR) | sr-signed (a signed version's)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))  # the document's UID (derived, stable)
    state: Mapped[str] = mapped_column(String(16), index=True)  # delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class ReportSource:
    """A stored report and where its study's files are: what interop builds documents from."""

    report_id: int
    job_id: int
    study_uid: str
    grouping: str
    text: str
    created_at: datetime
    model_name: str
    model_fingerprint: str
    files: tuple[str, ...]
    study_fingerprint: str
    previous_study_fingerprint: str | None = None  # the study (same uid) as reported before by this model


def report_sources(db: Database, job_ids: Sequence[int], *,
                   study_ids: set[int] | None = None) -> list[ReportSource]:
    """The reports of the jobs' studies (by each job's model), in job and uid order, with the files
    each job found for the study (only `study_ids`, when given). Studies without a report are left out."""
    out: list[ReportSource] = []
    with db.session() as s:
        for job_id in job_ids:
            if s.get(Job, job_id) is None:
                raise NotFoundError(f"no job {job_id}; `xrq status` lists the jobs")
            stmt = (
                select(Report.id, Study.id.label("study_id"), Study.uid, Study.grouping, Study.fingerprint.label("sfp"),
                       Report.text,
                       Report.created_at, Model.name, Model.fingerprint)
                .select_from(JobStudy).join(Job, Job.id == JobStudy.job_id)
                .join(Study, Study.id == JobStudy.study_id).join(Model, Model.id == Job.model_id)
                .join(Report, (Report.study_id == JobStudy.study_id) & (Report.model_id == Job.model_id))
                .where(JobStudy.job_id == job_id).order_by(Study.uid, Study.id))
            if study_ids is not None:
                stmt = stmt.where(JobStudy.study_id.in_(sorted(study_ids)))
            rows = s.execute(stmt).all()
            files: dict[int, list[str]] = {r.study_id: [] for r in rows}
            for chunk in chunks(sorted(files)):
                for sid, path in s.execute(select(Image.study_id, Image.path).where(
                        Image.job_id == job_id, Image.study_id.in_(chunk)).order_by(Image.relpath)).all():
                    files[sid].append(path)
            out += [ReportSource(r.id, job_id, r.uid, r.grouping, r.text, as_utc(r.created_at), r.name,
                                 r.fingerprint, tuple(files[r.study_id]), r.sfp, _previous(s, r))
                    for r in rows]
    return out


def _previous(s: Any, row: Any) -> str | None:
    """The content hash of the same DICOM study as this model last reported it before this report."""
    if row.grouping != "dicom":
        return None
    return s.scalar(
        select(Study.fingerprint).join(Report, Report.study_id == Study.id)
        .join(Model, Model.id == Report.model_id)
        .where(Study.uid == row.uid, Study.grouping == "dicom", Study.id != row.study_id,
               Model.fingerprint == row.fingerprint, Report.created_at < row.created_at)
        .order_by(Report.created_at.desc()).limit(1))


def delivered(db: Database, destination: str, report_ids: Sequence[int]) -> set[tuple[int, str]]:
    """(report id, document UID) pairs already delivered to `destination`."""
    found: set[tuple[int, str]] = set()
    with db.session() as s:
        for chunk in chunks(sorted(set(report_ids))):
            found |= {(r, u) for r, u in s.execute(
                select(Delivery.report_id, Delivery.sop_instance_uid).where(
                    Delivery.destination == destination, Delivery.state == "delivered",
                    Delivery.report_id.in_(chunk))).all()}
    return found


def record(db: Database, *, report_id: int, destination: str, kind: str, uid: str, error: str | None) -> None:
    """One attempt at one delivery: delivered when `error` is None, else failed with the reason."""
    now = utcnow()
    with db.session() as s:
        row = s.scalar(select(Delivery).where(Delivery.report_id == report_id, Delivery.destination == destination,
                                              Delivery.sop_instance_uid == uid).with_for_update())
        if row is None:
            row = Delivery(report_id=report_id, destination=destination, kind=kind, sop_instance_uid=uid,
                           attempts=0, created_at=now)
            s.add(row)
        row.attempts = (row.attempts or 0) + 1
        row.state = "delivered" if error is None else "failed"
        row.last_error = error
        row.updated_at = now
        if error is None:
            row.delivered_at = now


@dataclass(frozen=True)
class Pending:
    """Failed deliveries to retry: a destination and the jobs of their reports."""

    destination: str
    job_ids: tuple[int, ...]
    count: int


def failed(db: Database, *, max_attempts: int, kind: str = "sr") -> list[Pending]:
    """Failed deliveries of `kind` with attempts left, by destination (what the backlog retries)."""
    by_dest: dict[str, tuple[set[int], int]] = {}
    with db.session() as s:
        for dest, job_id in s.execute(
                select(Delivery.destination, Report.job_id).join(Report, Report.id == Delivery.report_id)
                .where(Delivery.state == "failed", Delivery.attempts < max_attempts, Delivery.kind == kind)).all():
            jobs, n = by_dest.get(dest, (set(), 0))
            jobs.add(job_id)
            by_dest[dest] = (jobs, n + 1)
    return [Pending(d, tuple(sorted(j)), n) for d, (j, n) in sorted(by_dest.items())]


def failed_documents(db: Database, *, max_attempts: int, kind: str) -> dict[str, dict[int, set[str]]]:
    """Failed deliveries of `kind` with attempts left: destination -> report id -> the documents' UIDs."""
    found: dict[str, dict[int, set[str]]] = {}
    with db.session() as s:
        for dest, report_id, uid in s.execute(
                select(Delivery.destination, Delivery.report_id, Delivery.sop_instance_uid)
                .where(Delivery.state == "failed", Delivery.attempts < max_attempts, Delivery.kind == kind)).all():
            found.setdefault(dest, {}).setdefault(report_id, set()).add(uid)
    return found


def unsent_signed(db: Database, destination: str, *, kind: str, within: timedelta = UNSENT_WINDOW,
                  limit: int = 1000) -> dict[int, set[int]]:
    """Reports signed in the last `within` that have fewer `kind` delivery rows to `destination`,
    delivered or failed, than signed versions (sign-offs, addenda): report id -> its signed versions.

    A sign-off is committed before its SR is sent, and the send records its row; a process killed in
    between leaves a signed version with no row at all, which no retry of failed rows would find. The
    sign-off itself is the record: this finds them (the sender skips what is already delivered). The
    window keeps the nightly look bounded (a study with no DICOM identity never gets a row, so it
    would be looked at again every night); at most `limit` reports, the newest first.
    """
    from db.review_schema import ReviewVersion

    signed_actions = ReviewVersion.action.in_(("sign", "addendum"))
    with db.session() as s:
        short = list(s.scalars(unsent_signed_query(destination, kind, utcnow() - within, limit)))
        found: dict[int, set[int]] = {}
        for chunk in chunks(short):
            for report_id, version in s.execute(
                    select(ReviewVersion.report_id, ReviewVersion.version)
                    .where(ReviewVersion.report_id.in_(chunk), signed_actions)):
                found.setdefault(report_id, set()).add(version)
    return found


def unsent_signed_query(destination: str, kind: str, since: datetime, limit: int) -> Select[tuple[int]]:
    """The ids of reports with a sign-off or addendum since `since` and fewer `kind` delivery rows to
    `destination` than signed versions, newest first: a walk of the window on
    ix_review_versions_created_at, and of those reports' deliveries only."""
    from sqlalchemy import func

    from db.review_schema import ReviewVersion

    signed_actions = ReviewVersion.action.in_(("sign", "addendum"))
    recent = select(ReviewVersion.report_id).where(signed_actions, ReviewVersion.created_at >= since)
    signed = (select(ReviewVersion.report_id, func.count().label("n"), func.max(ReviewVersion.id).label("last"))
              .where(signed_actions, ReviewVersion.report_id.in_(recent))
              .group_by(ReviewVersion.report_id).subquery())
    sent = (select(Delivery.report_id, func.count().label("n"))
            .where(Delivery.destination == destination, Delivery.kind == kind, Delivery.report_id.in_(recent))
            .group_by(Delivery.report_id).subquery())
    return (select(signed.c.report_id).outerjoin(sent, sent.c.report_id == signed.c.report_id)
            .where(signed.c.n > func.coalesce(sent.c.n, 0)).order_by(signed.c.last.desc()).limit(limit))


def deliveries_of(db: Database, report_id: int) -> list[dict[str, object]]:
    """Every delivery of a report, as plain rows (destination, kind, uid, state, attempts, last_error)."""
    with db.session() as s:
        return [{"destination": d.destination, "kind": d.kind, "uid": d.sop_instance_uid, "state": d.state,
                 "attempts": d.attempts, "last_error": d.last_error}
                for d in s.scalars(select(Delivery).where(Delivery.report_id == report_id).order_by(Delivery.id))]
