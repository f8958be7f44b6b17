"""Streaming reads: every listing of reports, failures, export rows and a job's studies in constant memory.

A read opens one connection and walks one query with a server-side cursor on PostgreSQL
(`stream_results` + `yield_per`: the server hands rows over CHUNK at a time) and a plain cursor on
SQLite (sqlite3 steps through the statement as rows are fetched): the same code on both. Rows leave as
they arrive, so the first line of a million-row listing leaves at once, and a reader that stops early
(`| head`) closes the cursor by closing the generator.

Every listing is ordered by an index so that neither database sorts the table before the first row:
reports by (study id, model id) (the unique key; with --job, the job's studies by study id), failed
studies by (study id, job id). That order is also the keyset cursor: `after=(study_id, second)` goes on
after a row without counting the rows before it (OFFSET does count them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, literal, select, tuple_
from sqlalchemy.orm import Session

from db.engine import Database, plan_lines
from db.errors import NotFoundError
from db.schema import Image, Job, JobStudy, Model, Report, Study


def as_utc(when: datetime) -> datetime:
    """A stored time as an aware UTC datetime, whichever database it came from.

    Every time is written in UTC; PostgreSQL hands it back aware (in the session's time zone),
    SQLite naive. Normalising here means `+00:00` in every output, on both, as docs/cli.md shows.
    """
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


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
    status: str = "done"
    error: str | None = None
    model_id: int | None = None  # the keyset cursor's second half (db.listing.cursor_of)
    review: dict[str, Any] | None = None  # db.review.REVIEW_COLUMNS, when the listing asked for them
    confidence: float | None = None  # exp(mean token log-probability); None before it was recorded
    token_logprobs: list[float] | None = None  # each token's natural-log probability, as generated

    def as_dict(self) -> dict[str, Any]:
        data = {"study_id": self.study_id, "uid": self.uid, "job_id": self.job_id, "model": self.model,
                "report": self.text, "created_at": self.created_at.isoformat(), "images": self.images,
                "settings": self.settings, "confidence": self.confidence, "token_logprobs": self.token_logprobs}
        if self.status != "done":
            data.update(status=self.status, error=self.error)
        if self.review is not None:
            signed = self.review["signed_at"]
            data.update(self.review, signed_at=None if signed is None else signed.isoformat())
        return data


@dataclass(frozen=True)
class ReportFilter:
    """What `xrq reports` and `xrq export` narrow the listing to; every field is optional."""

    job_id: int | None = None
    model: str | None = None  # model name
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None  # case-insensitive substring of the report (or of the failure reason)
    status: str = "done"  # done: reports; failed: failed studies with their reasons
    min_confidence: float | None = None  # reports at least this sure (those without a confidence drop out)
    max_confidence: float | None = None  # reports at most this sure
    order_by: str = "study"  # study: the cursor's order; confidence: least sure first (reports only)


ORDERS = ("study", "confidence")
CHUNK = 1000  # rows a fetch brings over; also the study ids of one images lookup
Cursor = tuple[int, int]  # (study id, model id) of a report, (study id, job id) of a failure


def stream(conn: Connection | Session, stmt: Any, chunk: int = CHUNK) -> Iterator[Sequence[Any]]:
    """The rows of `stmt` in partitions of at most `chunk`, through a server-side cursor where there is one."""
    result = conn.execute(stmt, execution_options={"stream_results": True, "yield_per": chunk})
    try:
        yield from result.partitions()
    finally:
        result.close()


def _check_job(db: Database, job_id: int | None) -> None:
    if job_id is None:
        return
    with db.session() as s:
        if s.get(Job, job_id) is None:
            raise NotFoundError(f"no job {job_id}; `xrq status` lists the jobs")


@dataclass(frozen=True)
class _Known:
    """What a filter names, resolved to ids before the listing runs, so that the planner sees constants
    (a model name joined in would hide how few reports a model has, and PostgreSQL would walk them all)."""

    model_ids: list[int] | None  # --model: the ids of the models of that name
    job_model: int | None  # --job: the job's model


def _resolve(db: Database, where: ReportFilter) -> _Known:
    _check_job(db, where.job_id)
    with db.session() as s:
        model_ids = None if where.model is None else list(s.scalars(select(Model.id).where(Model.name == where.model)))
        job_model = None if where.job_id is None else s.scalar(select(Job.model_id).where(Job.id == where.job_id))
    return _Known(model_ids, job_model)


def report_rows(db: Database, where: ReportFilter, *, limit: int | None = None, offset: int = 0,
                after: Cursor | None = None, images: bool = True) -> Iterator[ReportRow]:
    """Reports (or, with status "failed", failed studies) matching `where`, one at a time, in cursor order.

    With a job: every study of it that has a report by its model, including studies skipped because
    an earlier job had already reported them. `images` False leaves each row's image list empty (one
    query a chunk fewer: what scoring needs). The job, if any, must exist (checked before the first row).
    """
    stmt = listing_query(db, where, after=after)
    if offset:
        stmt = stmt.offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    with db.engine.connect() as conn:
        _plan_for(conn, where)
        for part in stream(conn, stmt):
            files = _images_of(conn, [(row.study_id, row.job_id) for row in part]) if images else {}
            for row in part:
                yield ReportRow(row.study_id, row.uid, row.job_id, row.model, row.text or "",
                                as_utc(row.created_at), files.get((row.study_id, row.job_id), []),
                                row.settings or {}, where.status, row.error, row.model_id,
                                confidence=row.confidence, token_logprobs=row.token_logprobs)


def _plan_for(conn: Connection, where: ReportFilter) -> None:
    """Tell PostgreSQL how much of a cursor will be read. By default it plans a cursor for its first 10%
    (cursor_tuple_fraction): right where an index gives the listing's order (everything, --job, --model,
    failures), which then starts at once. But for a filter whose index does not (--since, --until,
    --text) it would rather walk every report in study order until it has found a tenth of the few that
    match than take them from the filter's index and sort them: there the cursor is planned for all of
    its rows."""
    unordered = bool(where.since or where.until or where.text)
    if where.order_by == "confidence":  # ix_reports_confidence gives the order, but not a job's or a model's
        unordered = unordered or where.job_id is not None or where.model is not None
    if conn.dialect.name == "postgresql" and unordered:
        conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")


def explain(db: Database, where: ReportFilter) -> list[str]:
    """The plan of the listing's query as `report_rows` runs it (PostgreSQL: its cursor's; SQLite: EXPLAIN
    QUERY PLAN), one line a step: what bench/scale.py records and the tests check for each filter's index."""
    query = listing_query(db, where)
    with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            _plan_for(conn, where)
        return plan_lines(conn, query, cursor=True)


