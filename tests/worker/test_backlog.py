"""The backlog job in-process: lost messages, stuck jobs, retryable vs permanent failures, the lock,
the inbox and scoring. (The same function runs as the beat-scheduled Celery task.)"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from cli.main import cli
from db import backlog as db_backlog
from db import jobs
from db.schema import JobStudy, utcnow
from model.imaging.scan import scan_folder
from tests.conftest import EXAMPLES, IU_CSV
from worker import runtime
from worker.backlog import LOCK, run_backlog
from worker.settings import Settings
from worker.submit import SubmitHooks, submit_folder, to_study_in


def record_only(settings: Settings, folder: Path) -> int:
    """A job recorded but never run: what a crashed submitter or a lost broker leaves behind."""
    db = runtime.database(settings.database_url)
    model_id = runtime.model_id(db, runtime.bundle(str(settings.model)))
    return jobs.record_job(db, source=str(folder), model_id=model_id, group_by="auto", batch_size=2, settings={},
                           studies=[to_study_in(s) for s in scan_folder(folder)]).job_id


def statuses(settings: Settings, job_id: int) -> dict[str, int]:
    return jobs.count_by_status(runtime.database(settings.database_url), job_id)


def age(settings: Settings, job_id: int, status: str, hours: float) -> None:
    with runtime.database(settings.database_url).session() as s:
        s.execute(update(JobStudy).where(JobStudy.job_id == job_id).values(
            status=status, updated_at=utcnow() - timedelta(hours=hours)))


def test_pending_and_lost_work_is_done_by_the_backlog(db_url: str, tiny_model: Path, iu_folder: Path) -> None:
    settings = Settings(database_url=db_url, model=str(tiny_model), stuck_after=3600)
    job = record_only(settings, iu_folder)
    assert statuses(settings, job) == {"pending": 4}
    dry = run_backlog(settings, dry_run=True)
    assert (dry.pending, dry.requeued) == (4, {job: 4}) and statuses(settings, job) == {"pending": 4}
    run = run_backlog(settings)
    assert run.requeued == {job: 4} and statuses(settings, job) == {"done": 4}
    assert run_backlog(settings).requeued == {}  # nothing left


@pytest.mark.parametrize("status", ["queued", "running"])
def test_studies_stuck_past_the_timeout_are_redone(status: str, sqlite_url: str, tiny_model: Path,
                                                   iu_folder: Path) -> None:
    settings = Settings(database_url=sqlite_url, model=str(tiny_model), stuck_after=3600)
    job = record_only(settings, iu_folder)
    age(settings, job, status, hours=0.5)  # recent: a worker may still be on it
    assert run_backlog(settings).requeued == {}
    age(settings, job, status, hours=2)  # the message or the worker was lost
    run = run_backlog(settings)
    assert run.stuck == 4 and statuses(settings, job) == {"done": 4}


def test_transient_failures_are_retried_permanent_ones_are_not(sqlite_url: str, tiny_model: Path,
                                                                iu_folder: Path, tmp_path: Path) -> None:
    settings = Settings(database_url=sqlite_url, model=str(tiny_model), max_attempts=3)
    (iu_folder / "empty.png").write_bytes(b"")
    flaky = iu_folder / "CXR25_IM-1024-2001.png"
    share = iu_folder / ".share"  # hidden: not scanned itself
    share.mkdir()
    kept = share / "kept.png"
    shutil.move(flaky, kept)
    flaky.symlink_to(kept)  # scanned and hashed through the link ...

    def network_share_hiccup(_: int) -> None:
        kept.rename(tmp_path / "away.png")  # ... then its target is gone when the worker reads it

    first = submit_folder(settings, iu_folder, hooks=SubmitHooks(start=network_share_hiccup))
    reasons = {f.uid: f.reason for f in first.summary.failures}
    assert reasons["25"].startswith("CXR25_IM-1024-2001.png: cannot read file")
    assert reasons["empty.png"] == "empty.png: empty file (0 bytes)"
    with runtime.database(sqlite_url).session() as s:
        retryable = dict(s.execute(select(JobStudy.error, JobStudy.retryable).where(JobStudy.status == "failed")).all())
    assert retryable == {reasons["25"]: True, reasons["empty.png"]: False}

    (tmp_path / "away.png").rename(kept)  # the share is back
    run = run_backlog(settings)
    assert (run.retry, run.requeued) == (1, {first.job_id: 1})
    assert statuses(settings, first.job_id) == {"done": 4, "failed": 1}  # the empty file stays failed


def test_retries_stop_at_the_attempt_limit(sqlite_url: str, tiny_model: Path, iu_folder: Path) -> None:
    settings = Settings(database_url=sqlite_url, model=str(tiny_model), max_attempts=2)
    job = record_only(settings, iu_folder)
    with runtime.database(sqlite_url).session() as s:
        s.execute(update(JobStudy).where(JobStudy.job_id == job).values(
            status="failed", retryable=True, attempts=2, error="x: cannot read file: I/O error"))
    run = run_backlog(settings)
    assert (run.retry, run.exhausted, run.requeued) == (0, 4, {})


def test_a_second_run_is_locked_out(sqlite_url: str, tiny_model: Path, iu_folder: Path) -> None:
    settings = Settings(database_url=sqlite_url, model=str(tiny_model))
    job = record_only(settings, iu_folder)
    db = runtime.database(sqlite_url)
    assert db_backlog.acquire(db, LOCK, ttl=timedelta(hours=1), holder="the other run")
    run = run_backlog(settings)
    assert run.locked_out and statuses(settings, job) == {"pending": 4}
    db_backlog.release(db, LOCK, holder="the other run")
    assert run_backlog(settings).requeued == {job: 4}


def test_inbox_files_are_submitted_and_new_reports_scored(sqlite_url: str, tiny_model: Path,
                                                           iu_folder: Path) -> None:
    from worker.evaluate import import_iu

    settings = Settings(database_url=sqlite_url, model=str(tiny_model), inbox=str(iu_folder))
    import_iu(settings, IU_CSV / "indiana_reports.csv", None)
    dry = run_backlog(settings, dry_run=True)
    assert (dry.inbox, dry.to_score, dry.inbox_job) == (str(iu_folder), [], None)
    run = run_backlog(settings)
    assert run.inbox_job is not None and run.inbox_studies == 4
    assert statuses(settings, run.inbox_job) == {"done": 4} and len(run.scored) == 1
    again = run_backlog(settings)  # same inbox, nothing new: no new job, nothing to score
    assert (again.inbox_job, again.scored) == (None, [])
    shutil.copy(EXAMPLES / "CXR303_IM-1404-1001.png", iu_folder)
    third = run_backlog(settings)
    assert third.inbox_job is not None and third.inbox_job != run.inbox_job and len(third.scored) == 1
    # A job whose reports came after the last scoring (here: a submission outside the backlog) is scored by
    # the next run, and --dry-run says so (it used to leave the scoring out).
    from worker.submit import submit_folder

    other = iu_folder.parent / "other"
    other.mkdir()
    shutil.copy(EXAMPLES / "CXR54_IM-2145-1001.png", other)
    job = submit_folder(settings.replace(inbox=None), other).job_id
    env = {"XRQ_DATABASE_URL": sqlite_url, "XRQ_MODEL": str(tiny_model), "XRQ_INBOX": str(iu_folder)}
    dry_cli = CliRunner().invoke(cli, ["backlog", "--dry-run"], env=env)
    assert dry_cli.output.splitlines()[1:] == [f"  would submit new files from the inbox {iu_folder}",
                                               f"  would score job(s) {job} (new reports with ground truth)"]
    assert run_backlog(settings, dry_run=True).to_score == [job] and len(run_backlog(settings).scored) == 1


def test_cli_backlog(sqlite_url: str, tiny_model: Path, iu_folder: Path) -> None:
    settings = Settings(database_url=sqlite_url, model=str(tiny_model))
    job = record_only(settings, iu_folder)
    env = {"XRQ_DATABASE_URL": sqlite_url, "XRQ_MODEL": str(tiny_model)}
    dry = CliRunner().invoke(cli, ["backlog", "--dry-run"], env=env)
    assert dry.exit_code == 0
    assert dry.output.splitlines() == [
        "Backlog: 4 pending, 0 stuck, 0 to retry (0 failed for good after 3 attempts).",
        f"  job {job}: would queue 4 studies"]
    done = json.loads(CliRunner().invoke(cli, ["backlog", "--json"], env=env).output)
    assert done["requeued"] == {str(job): 4} and done["locked_out"] is False


def test_beat_runs_the_backlog_at_the_configured_time() -> None:
    from worker.app import make_app
    from worker.tasks import BACKLOG_TASK

    app = make_app(Settings(broker_url="redis://127.0.0.1:6379/0", backlog_cron="30 3 * * *"))
    entry = app.conf.beat_schedule["backlog"]
    assert entry["task"] == BACKLOG_TASK
    assert entry["schedule"].hour == {3} and entry["schedule"].minute == {30}
    assert app.conf.task_routes[BACKLOG_TASK] == {"queue": "cpu"}
    default = make_app(Settings(broker_url="redis://127.0.0.1:6379/0")).conf.beat_schedule["backlog"]
    assert default["schedule"].hour == {2} and default["schedule"].minute == {0}


def test_one_jobs_trouble_does_not_stop_the_others(sqlite_url: str, tiny_model: Path, iu_folder: Path,
                                                   tmp_path: Path) -> None:
    """A job whose model has vanished from this host comes first; the next job is still done."""
    from model.network.bundle import build
    from model.network.store import save
    gone = save(build("tiny", seed=2), tmp_path / "gone-model")
    broken = record_only(Settings(database_url=sqlite_url, model=str(gone)), iu_folder)
    runtime.clear()
    shutil.rmtree(gone)
    other = tmp_path / "other"
    shutil.copytree(iu_folder, other)
    settings = Settings(database_url=sqlite_url, model=str(tiny_model))
    fine = record_only(settings, other)
    run = run_backlog(settings)
    assert statuses(settings, fine) == {"done": 4}
    assert statuses(settings, broken) == {"failed": 4} and len(run.errors) == 1
    assert "no copy of model gone-model" in run.errors[0]
