"""What the backlog finds (pending, stuck, retryable) and the lock, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from db import backlog, jobs
from db.engine import Database, open_database
from db.schema import JobStudy, utcnow
from tests.db.test_jobs import record, study


@pytest.fixture
def db(db_url: str) -> Database:
    return open_database(db_url)


def set_rows(db: Database, study_id: int, **values: object) -> None:
    with db.session() as s:
        s.execute(update(JobStudy).where(JobStudy.study_id == study_id).values(**values))


def test_backlog_sorts_studies_by_why_they_need_work(db: Database) -> None:
    model = jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={})
    rec = record(db, model, [study(c, c) for c in "abcdefg"])
    a, b, c, d, e, f, g = rec.to_run
    old = utcnow() - timedelta(hours=5)
    set_rows(db, b, status="queued", updated_at=old)  # a lost message
    set_rows(db, c, status="running", updated_at=old)  # a lost worker
    set_rows(db, d, status="queued")  # queued just now: not stuck
    set_rows(db, e, status="failed", retryable=True, attempts=1, error="x: cannot read file")
    set_rows(db, f, status="failed", retryable=True, attempts=3, error="x: cannot read file")
    set_rows(db, g, status="failed", retryable=False, attempts=1, error="x: empty file (0 bytes)")
    found = backlog.find_backlog(db, stuck_after=timedelta(hours=2), max_attempts=3)
    job = rec.job_id
    assert found.pending == {job: [a]}
    assert found.stuck == {job: [b, c]}
    assert found.retry == {job: [e]}
    assert found.exhausted == 1
    assert found.by_job() == {job: [a, b, c, e]}
    counts = backlog.count_backlog(db, stuck_after=timedelta(hours=2), max_attempts=3)  # what a dry run says
    assert (counts.pending, counts.stuck, counts.retry, counts.exhausted) == ({job: 1}, {job: 2}, {job: 1}, 1)
    assert counts.by_job() == {job: 4}
    backlog.reopen(db, job, [a, b, c, e])
    assert jobs.count_by_status(db, job) == {"pending": 4, "queued": 1, "failed": 2}


def test_the_lock_keeps_a_second_run_out_until_released_or_expired(db: Database) -> None:
    assert backlog.acquire(db, "backlog", ttl=timedelta(hours=1), holder="one")
    assert not backlog.acquire(db, "backlog", ttl=timedelta(hours=1), holder="two")
    backlog.release(db, "backlog", holder="two")  # not the holder: no effect
    assert not backlog.acquire(db, "backlog", ttl=timedelta(hours=1), holder="two")
    backlog.release(db, "backlog", holder="one")
    assert backlog.acquire(db, "backlog", ttl=timedelta(seconds=-1), holder="crashed")  # expires at once
    assert backlog.acquire(db, "backlog", ttl=timedelta(hours=1), holder="three")


def test_jobs_with_unscored_reports_that_have_truth(db: Database) -> None:
    from db.evaluations import EvaluationIn, store_evaluation
    from db.truth import TruthIn, import_truth

    model = jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={})
    rec = record(db, model, [study("a", "1"), study("b", "2")])
    jobs.record_results(db, job_id=rec.job_id, model_id=model, settings={},
                        outcome=jobs.BatchOutcome(reports=dict.fromkeys(rec.to_run, "the heart is normal .")))
    assert backlog.jobs_to_score(db) == []  # no ground truth yet
    import_truth(db, "iu", [TruthIn(uid="1", findings="The heart is normal.")])
    assert backlog.jobs_to_score(db) == [rec.job_id]
    store_evaluation(db, EvaluationIn(
        source="job", source_ref=str(rec.job_id), collection="iu", split=None, text="findings",
        corpus=dict.fromkeys(("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"), 1.0),
        distinct_reports=1, scores={}, settings={}, per_study={}, references={}, hypotheses={}, job_id=rec.job_id))
    assert backlog.jobs_to_score(db) == []


def test_a_long_run_keeps_its_lock(db: Database) -> None:
    assert backlog.acquire(db, "backlog", ttl=timedelta(seconds=-1), holder="long run")  # about to expire
    backlog.extend(db, "backlog", ttl=timedelta(hours=1), holder="long run")
    assert not backlog.acquire(db, "backlog", ttl=timedelta(hours=1), holder="next run")


def test_a_dry_run_counts_what_a_run_would_find_without_reading_it(db: Database) -> None:
    """Over many jobs (bench/scale_data's year: 1% pending, 1% stuck, 1% retryable), the counts a dry run
    reads are the lengths of what a real run reads, job by job."""
    from bench.scale_data import fill

    fill(db, 3000, job_size=700)
    found = backlog.find_backlog(db, stuck_after=timedelta(hours=1), max_attempts=3)
    counts = backlog.count_backlog(db, stuck_after=timedelta(hours=1), max_attempts=3)
    assert counts.by_job() == {job: len(ids) for job, ids in found.by_job().items()}
    assert len(counts.by_job()) == 5
    for part in ("pending", "stuck", "retry"):
        assert getattr(counts, part) == {job: len(ids) for job, ids in getattr(found, part).items()}
    assert counts.exhausted == found.exhausted