def count_rows(db: Database, where: ReportFilter, *, after: Cursor | None = None) -> int:
    """How many rows `report_rows(db, where, after=after)` has in all: one COUNT on the same indexes,
    without the joins that only name the rows (their study's uid, their model's name)."""
    inner = listing_query(db, where, after=after, counting=True).order_by(None).subquery()
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(inner)) or 0


def cursor_of(row: ReportRow, where: ReportFilter) -> Cursor:
    """The keyset cursor just after `row`: what `after=` takes to go on from there (study order only)."""
    second = row.job_id if where.status == "failed" else row.model_id
    assert second is not None  # rows from report_rows carry their model id
    return (row.study_id, second)


def listing_query(db: Database, where: ReportFilter, *, after: Cursor | None = None, counting: bool = False) -> Any:
    """The SELECT behind `report_rows`, ordered by its cursor (what tests EXPLAIN for its index);
    `counting`: the same rows, their study ids only (what `count_rows` counts).

    Raises NotFoundError for a job that does not exist.
    """
    if where.order_by not in ORDERS:
        raise ValueError(f"order_by must be one of {ORDERS}, not {where.order_by!r}")
    if where.order_by == "confidence" and (where.status == "failed" or after is not None):
        raise ValueError("the confidence order is for reports, without a cursor (use an offset)")
    known = _resolve(db, where)
    if where.status == "failed":
        return _failed_query(where, known, after, counting=counting)
    return _reports_query(where, known, after, sqlite=db.dialect == "sqlite", counting=counting)


