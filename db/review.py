"""Reviews: the versions of a report as radiologists save, sign, reject and amend it.

The draft (the `reports` row) is version 0 and never changes. Each action adds version n+1 in one
transaction with moving the `reviews` head from n to n+1; if the head is no longer at n (someone else
submitted first), nothing is written and ReviewConflictError says which version is now current. A
signed report takes only new signed versions (addenda).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.engine import Database
from db.errors import NotFoundError
from db.listing import ReportRow, as_utc
from db.review_schema import Review, ReviewConflictError, ReviewRefusedError, ReviewVersion, User
from db.schema import Image, Job, Model, Report, Study, Truth, utcnow

MAX_TEXT = 20_000  # characters of a report or a reason: far above any report, far below a flood


@dataclass(frozen=True)
class Version:
    version: int
    action: str  # draft (version 0, the model's), save, sign, reject, addendum
    text: str
    reason: str | None
    author: str  # a user name, or the model's name for version 0
    created_at: datetime


@dataclass(frozen=True)
class ImageRow:
    id: int
    relpath: str


@dataclass(frozen=True)
class ReportReview:
    """A report with everything its review page shows."""

    report_id: int
    study_id: int
    uid: str
    job_id: int
    model: str
    draft: str
    created_at: datetime
    state: str  # draft, signed, rejected
    version: int  # the current version number (0: untouched draft)
    current_text: str  # what the newest version says
    signed_by: str | None
    signed_at: datetime | None
    reject_reason: str | None
    versions: list[Version]
    images: list[ImageRow]
    truth: str | None  # findings and impression of the ground truth, when known

    @property
    def current(self) -> Version:
        return self.versions[-1]


@dataclass(frozen=True)
class Submitted:
    """What an action wrote."""

    report_id: int
    version: int
    action: str
    state: str
    text: str
    author: str
    at: datetime
    draft: str
    uid: str


def report_review(db: Database, report_id: int) -> ReportReview:
    with db.session() as s:
        found = s.execute(select(Report, Study.uid, Model.name).join(Study, Study.id == Report.study_id)
                          .join(Model, Model.id == Report.model_id).where(Report.id == report_id)).first()
        if found is None:
            raise NotFoundError(f"no report {report_id}")
        report, uid, model = found
        head = s.get(Review, report_id)
        versions = [Version(0, "draft", report.text, None, model, as_utc(report.created_at))]
        versions += [Version(v.version, v.action, v.text, v.reason, name, as_utc(v.created_at)) for v, name in
                     s.execute(select(ReviewVersion, User.name).join(User, User.id == ReviewVersion.author_id)
                               .where(ReviewVersion.report_id == report_id).order_by(ReviewVersion.version))]
        signer = s.get(User, head.signed_by) if head is not None and head.signed_by is not None else None
        images = [ImageRow(i, rel) for i, rel in s.execute(
            select(Image.id, Image.relpath).where(Image.study_id == report.study_id, Image.job_id == report.job_id)
            .order_by(Image.relpath))]
        truth = s.scalars(select(Truth).where(Truth.uid == uid).order_by(Truth.id)).first()
        truth_text = None
        if truth is not None:
            truth_text = "\n\n".join(p for p in (truth.findings.strip(), truth.impression.strip()) if p) or None
        return ReportReview(
            report.id, report.study_id, uid, report.job_id, model, report.text, as_utc(report.created_at),
            head.state if head else "draft", head.version if head else 0, versions[-1].text,
            signer.name if signer else None, as_utc(head.signed_at) if head and head.signed_at else None,
            head.reject_reason if head else None, versions, images, truth_text)


def _check(state: str, action: str, text: str, reason: str | None) -> str:
    """The action as recorded (a sign-off of a signed report is an addendum), or ReviewRefusedError."""
    if len(text) > MAX_TEXT or len(reason or "") > MAX_TEXT:
        raise ReviewRefusedError(f"a report or reason is at most {MAX_TEXT:,} characters")
    if action not in ("save", "sign", "reject"):
        raise ReviewRefusedError(f"unknown action {action!r}")
    if state == "signed" and action != "sign":
        raise ReviewRefusedError("this report is signed: it can only be amended by signing an addendum")
    if action == "sign" and not text.strip():
        raise ReviewRefusedError("an empty report cannot be signed")
    if action == "reject" and not (reason or "").strip():
        raise ReviewRefusedError("say why the draft is rejected: a reason is required")
    return "addendum" if state == "signed" else action


def submit(db: Database, report_id: int, *, base_version: int, action: str, text: str, author_id: int,
           reason: str | None = None) -> Submitted:
    """Add version `base_version + 1`: save (keep an edit), sign, or reject (with a reason; the text stays).

    Raises ReviewConflictError when the current version is no longer `base_version`.
    """
    text = text.replace("\r\n", "\n")
    try:
        with db.session() as s:
            found = s.execute(select(Report, Study.uid).join(Study, Study.id == Report.study_id)
                              .where(Report.id == report_id)).first()
            if found is None:
                raise NotFoundError(f"no report {report_id}")
            report, uid = found
            head = s.get(Review, report_id)
            current = head.version if head is not None else 0
            if current != base_version:
                raise _conflict(report_id, current)
            recorded = _check(head.state if head else "draft", action, text, reason)
            if recorded == "reject":
                text = _current_text(s, report, current)
            author = s.get(User, author_id)
            assert author is not None
            now, version = utcnow(), base_version + 1
            state = {"save": "draft", "sign": "signed", "addendum": "signed", "reject": "rejected"}[recorded]
            values: dict[str, object] = {"state": state, "version": version, "updated_at": now,
                                         "reject_reason": reason.strip() if recorded == "reject" and reason else None}
            if state == "signed":
                values.update(final_text=text, signed_by=author_id, signed_at=now)
            if head is None:
                s.add(Review(report_id=report_id, **values))
                s.flush()  # a concurrent first review fails here, on the primary key
            else:
                result: Any = s.execute(update(Review).where(Review.report_id == report_id,
                                                             Review.version == current).values(**values))
                moved = result.rowcount
                if moved != 1:
                    raise _conflict(report_id, current + 1)
            s.add(ReviewVersion(report_id=report_id, version=version, action=recorded, text=text,
                                reason=values["reject_reason"], author_id=author_id, created_at=now))
            s.flush()
            return Submitted(report_id, version, recorded, state, text, author.name, now, report.text, uid)
    except IntegrityError:
        raise _conflict(report_id, base_version + 1) from None


def _current_text(s: Session, report: Report, version: int) -> str:
    if version == 0:
        return report.text
    row = s.scalar(select(ReviewVersion.text).where(ReviewVersion.report_id == report.id,
                                                    ReviewVersion.version == version))
    return row if row is not None else report.text


def _conflict(report_id: int, current: int) -> ReviewConflictError:
    return ReviewConflictError(f"report {report_id} was changed by someone else meanwhile (it is now at "
                               f"version {current}): read the newer version, then submit again", current)


def image_file(db: Database, image_id: int) -> tuple[str, str, str | None]:
    """(path, the folder its job was submitted from, sha256) of an image, for reading it safely."""
    with db.session() as s:
        row = s.execute(select(Image.path, Job.source, Image.sha256).join(Job, Job.id == Image.job_id)
                        .where(Image.id == image_id)).first()
        if row is None:
            raise NotFoundError(f"no image {image_id}")
        return row.path, row.source, row.sha256


REVIEW_COLUMNS = ("review_state", "final_text", "signed_by", "signed_at")  # what `xrq reports`/`export` add


def review_columns(db: Database, keys: list[tuple[int, int]]) -> dict[tuple[int, int], dict[str, object]]:
    """(study id, id of the job that wrote the report) -> REVIEW_COLUMNS, for the reports among `keys`.

    A report is unique per (study, model) and a job has one model, so the pair names one report. A
    report nobody has reviewed is a draft; `signed_at` is an aware UTC datetime or None.
    """
    from db.bulk import chunks

    found: dict[tuple[int, int], dict[str, object]] = {}
    for chunk in chunks(sorted({sid for sid, _ in keys})):
        with db.session() as s:
            rows = s.execute(
                select(Report.study_id, Report.job_id, Review.state, Review.final_text, User.name, Review.signed_at)
                .outerjoin(Review, Review.report_id == Report.id).outerjoin(User, User.id == Review.signed_by)
                .where(Report.study_id.in_(list(chunk)))).all()
        for sid, jid, state, final, signer, signed_at in rows:
            found[(sid, jid)] = {"review_state": state or "draft", "final_text": final, "signed_by": signer,
                                 "signed_at": as_utc(signed_at) if signed_at is not None else None}
    wanted = set(keys)
    return {k: v for k, v in found.items() if k in wanted}


@dataclass(frozen=True)
class Reviewed:
    """A report that a reviewer signed or rejected, as `xrq evaluate --truth signed` scores it."""

    report_id: int
    study_id: int
    uid: str
    job_id: int
    model_id: int
    model: str
    draft: str
    state: str  # signed | rejected
    final_text: str | None
    reject_reason: str | None


def reviewed(db: Database, *, job_id: int | None = None, model_id: int | None = None) -> list[Reviewed]:
    """Signed and rejected reports (of a job, or a model), oldest report first."""
    with db.session() as s:
        if job_id is not None and s.get(Job, job_id) is None:
            raise NotFoundError(f"no job {job_id}; `xrq status` lists the jobs")
        stmt = (select(Report.id.label("report_id"), Report.study_id, Study.uid, Report.job_id, Report.model_id,
                       Model.name.label("model"), Report.text.label("draft"), Review.state, Review.final_text,
                       Review.reject_reason)
                .join(Review, Review.report_id == Report.id).join(Study, Study.id == Report.study_id)
                .join(Model, Model.id == Report.model_id).where(Review.state.in_(("signed", "rejected"))))
        if job_id is not None:
            stmt = stmt.where(Report.job_id == job_id)
        if model_id is not None:
            stmt = stmt.where(Report.model_id == model_id)
        return [Reviewed(**row._asdict()) for row in s.execute(stmt.order_by(Report.id))]


def with_reviews(db: Database, rows: Iterable[ReportRow], *, chunk: int = 500) -> Iterator[ReportRow]:
    """The rows of a streamed listing, each with its review columns: one query per `chunk` rows, so a
    listing of millions still holds one chunk at a time."""
    batch: list[ReportRow] = []

    def flush() -> Iterator[ReportRow]:
        reviews = review_columns(db, [(r.study_id, r.job_id) for r in batch])
        empty = {"review_state": "draft", "final_text": None, "signed_by": None, "signed_at": None}
        yield from (replace(r, review=reviews.get((r.study_id, r.job_id), empty)) for r in batch)
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) >= chunk:
            yield from flush()
    if batch:
        yield from flush()


@dataclass(frozen=True)
class Signature:
    """One signed version of a report (a sign-off or an addendum): what its signed documents are built from."""

    report_id: int
    version: int
    action: str  # sign | addendum
    text: str
    author: str
    at: datetime


def signatures(db: Database, report_ids: Iterable[int]) -> dict[int, list[Signature]]:
    """report id -> its signed versions, oldest first (reports never signed are absent)."""
    from db.bulk import chunks

    found: dict[int, list[Signature]] = {}
    for chunk in chunks(sorted(set(report_ids))):
        with db.session() as s:
            rows = s.execute(
                select(ReviewVersion.report_id, ReviewVersion.version, ReviewVersion.action, ReviewVersion.text,
                       User.name, ReviewVersion.created_at).join(User, User.id == ReviewVersion.author_id)
                .where(ReviewVersion.report_id.in_(list(chunk)), ReviewVersion.action.in_(("sign", "addendum")))
                .order_by(ReviewVersion.report_id, ReviewVersion.version)).all()
        for rid, version, action, text, author, at in rows:
            found.setdefault(rid, []).append(Signature(rid, version, action, text, author, as_utc(at)))
    return found
