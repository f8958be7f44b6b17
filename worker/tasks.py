"""The Celery tasks: ids in, one pipeline call, a retry policy. Nothing else.

`generate_batch(job_id, study_ids)` is safe to run twice, at once or one after the other: claiming
skips finished and already-reported studies, and reports are inserted ON CONFLICT DO NOTHING. So a
redelivered message, a duplicate publish, or a retry after a database error leaves one report.

This module must not import `worker.app` at import time (the app imports it to register the tasks).
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import exc as sa_exc

from db import jobs
from db.engine import Database
from db.errors import DatabaseUnavailableError
from db.schema import Job, Model
from worker import runtime
from worker.errors import ModelMismatchError
from worker.pipeline import process_batch

if TYPE_CHECKING:
    from celery import Task

    from model.bundle import Bundle
    from worker.app import XrqCelery
    from worker.settings import Settings

log = logging.getLogger(__name__)

GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
GENERATE_TASK = "xrq.generate_batch"
BACKLOG_TASK = "xrq.backlog"
EVALUATE_TASK = "xrq.evaluate"

# Errors that go away by themselves: the server restarting, a dropped connection, a failover, a
# serialization conflict. Everything else is a bug or bad data and is not retried.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, DatabaseUnavailableError,
)


def backoff(retries: int, maximum: int) -> float:
    """Exponential backoff with jitter: about 1, 2, 4 ... seconds, never more than `maximum`.

    Half the wait is fixed and half random, so workers that failed together don't retry together,
    and no retry comes at once (a restarting server needs a moment).
    """
    base = float(min(maximum, 2**retries))
    return base / 2 + random.uniform(0, base / 2)


def generate_batch(task: Task, job_id: int, study_ids: list[int]) -> dict[str, Any]:
    """Report a batch of a job's studies with the job's model, and store the results."""
    app = cast("XrqCelery", task.app)
    settings, options = app.xrq_settings, app.xrq_options
    _ensure_process_setup()
    try:
        return run_batch(settings, job_id, study_ids)
    except TRANSIENT_DB_ERRORS as exc:
        # The database is the truth and it is away: nothing was half-written (one transaction per
        # step), so the same message later does exactly what this one would have done.
        log.warning("database error in job %s's batch, retry %d: %s", job_id, task.request.retries + 1, exc)
        raise task.retry(exc=exc, countdown=backoff(task.request.retries, options.retry_backoff_max),
                         max_retries=options.task_max_retries) from exc
    except ModelMismatchError as exc:
        if task.request.retries < options.task_max_retries:
            # Another worker may hold the right model: put the batch back on the queue.
            log.error("%s; handing the batch back to the queue", exc)
            raise task.retry(exc=exc, countdown=backoff(task.request.retries, options.retry_backoff_max),
                             max_retries=options.task_max_retries) from exc
        _fail_quietly(settings.database_url, job_id, study_ids, str(exc))
        raise
    except Exception as exc:
        # A bug or an unexpected failure in generation: the studies fail with the reason, visible
        # in `xrq status`, instead of staying 'running' for ever.
        log.exception("batch of job %s failed", job_id)
        _fail_quietly(settings.database_url, job_id, study_ids, f"worker error: {type(exc).__name__}: {exc}")
        raise


def run_batch(settings: Settings, job_id: int, study_ids: list[int]) -> dict[str, Any]:
    """The task's body without Celery: find the job's model, process the batch, say what happened."""
    db = runtime.database(settings.database_url)
    job, model_row = _job_and_model(db, job_id)
    bundle = _bundle_for(settings.model, settings.device, model_row)
    prepared = process_batch(
        db, bundle, model_row.id, job_id, study_ids, generation=runtime.job_generation(job.settings),
        max_pixels=settings.max_pixels, decode_threads=settings.decode_threads, max_attempts=settings.max_attempts,
    )
    outcome = prepared.outcome
    return {"job_id": job_id, "claimed": len(prepared.items), "reported": len(outcome.reports),
            "failed": len(outcome.failures), **prepared.timings.as_dict()}


def _fail_quietly(url: str, job_id: int, study_ids: list[int], reason: str) -> None:
    try:
        jobs.fail_open(runtime.database(url), job_id, study_ids, reason)
    except TRANSIENT_DB_ERRORS:
        log.warning("could not record the failure of job %s's batch (database unreachable)", job_id)


def _job_and_model(db: Database, job_id: int) -> tuple[Job, Model]:
    job = jobs.get_job(db, job_id)
    with db.session() as s:
        model_row = s.get(Model, job.model_id)
    assert model_row is not None  # a foreign key
    return job, model_row


def _bundle_for(worker_model: str | None, device: str, model_row: Model) -> Bundle:
    """The job's model, loaded once per process: from the worker's XRQ_MODEL if it holds these very
    weights, else from the path the model was recorded with (a shared volume)."""
    from model.errors import ModelError

    tried: list[str] = []
    for source in dict.fromkeys(s for s in (worker_model, model_row.path) if s):
        try:
            bundle = runtime.bundle(source, device)
        except ModelError as exc:
            tried.append(f"{source} ({exc})")
            continue
        if bundle.fingerprint == model_row.fingerprint:
            return bundle
        tried.append(f"{source} (other weights, fingerprint {bundle.fingerprint[:12]})")
    raise ModelMismatchError(
        f"this worker has no copy of model {model_row.name} (fingerprint {model_row.fingerprint[:12]}): "
        f"tried {', '.join(tried) or 'nothing (no XRQ_MODEL, no recorded path)'}. Put the model on the "
        "shared models volume at its recorded path, or point the worker's XRQ_MODEL at a copy."
    )


_process_ready = False


def _ensure_process_setup() -> None:
    """Thread settings for pools that send no worker_process_init (solo, threads)."""
    global _process_ready
    if not _process_ready:
        from worker.app import set_torch_threads

        set_torch_threads()
        _process_ready = True


def backlog(task: Task) -> dict[str, Any]:
    """The nightly backlog run (beat schedules it on the cpu queue); a second concurrent run does nothing."""
    from worker.backlog import run_backlog

    return run_backlog(_settings(task)).as_dict()


def evaluate(task: Task, **options: Any) -> dict[str, Any]:
    """`xrq evaluate` as a task: the same options (job_id, model, predictions, baseline, split, text ...)."""
    from worker.evaluate import run_evaluation

    summary = run_evaluation(_settings(task), **options).summary()
    return {k: v for k, v in summary.items() if k != "clinical"}  # corpus scores; details are in the database


def _settings(task: Task) -> Settings:
    return cast("XrqCelery", task.app).xrq_settings


def register(app: XrqCelery) -> None:
    """Register the tasks on `app`; called by `worker.app.make_app`."""
    # The queue comes from task_routes (worker.app): the task attribute is deprecated in Celery 6.
    app.task(bind=True, name=GENERATE_TASK, acks_late=True, reject_on_worker_lost=True,
             typing=True)(generate_batch)
    app.task(bind=True, name=BACKLOG_TASK, acks_late=True)(backlog)
    app.task(bind=True, name=EVALUATE_TASK, acks_late=True)(evaluate)