def _reports_query(f: ReportFilter, known: _Known, after: Cursor | None, *, sqlite: bool = False,
                   counting: bool = False) -> Any:
    stmt = select(Report.study_id) if counting else (
        select(Report.study_id, Study.uid, Report.job_id, Report.model_id, Model.name.label("model"),
               Report.text, Report.created_at, Report.settings, literal(None).label("error"), Report.confidence,
               Report.token_logprobs)
        .join(Study, Study.id == Report.study_id).join(Model, Model.id == Report.model_id))
    if f.job_id is not None:
        # The job's studies (its primary key, in study order) and the report of each by the job's model.
        stmt = stmt.join(JobStudy, (JobStudy.study_id == Report.study_id) & (JobStudy.job_id == f.job_id)).where(
            Report.model_id == known.job_model)
    if known.model_ids is not None:
        stmt = stmt.where(Report.model_id.in_(known.model_ids))
    if after is not None:
        stmt = stmt.where(tuple_(Report.study_id, Report.model_id) > tuple_(*after))
    stmt = _narrow(stmt, f, when=Report.created_at, text=Report.text)
    if f.min_confidence is not None:
        stmt = stmt.where(Report.confidence >= f.min_confidence)
    if f.max_confidence is not None:
        stmt = stmt.where(Report.confidence <= f.max_confidence)
    if f.order_by == "confidence":
        # Least sure first, then the cursor's order: ix_reports_confidence (confidence, study, model) holds
        # it on PostgreSQL, whose index keeps NULLs last; reports without a confidence come last on both.
        return stmt.order_by(Report.confidence.asc().nulls_last(), Report.study_id, Report.model_id)
    if f.job_id is not None:  # the job's primary key gives this order (the model is the job's: one)
        return stmt.order_by(JobStudy.study_id)
    if sqlite and known.model_ids is None and (f.since or f.until):
        # SQLite would rather walk every report in study order than sort the few of a time window: `+`
        # (`study_id + 0`) keeps it off the (study, model) index, so that it takes the window's (SQLite's own advice).
        return stmt.order_by(Report.study_id + 0, Report.model_id)
    return stmt.order_by(Report.study_id, Report.model_id)


def _failed_query(f: ReportFilter, known: _Known, after: Cursor | None, *, counting: bool = False) -> Any:
    stmt = select(JobStudy.study_id).join(Job, Job.id == JobStudy.job_id) if counting else (
        select(JobStudy.study_id, Study.uid, JobStudy.job_id, Job.model_id, Model.name.label("model"),
               literal(None).label("text"), JobStudy.updated_at.label("created_at"),
               literal(None).label("settings"), JobStudy.error, literal(None).label("confidence"),
               literal(None).label("token_logprobs"))
        .join(Study, Study.id == JobStudy.study_id).join(Job, Job.id == JobStudy.job_id)
        .join(Model, Model.id == Job.model_id))
    stmt = stmt.where(JobStudy.status == "failed")
    if f.job_id is not None:
        stmt = stmt.where(JobStudy.job_id == f.job_id)
    if known.model_ids is not None:
        stmt = stmt.where(Job.model_id.in_(known.model_ids))
    if after is not None:
        stmt = stmt.where(tuple_(JobStudy.study_id, JobStudy.job_id) > tuple_(*after))
    stmt = _narrow(stmt, f, when=JobStudy.updated_at, text=JobStudy.error)
    return stmt.order_by(JobStudy.study_id, JobStudy.job_id)


