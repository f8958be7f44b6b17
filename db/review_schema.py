"""The tables of the review application: accounts, reviews and their versions, reader studies.

A report (the model's draft) is never changed. Each save, sign-off, rejection or addendum is a row of
`review_versions` (text, author, time, action); `reviews` holds one row per reviewed report, the head
of its versions (state, final text, who signed and when, the version number), so that the worklist can
filter by state with an index and two reviewers cannot both write version n+1 (optimistic concurrency:
the head moves from n to n+1 only if it is still at n). docs/schema.md documents the columns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql import false

from db.errors import DatabaseError
from db.schema import Base, utcnow

ROLES = ("reviewer", "admin")
STATES = ("draft", "signed", "rejected")  # a report without a review row is a draft
ACTIONS = ("save", "sign", "reject", "addendum")
ERROR_KINDS = ("false finding", "missed finding", "wrong location", "wrong severity", "other")
CHOICES = ("left", "right", "equivalent")


class ReviewError(DatabaseError):
    """Base class of the review application's named errors."""


class AccountError(ReviewError):
    """Raised when a user name is taken, unknown, malformed, or a role or password is not acceptable."""


class ReviewConflictError(ReviewError):
    """Raised when a reviewer submits on top of a version that someone else has already superseded."""

    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


class ReviewRefusedError(ReviewError):
    """Raised for an action the report's state does not allow (saving over a signed report, an empty
    sign-off, a rejection without a reason)."""


class ReaderStudyError(ReviewError):
    """Raised when a reader study cannot be made or answered as asked (unknown name, no common studies,
    a user who is not one of its readers)."""


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Review(Base):
    """The head of a report's versions; absent while nobody has touched the draft."""

    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_state", "state"),)

    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    final_text: Mapped[str | None] = mapped_column(Text)  # the newest signed text
    signed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reject_reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReviewVersion(Base):
    __tablename__ = "review_versions"
    # created_at: the backlog's look for sign-offs whose SR was never sent walks a time window (0013).
    __table_args__ = (UniqueConstraint("report_id", "version"), Index("ix_review_versions_created_at", "created_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"))
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ...: the draft itself is version 0
    action: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)  # a rejection's reason
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReaderStudy(Base):
    __tablename__ = "reader_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    sources: Mapped[list[str]] = mapped_column(JSON)  # the two compared: "job:3", "truth:iu"
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReaderStudyReader(Base):
    __tablename__ = "reader_study_readers"

    reader_study_id: Mapped[int] = mapped_column(ForeignKey("reader_studies.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)


class ReaderCase(Base):
    """One study of a reader study: two reports, already placed left and right (randomised once)."""

    __tablename__ = "reader_cases"
    __table_args__ = (UniqueConstraint("reader_study_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reader_study_id: Mapped[int] = mapped_column(ForeignKey("reader_studies.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # 1..n, the order readers see
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    image_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))  # whose files to show
    left_source: Mapped[str] = mapped_column(String(64))
    left_text: Mapped[str] = mapped_column(Text)
    right_source: Mapped[str] = mapped_column(String(64))
    right_text: Mapped[str] = mapped_column(Text)


class ReaderAnswer(Base):
    __tablename__ = "reader_answers"
    __table_args__ = (UniqueConstraint("case_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("reader_cases.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    preferred: Mapped[str] = mapped_column(String(64))  # a source, or "equivalent"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReaderError(Base):
    __tablename__ = "reader_errors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    answer_id: Mapped[int] = mapped_column(ForeignKey("reader_answers.id"), index=True)
    source: Mapped[str] = mapped_column(String(64))  # which report of the case has the error
    kind: Mapped[str] = mapped_column(String(32))
    significant: Mapped[bool] = mapped_column(Boolean)
