"""The nightly backlog job: nothing submitted is ever silently left undone.

It hands again to its runner (the broker's workers, or this process's pipeline) every study that is
- pending: recorded but never queued (the broker was down, the submitting process died);
- stuck: queued or running for longer than XRQ_STUCK_AFTER (a lost message, a lost worker);
- failed for a transient reason (an I/O error, the database gone) with attempts below XRQ_MAX_ATTEMPTS;
then submits new files from the inbox folder (XRQ_INBOX) and scores jobs whose new reports have
ground truth. A database lock keeps two runs (two beat processes, a manual run) from overlapping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from db import backlog as db_backlog
from worker import runtime
from worker.errors import BrokerUnavailableError, EvaluationInputError, SettingsError
from worker.pipeline import fail_batch
from worker.runner import LocalRunner, Runner
from worker.settings import Settings

log = logging.getLogger(__name__)
LOCK = "backlog"


@dataclass
class BacklogRun:
    dry_run: bool
    locked_out: bool = False  # another run holds the lock: this one did nothing
    pending: int = 0
    stuck: int = 0
    retry: int = 0
    exhausted: int = 0  # transient failures that used up their attempts: left failed
    requeued: dict[int, int] = field(default_factory=dict)  # job id -> studies queued again (or run here)
    inbox_job: int | None = None
    inbox_studies: int = 0
    scored: list[int] = field(default_factory=list)  # evaluation ids
    to_score: list[int] = field(default_factory=list)  # dry run: jobs whose new reports would be scored
    inbox: str | None = None  # dry run: the inbox folder that would be scanned
    redelivered: int = 0  # failed deliveries (SRs to a PACS) sent this time
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["requeued"] = {str(k): v for k, v in self.requeued.items()}
        return data


def run_backlog(settings: Settings, runner: Runner | None = None, *, dry_run: bool = False,
                score: bool = True) -> BacklogRun:
    """Find and redo what is left; with `dry_run`, only say what would be done (no lock, no writes).

    `runner` does the work (`worker.dispatch.runner_for`); without one and without a broker, this process.
    """
    if runner is None:
        if settings.broker_url and not dry_run:
            raise SettingsError("a broker is configured: pass runner=worker.dispatch.runner_for(settings)")
        runner = LocalRunner(settings)
    db = runtime.database(settings.database_url)
    run = BacklogRun(dry_run=dry_run)
    ttl = timedelta(seconds=max(settings.stuck_after, 3600))
    if not dry_run and not db_backlog.acquire(db, LOCK, ttl=ttl):
        run.locked_out = True
        return run
    stuck_after = timedelta(seconds=settings.stuck_after)
    try:
        if not dry_run:
            found = db_backlog.find_backlog(db, stuck_after=stuck_after, max_attempts=settings.max_attempts)
            run.pending, run.stuck, run.retry, run.exhausted = (
                _count(found.pending), _count(found.stuck), _count(found.retry), found.exhausted)
            _redo(settings, runner, found.by_job(), run, keep_lock=lambda: db_backlog.extend(db, LOCK, ttl=ttl))
            db_backlog.extend(db, LOCK, ttl=ttl)
            _inbox(settings, runner, run)
            db_backlog.extend(db, LOCK, ttl=ttl)
            _deliveries(settings, run)
            if score:
                _score(settings, run)
        else:  # what the real run would do, each step named (the inbox is only scanned by a real run)
            counts = db_backlog.count_backlog(db, stuck_after=stuck_after, max_attempts=settings.max_attempts)
            run.pending, run.stuck, run.retry, run.exhausted = (
                sum(counts.pending.values()), sum(counts.stuck.values()), sum(counts.retry.values()), counts.exhausted)
            run.requeued = counts.by_job()
            run.inbox = settings.inbox if settings.inbox and settings.model else None
            if score:
                run.to_score = list(db_backlog.jobs_to_score(db))
    finally:
        if not dry_run:
            db_backlog.release(db, LOCK)
    return run


def _deliveries(settings: Settings, run: BacklogRun) -> None:
    """Deliveries that failed (a PACS that was down) are sent again."""
    from worker.push import retry_failed

    for result in retry_failed(settings):
        run.redelivered += result.sent
        run.errors += [f"delivery to {result.destination}: {e}" for e in result.errors]


def _count(groups: dict[int, list[int]]) -> int:
    return sum(len(ids) for ids in groups.values())


def _redo(settings: Settings, runner: Runner, by_job: dict[int, list[int]], run: BacklogRun,
          keep_lock: Callable[[], None]) -> None:
    """Hand each job's studies to the runner again; one job's trouble never stops the others.

    Run here, a batch that breaks is failed retryably by the pipeline and the rest goes on; a job
    that cannot run at all (its model is not on this host) fails retryably, for a later run."""
    db = runtime.database(settings.database_url)
    for job_id, study_ids in by_job.items():
        keep_lock()
        db_backlog.reopen(db, job_id, study_ids)
        try:
            result = runner.run(job_id, study_ids)
        except BrokerUnavailableError as exc:  # the rest stays pending for the next run
            run.errors.append(str(exc))
            log.warning("backlog: %s", exc)
            return
        except Exception as exc:  # the job cannot run at all here (its model is missing): the next goes on
            fail_batch(db, job_id, study_ids, "loading the model", exc)
            run.errors.append(f"job {job_id}: {exc}")
            continue
        run.errors.extend(f"job {job_id}: {e.stage}: {e.reason}" for e in result.errors)
        run.requeued[job_id] = len(study_ids)


def _inbox(settings: Settings, runner: Runner, run: BacklogRun) -> None:
    if not settings.inbox:
        return
    if not settings.model:
        run.errors.append("XRQ_INBOX is set but XRQ_MODEL is not: the inbox was not scanned")
        return
    from worker.submit import submit_folder

    try:
        result = submit_folder(settings, settings.inbox, runner=runner)
    except (OSError, BrokerUnavailableError) as exc:
        run.errors.append(f"inbox {settings.inbox}: {exc}")
        return
    if result.created:
        run.inbox_job, run.inbox_studies = result.job_id, result.summary.total


def _score(settings: Settings, run: BacklogRun) -> None:
    from worker.evaluate import run_evaluation

    for job_id in db_backlog.jobs_to_score(runtime.database(settings.database_url)):
        try:
            run.scored.append(run_evaluation(settings, job_id=job_id).evaluation_id)
        except EvaluationInputError as exc:  # e.g. its studies have truth, but not findings text
            log.info("backlog: job %s not scored: %s", job_id, exc)
