"""The review worklist: reports newest first, filtered by job, model, state and text, a page at a time.

Pages are keyset pages (`after` the last row's (created_at, id)), never OFFSET: page 2,000 of a
million reports costs what page 1 costs. Migration 0007 adds the indexes these queries walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, tuple_

from db.engine import Database
from db.queries import as_utc
from db.review_schema import STATES, ReaderCase, ReaderStudyReader, Review, User
from db.schema import Model, Report, Study

EXCERPT = 160  # characters of the draft a row shows


@dataclass(frozen=True)
class WorklistFilter:
    job_id: int | None = None
    model: str | None = None  # a model's name
    state: str | None = None  # draft, signed, rejected
    text: str | None = None  # a case-insensitive substring of the draft
    reader_id: int | None = None  # a user who reads in reader studies: their studies are left out (blinded)


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the (created_at, id) of its last report."""

    created_at: datetime
    report_id: int

    def encode(self) -> str:
        return f"{self.created_at.isoformat()}~{self.report_id}"

    @classmethod
    def decode(cls, raw: str | None) -> Cursor | None:
        """The cursor in a link, or None for one that is not (a hand-edited link starts again)."""
        if not raw or "~" not in raw:
            return None
        when, _, rid = raw.rpartition("~")
        try:
            return cls(datetime.fromisoformat(when), int(rid))
        except ValueError:
            return None


@dataclass(frozen=True)
class WorklistRow:
    report_id: int
    uid: str
    job_id: int
    model: str
    created_at: datetime
    state: str
    excerpt: str
    signed_by: str | None


@dataclass(frozen=True)
class WorklistPage:
    rows: list[WorklistRow]
    next: Cursor | None  # None: the last page


def _where(stmt: Any, f: WorklistFilter, model_id: int | None) -> Any:
    """The filters, on reports alone: a review state is an EXISTS on `reviews`, so that the planner
    walks the (created_at, id) index newest first and stops at the page's end, whatever the filter."""
    if f.job_id is not None:
        stmt = stmt.where(Report.job_id == f.job_id)
    if f.model:
        stmt = stmt.where(Report.model_id == (model_id if model_id is not None else -1))
    reviewed = select(Review.report_id).where(Review.report_id == Report.id)
    if f.state == "draft":
        stmt = stmt.where(~reviewed.where(Review.state != "draft").exists())
    elif f.state in STATES:
        stmt = stmt.where(reviewed.where(Review.state == f.state).exists())
    if f.text:
        stmt = stmt.where(func.lower(Report.text).contains(f.text.lower(), autoescape=True))
    if f.reader_id is not None:
        stmt = stmt.where(~read_by(f.reader_id, Report.study_id))
    return stmt


def read_by(user_id: int, study_id: Any) -> Any:
    """EXISTS: the study `study_id` (a column or a value) is a case of a reader study `user_id` reads.

    Such a study's drafts, their models and its ground truth are hidden from that reader outside the
    reader study: seen in the worklist, they would tell which side of a case a model wrote.
    """
    return (select(ReaderCase.id).join(ReaderStudyReader,
                                       ReaderStudyReader.reader_study_id == ReaderCase.reader_study_id)
            .where(ReaderCase.study_id == study_id, ReaderStudyReader.user_id == user_id).exists())


def reads_any(db: Database, user_id: int) -> bool:
    """Whether this user is a reader of any reader study (so their worklist leaves its studies out)."""
    with db.session() as s:
        return s.scalar(select(ReaderStudyReader.user_id).where(ReaderStudyReader.user_id == user_id)
                        .limit(1)) is not None


def worklist(db: Database, f: WorklistFilter, *, after: Cursor | None = None, limit: int = 50) -> WorklistPage:
    with db.session() as s:
        model_id = s.scalar(select(Model.id).where(Model.name == f.model).order_by(Model.id)) if f.model else None
        # The page's report ids first (an index walk), then their details: 51 lookups, not a million.
        page = _where(select(Report.id, Report.created_at), f, model_id)
        if after is not None:
            page = page.where(tuple_(Report.created_at, Report.id) < tuple_(after.created_at, after.report_id))
        ids = page.order_by(Report.created_at.desc(), Report.id.desc()).limit(limit + 1).subquery()
        stmt = (select(Report.id, Study.uid, Report.job_id, Model.name, Report.created_at, Review.state,
                       func.substr(Report.text, 1, EXCERPT).label("excerpt"), User.name.label("signer"))
                .join(ids, ids.c.id == Report.id)
                .join(Study, Study.id == Report.study_id).join(Model, Model.id == Report.model_id)
                .outerjoin(Review, Review.report_id == Report.id).outerjoin(User, User.id == Review.signed_by))
        rows = s.execute(stmt.order_by(Report.created_at.desc(), Report.id.desc())).all()
    page_rows = [WorklistRow(r.id, r.uid, r.job_id, r.name, as_utc(r.created_at), r.state or "draft",
                             r.excerpt or "", r.signer) for r in rows[:limit]]
    more = len(rows) > limit
    return WorklistPage(page_rows, Cursor(rows[limit - 1].created_at, rows[limit - 1].id) if more else None)


def model_names(db: Database) -> list[str]:
    with db.session() as s:
        return sorted(set(s.scalars(select(Model.name))))


def next_unreviewed(db: Database, report_id: int | None = None, *, reader_id: int | None = None) -> int | None:
    """The next draft nobody has touched, after `report_id` in worklist order (else from the top);
    with `reader_id`, none of the studies that user reads in a reader study."""
    with db.session() as s:
        base = (select(Report.id).outerjoin(Review, Review.report_id == Report.id).where(Review.report_id.is_(None))
                .order_by(Report.created_at.desc(), Report.id.desc()).limit(1))
        if reader_id is not None:
            base = base.where(~read_by(reader_id, Report.study_id))
        if report_id is not None:
            here = s.execute(select(Report.created_at, Report.id).where(Report.id == report_id)).first()
            if here is not None:
                found = s.scalar(base.where(tuple_(Report.created_at, Report.id) < tuple_(here.created_at, here.id)))
                if found is not None:
                    return int(found)
            base = base.where(Report.id != report_id)
        found = s.scalar(base)
        return None if found is None else int(found)
