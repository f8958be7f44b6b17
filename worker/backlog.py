"""The nightly backlog job: nothing submitted is ever silently left undone.

It queues again (or, with no broker, runs here) every study that is
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
from db import jobs
from worker import runtime
from worker.errors import BrokerUnavailableError, EvaluationInputError
from worker.pipeline import batches
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
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["requeued"] = {str(k): v for k, v in self.requeued.items()}
        return data


def run_backlog(settings: Settings, *, dry_run: bool = False, score: bool = True) -> BacklogRun:
    """Find and redo what is left; with `dry_run`, only say what would be done (no lock, no writes)."""
    db = runtime.database(settings.database_url)
    run = BacklogRun(dry_run=dry_run)
    ttl = timedelta(seconds=max(settings.stuck_after, 3600))
    if not dry_run and not db_backlog.acquire(db, LOCK, ttl=ttl):
        run.locked_out = True
        return run
    try:
        found = db_backlog.find_backlog(db, stuck_after=timedelta(seconds=settings.stuck_after),
                                        max_attempts=settings.max_attempts)
        run.pending, run.stuck, run.retry, run.exhausted = (
            _count(found.pending), _count(found.stuck), _count(found.retry), found.exhausted)
        if not dry_run:
            _redo(settings, found.by_job(), run, keep_lock=lambda: db_backlog.extend(db, LOCK, ttl=ttl))
            db_backlog.extend(db, LOCK, ttl=ttl)
            _inbox(settings, run)
            db_backlog.extend(db, LOCK, ttl=ttl)
            if score:
                _score(settings, run)
        else:
            run.requeued = {job: len(ids) for job, ids in found.by_job().items()}
    finally:
        if not dry_run:
            db_backlog.release(db, LOCK)
    return run


def _count(groups: dict[int, list[int]]) -> int:
    return sum(len(ids) for ids in groups.values())


def _redo(settings: Settings, by_job: dict[int, list[int]], run: BacklogRun,
          keep_lock: Callable[[], None]) -> None:
    """Queue each job's studies again (or run them here); one job's trouble never stops the others."""
    db = runtime.database(settings.database_url)
    for job_id, study_ids in by_job.items():
        keep_lock()
        db_backlog.reopen(db, job_id, study_ids)
        if settings.broker_url:
            from worker.enqueue import enqueue_job

            try:
                enqueue_job(settings, db, job_id, study_ids)
            except BrokerUnavailableError as exc:  # the rest stays pending for the next run
                run.errors.append(str(exc))
                log.warning("backlog: %s", exc)
                return
        else:
            _run_here(settings, job_id, study_ids, run)
        run.requeued[job_id] = len(study_ids)


def _run_here(settings: Settings, job_id: int, study_ids: list[int], run: BacklogRun) -> None:
    """No broker: run the batches in this process, failing a batch that breaks (retryably) and going on."""
    from worker.tasks import run_batch

    db = runtime.database(settings.database_url)
    for batch in batches(study_ids, jobs.get_job(db, job_id).batch_size):
        try:
            run_batch(settings, job_id, batch)
        except Exception as exc:  # a missing model, a worker error: recorded, and the next job goes on
            reason = f"worker error: {type(exc).__name__}: {exc}"
            log.warning("backlog: job %s: %s", job_id, reason)
            # The job's other batches would meet the same trouble: they fail with it too (retryably,
            # so a later run tries again once the model is back or the bug fixed).
            jobs.fail_open(db, job_id, study_ids, reason)
            run.errors.append(f"job {job_id}: {exc}")
            return


def _inbox(settings: Settings, run: BacklogRun) -> None:
    if not settings.inbox:
        return
    if not settings.model:
        run.errors.append("XRQ_INBOX is set but XRQ_MODEL is not: the inbox was not scanned")
        return
    from worker.submit import submit_folder

    try:
        result = submit_folder(settings, settings.inbox)
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