def _narrow(stmt: Any, f: ReportFilter, *, when: Any, text: Any) -> Any:
    """The filters both listings share: a time window on `when`, a substring of `text`.

    The substring is matched as `lower(text) LIKE '%...%'` with the pattern built here, so that
    PostgreSQL sees a constant pattern and can use the trigram index on lower(text) (migration 0006).
    """
    if f.since is not None:
        stmt = stmt.where(when >= f.since)
    if f.until is not None:
        stmt = stmt.where(when < f.until)
    if f.text:
        escaped = f.text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(func.lower(text).like(f"%{escaped}%", escape="\\"))
    return stmt


def _images_of(conn: Connection | Session, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], list[str]]:
    """(study id, job id) -> the relative paths of the files that job found for the study (one query)."""
    images: dict[tuple[int, int], list[str]] = {pair: [] for pair in pairs}
    if not pairs:
        return images
    rows = conn.execute(select(Image.study_id, Image.job_id, Image.relpath)
                        .where(Image.study_id.in_(sorted({sid for sid, _ in pairs}))).order_by(Image.relpath))
    for sid, job_id, rel in rows:
        if (sid, job_id) in images:
            images[(sid, job_id)].append(rel)
    return images


def export_batches(db: Database, job_ids: list[int], *, size: int = 2000) -> Iterator[list[dict[str, Any]]]:
    """Every study of the jobs, whatever its status, with its report by the job's model when there is one.

    Rows come in batches of at most `size`, job by job in study order, from one streamed query a job.
    Each row has EXPORT_COLUMNS: `images` a list of relative paths, `reported_at` an aware UTC datetime,
    `reported_by_job` None without a report. Every job must exist (checked before the first batch).
    """
    for job_id in job_ids:
        _check_job(db, job_id)
    for job_id in job_ids:
        stmt = (select(JobStudy.job_id, JobStudy.study_id, Study.uid, JobStudy.status, JobStudy.error,
                       JobStudy.attempts, Model.name.label("model"), Report.text.label("report"),
                       Report.created_at.label("reported_at"), Report.job_id.label("reported_by_job"),
                       Report.confidence, Report.token_logprobs)
                .join(Study, Study.id == JobStudy.study_id).join(Job, Job.id == JobStudy.job_id)
                .join(Model, Model.id == Job.model_id)
                .outerjoin(Report, (Report.study_id == JobStudy.study_id) & (Report.model_id == Job.model_id))
                .where(JobStudy.job_id == job_id).order_by(JobStudy.study_id))
        with db.engine.connect() as conn:
            for part in stream(conn, stmt, size):
                files = _images_of(conn, [(r.study_id, r.job_id) for r in part])
                yield [{**r._asdict(), "reported_at": None if r.reported_at is None else as_utc(r.reported_at),
                        "images": files[(r.study_id, r.job_id)]} for r in part]


def job_studies(db: Database, job_id: int) -> Iterator[tuple[int, str]]:
    """(study id, uid) of every study of the job, in uid order, streamed; the job must exist."""
    _check_job(db, job_id)
    stmt = (select(JobStudy.study_id, Study.uid).join(Study, Study.id == JobStudy.study_id)
            .where(JobStudy.job_id == job_id).order_by(Study.uid, Study.id))
    with db.engine.connect() as conn:
        for part in stream(conn, stmt):
            yield from ((row.study_id, row.uid) for row in part)


def model_reports(db: Database, model_id: int) -> Iterator[tuple[str, int, str, float | None]]:
    """(uid, study id, report, confidence) of every report by the model, in study order, streamed."""
    stmt = (select(Study.uid, Study.id, Report.text, Report.confidence).join(Report, Report.study_id == Study.id)
            .where(Report.model_id == model_id).order_by(Report.study_id))
    with db.engine.connect() as conn:
        for part in stream(conn, stmt):
            yield from ((row.uid, row.id, row.text, row.confidence) for row in part)
