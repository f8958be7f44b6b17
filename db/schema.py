"""The tables. Named plainly so that people can query them by hand; docs/schema.md documents each column.

Identity is content, not paths: a study is its fingerprint (a hash over its images' sha256), a model is
the hash of its weights, and a report is unique per (study, model). That is what makes a second submit
of the same folder, or a message delivered twice, harmless.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import false, text


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(Text)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    group_by: Mapped[str] = mapped_column(String(16))
    batch_size: Mapped[int] = mapped_column(Integer)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    uid: Mapped[str] = mapped_column(String(255), index=True)
    grouping: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Image(Base):
    """A file of a study as one job found it: the same content submitted from another folder is the
    same study, but its own files (workers read the files of the job they work for, nothing else)."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("job_id", "study_id", "relpath"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    relpath: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class JobStudy(Base):
    """A study's progress within a job: pending -> queued -> running -> done | failed, or skipped."""

    __tablename__ = "job_studies"
    # (job, status): a job's counts; (status, updated_at): failures and the backlog's selection (0006).
    # The failed ones in study order: `xrq reports --status failed` (a partial index, small).
    __table_args__ = (Index("ix_job_studies_status", "job_id", "status"),
                      Index("ix_job_studies_status_updated", "status", "updated_at"),
                      Index("ix_job_studies_failed", "study_id", "job_id", sqlite_where=text("status = 'failed'"),
                            postgresql_where=text("status = 'failed'")),
                      # Every column the backlog reads, for the rows it can want (0014; db/backlog.py).
                      Index("ix_job_studies_backlog", "status", "job_id", "retryable", "attempts", "updated_at",
                            "study_id", sqlite_where=text("status <> 'done'"),
                            postgresql_where=text("status <> 'done'")))

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), primary_key=True, index=True)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retryable: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Report(Base):
    __tablename__ = "reports"
    # Each listing filter has its index (migration 0006; on PostgreSQL also a trigram index on lower(text)).
    # ix_reports_confidence (migration 0008) serves --min/--max-confidence and --order-by confidence
    # (confidence, then the listing's cursor order), so the least sure come first without a sort.
    # The review's worklist pages by (created_at, id), alone or after a job or model (migration 0007); the
    # first also serves --since/--until (0012 dropped a created_at index of its own). The trigram index
    # exists on PostgreSQL only and is the migrations' alone (tests/db/test_schema_drift.py).
    __table_args__ = (UniqueConstraint("study_id", "model_id"), Index("ix_reports_model_study", "model_id", "study_id"),
                      Index("ix_reports_confidence", "confidence", "study_id", "model_id"),
                      Index("ix_reports_worklist", "created_at", "id"),
                      Index("ix_reports_worklist_job", "job_id", "created_at", "id"),
                      Index("ix_reports_worklist_model", "model_id", "created_at", "id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # How sure the model was: exp(mean token log-probability), and the tokens with their natural-log
    # probabilities (the ids replay the report for `xrq show --attention`). NULL for older reports.
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    token_logprobs: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    token_ids: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    # The report's sections when the model writes section markers (`--text both`); `text` is the whole.
    findings: Mapped[str | None] = mapped_column(Text, nullable=True)
    impression: Mapped[str | None] = mapped_column(Text, nullable=True)


STATUSES = ("pending", "queued", "running", "done", "failed", "skipped")
OPEN = ("pending", "queued", "running")  # a study still to be done


class Truth(Base):
    """Ground truth: the reference report of a study in a collection (IU, or any imported CSV)."""

    __tablename__ = "truth"
    __table_args__ = (UniqueConstraint("collection", "uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection: Mapped[str] = mapped_column(String(64))
    uid: Mapped[str] = mapped_column(String(255), index=True)
    findings: Mapped[str] = mapped_column(Text, default="")
    impression: Mapped[str] = mapped_column(Text, default="")
    mesh: Mapped[str] = mapped_column(Text, default="")
    indication: Mapped[str] = mapped_column(Text, default="")
    comparison: Mapped[str] = mapped_column(Text, default="")
    split: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TruthImage(Base):
    """The image files of a ground-truth study, with their projection (Frontal, Lateral)."""

    __tablename__ = "truth_images"
    __table_args__ = (UniqueConstraint("collection", "filename"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection: Mapped[str] = mapped_column(String(64))
    uid: Mapped[str] = mapped_column(String(255), index=True)
    filename: Mapped[str] = mapped_column(Text)
    projection: Mapped[str] = mapped_column(String(32), default="")


class Evaluation(Base):
    """One scoring run: what was scored against which ground truth, and the corpus scores."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # job | model | predictions | baseline
    source_ref: Mapped[str] = mapped_column(Text)  # the job id, model name, file, or baseline name
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    collection: Mapped[str] = mapped_column(String(64))
    split: Mapped[str | None] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(String(16))  # findings | impression | both
    n_studies: Mapped[int] = mapped_column(Integer)
    bleu_1: Mapped[float] = mapped_column()
    bleu_2: Mapped[float] = mapped_column()
    bleu_3: Mapped[float] = mapped_column()
    bleu_4: Mapped[float] = mapped_column()
    meteor: Mapped[float | None] = mapped_column()
    rouge_l: Mapped[float] = mapped_column()
    cider: Mapped[float] = mapped_column()
    distinct_reports: Mapped[int] = mapped_column(Integer)
    clinical_f1_micro: Mapped[float | None] = mapped_column()
    clinical_f1_macro: Mapped[float | None] = mapped_column()
    normal_accuracy: Mapped[float | None] = mapped_column()
    scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # everything, incl. NLTK BLEU
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvaluationScore(Base):
    """Per-study scores of an evaluation, with the exact (normalised) texts that were compared."""

    __tablename__ = "evaluation_scores"

    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), primary_key=True)
    uid: Mapped[str] = mapped_column(String(255), primary_key=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"))
    hypothesis: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(Text)
    bleu_1: Mapped[float | None] = mapped_column()
    bleu_4: Mapped[float | None] = mapped_column()
    meteor: Mapped[float | None] = mapped_column()
    rouge_l: Mapped[float | None] = mapped_column()
    cider: Mapped[float | None] = mapped_column()


class Lock(Base):
    """A named lock with an expiry, so that two backlog runs never overlap (on any database)."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Meta(Base):
    """Facts about the database itself: its deployment id (made at creation, migration 0010) and the last
    message of another deployment a worker of this one took (`xrq health` says so)."""

    __tablename__ = "xrq_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
