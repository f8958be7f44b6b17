"""Job bookkeeping: idempotent recording, claiming, and storing of results, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db import jobs, queries
from db.engine import Database, open_database
from db.schema import Image, Job, JobStudy, Report, Study


def study(fp: str, uid: str, n: int = 1, error: str | None = None) -> jobs.StudyIn:
    images = [jobs.ImageIn(f"/data/{uid}_{i}.png", f"{uid}_{i}.png", f"{fp}{i}", 10, None) for i in range(n)]
    return jobs.StudyIn(fp, uid, "iu", images, error)


@pytest.fixture
def db(db_url: str) -> Database:
    return open_database(db_url)


def record(db: Database, model_id: int, studies: list[jobs.StudyIn]) -> jobs.JobRecord:
    return jobs.record_job(db, source="/data", model_id=model_id, group_by="auto", batch_size=2,
                           settings={}, studies=studies)


def row_counts(db: Database) -> dict[str, int]:
    with db.session() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0
                for t in (Job, Study, Image, JobStudy, Report)}


def test_same_submission_twice_adds_no_rows(db: Database) -> None:
    model = jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={})
    assert jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={}) == model
    first = record(db, model, [study("a", "1", 2), study("b", "2")])
    assert first.created and len(first.to_run) == 2
    before = row_counts(db)
    second = record(db, model, [study("b", "2"), study("a", "1", 2)])
    assert (second.job_id, second.created, second.to_run) == (first.job_id, False, first.to_run)
    assert row_counts(db) == before == {"jobs": 1, "studies": 2, "images": 3, "job_studies": 2, "reports": 0}


def test_scan_time_errors_fail_the_study_at_once(db: Database) -> None:
    model = jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={})
    rec = record(db, model, [study("a", "1"), study("z", "bad.png", error="bad.png: empty file (0 bytes)")])
    summary = queries.job_summary(db, rec.job_id)
    assert summary.counts == {"pending": 1, "failed": 1}
    assert [f.reason for f in summary.failures] == ["bad.png: empty file (0 bytes)"]


def test_claim_and_results_are_idempotent(db: Database) -> None:
    model = jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={})
    rec = record(db, model, [study("a", "1", 2), study("b", "2"), study("c", "3")])
    items = jobs.claim_batch(db, rec.job_id, rec.to_run)
    assert [len(i.images) for i in items] == [2, 1, 1]
    a, b, c = (i.study_id for i in items)
    outcome = jobs.BatchOutcome(reports={a: "report a", b: "report b"}, failures={c: "3_0.png: bad"})
    jobs.record_results(db, job_id=rec.job_id, model_id=model, outcome=outcome, settings={"num_beams": 1})
    # The same message delivered again: nothing left to claim, storing again changes nothing.
    assert jobs.claim_batch(db, rec.job_id, rec.to_run) == []
    jobs.record_results(db, job_id=rec.job_id, model_id=model,
                        outcome=jobs.BatchOutcome(reports={a: "another text"}), settings={})
    assert jobs.count_by_status(db, rec.job_id) == {"done": 2, "failed": 1}
    texts = {r.uid: r.text for r in queries.reports(db, job_id=rec.job_id)}
    assert texts == {"1": "report a", "2": "report b"}


def test_studies_reported_by_the_model_are_skipped_in_a_new_job(db: Database) -> None:
    model = jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={})
    other = jobs.upsert_model(db, name="n", fingerprint="e" * 64, path=None, meta={})
    first = record(db, model, [study("a", "1")])
    jobs.record_results(db, job_id=first.job_id, model_id=model,
                        outcome=jobs.BatchOutcome(reports={first.to_run[0]: "x"}), settings={})
    second = record(db, model, [study("a", "1"), study("b", "2")])
    assert second.created and jobs.count_by_status(db, second.job_id) == {"skipped": 1, "pending": 1}
    # The skipped study's earlier report belongs to the new job's listing too.
    assert [r.uid for r in queries.reports(db, job_id=second.job_id)] == ["1"]
    # Another model has reported nothing: everything is to do.
    third = record(db, other, [study("a", "1")])
    assert jobs.count_by_status(db, third.job_id) == {"pending": 1}


def test_a_study_claimed_twice_at_once_is_reported_once(db: Database) -> None:
    """Two workers got the same batch (redelivery): both generate, one report is kept."""
    model = jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={})
    rec = record(db, model, [study("a", "1")])
    sid = rec.to_run[0]
    assert len(jobs.claim_batch(db, rec.job_id, [sid])) == 1
    assert len(jobs.claim_batch(db, rec.job_id, [sid])) == 1  # still running: a redelivery may take it
    for text in ("first", "second"):
        jobs.record_results(db, job_id=rec.job_id, model_id=model,
                            outcome=jobs.BatchOutcome(reports={sid: text}), settings={})
    assert [r.text for r in queries.reports(db)] == ["first"]
    with db.session() as s:
        assert s.scalar(select(JobStudy.attempts)) == 2


def test_the_same_submission_recorded_at_once_by_several_processes_is_one_job(db: Database) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    model = jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={})
    studies = [study(f"s{i}", str(i), 2) for i in range(50)]
    start = Barrier(4)

    def submit(_: int) -> jobs.JobRecord:
        start.wait()
        return record(db, model, studies)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(submit, range(4)))
    assert len({r.job_id for r in results}) == 1 and sum(r.created for r in results) == 1
    assert row_counts(db) == {"jobs": 1, "studies": 50, "images": 100, "job_studies": 50, "reports": 0}


def test_a_late_failure_never_undoes_a_report(db: Database) -> None:
    """Two deliveries of one batch: the first stored the report, the second then fails to decode."""
    model = jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={})
    rec = record(db, model, [study("a", "1")])
    sid = rec.to_run[0]
    jobs.claim_batch(db, rec.job_id, [sid])
    jobs.record_results(db, job_id=rec.job_id, model_id=model, settings={},
                        outcome=jobs.BatchOutcome(reports={sid: "ok"}))
    jobs.record_results(db, job_id=rec.job_id, model_id=model, settings={},
                        outcome=jobs.BatchOutcome(failures={sid: "1_0.png: cannot read file"}))
    assert jobs.count_by_status(db, rec.job_id) == {"done": 1}


def test_a_study_that_keeps_killing_its_worker_is_given_up(db: Database) -> None:
    model = jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={})
    rec = record(db, model, [study("a", "1"), study("b", "2")])
    a, b = rec.to_run
    for _ in range(3):  # three deliveries of a, each ending with the worker killed (no results stored)
        assert [i.study_id for i in jobs.claim_batch(db, rec.job_id, [a], max_attempts=3)] == [a]
    assert jobs.claim_batch(db, rec.job_id, [a, b], max_attempts=3)[0].study_id == b
    failure = queries.job_summary(db, rec.job_id).failures
    assert [f.study_id for f in failure] == [a] and failure[0].reason.startswith("gave up after 3 attempts")


def test_a_redelivered_batch_whose_report_this_job_wrote_is_done_not_skipped(db: Database) -> None:
    model = jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={})
    rec = record(db, model, [study("a", "1")])
    sid = rec.to_run[0]
    jobs.claim_batch(db, rec.job_id, [sid])
    with db.session() as s:  # the report is in, the worker died before marking the study done
        s.add(Report(study_id=sid, model_id=model, job_id=rec.job_id, text="x", settings={}))
    assert jobs.claim_batch(db, rec.job_id, [sid]) == []
    assert jobs.count_by_status(db, rec.job_id) == {"done": 1}


def test_a_study_reported_by_another_job_meanwhile_is_skipped_not_done(db: Database) -> None:
    """Two jobs (two submissions at once) both claim a study before either has written its report: the
    second to write keeps the first's report and marks the study skipped, with reported_by_job the first."""
    model = jobs.upsert_model(db, name="m", fingerprint="f" * 64, path=None, meta={})
    first = record(db, model, [study("a", "1")])
    second = jobs.record_job(db, source="/elsewhere", model_id=model, group_by="auto", batch_size=2, settings={},
                             studies=[study("a", "1"), study("b", "2")])
    shared = first.to_run[0]
    assert shared in second.to_run
    claimed = [jobs.claim_batch(db, job, [shared]) for job in (first.job_id, second.job_id)]
    assert all(len(c) == 1 for c in claimed)  # both run it: neither has written yet
    for job in (first.job_id, second.job_id):
        jobs.record_results(db, job_id=job, model_id=model, outcome=jobs.BatchOutcome(reports={shared: f"by {job}"}),
                            settings={})
    rows = {r["job_id"]: r for batch in queries.export_batches(db, [first.job_id, second.job_id]) for r in batch
            if r["study_id"] == shared}
    assert (rows[first.job_id]["status"], rows[first.job_id]["reported_by_job"]) == ("done", first.job_id)
    assert (rows[second.job_id]["status"], rows[second.job_id]["reported_by_job"]) == ("skipped", first.job_id)
    assert rows[second.job_id]["report"] == f"by {first.job_id}"
