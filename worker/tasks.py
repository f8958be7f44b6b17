"""The Celery tasks: ids in, one pipeline call, a retry policy. Nothing else.

`generate_batch(job_id, study_ids)` is safe to run twice, at once or one after the other: claiming
skips finished and already-reported studies, and reports are inserted ON CONFLICT DO NOTHING. So a
redelivered message, a duplicate publish, or a retry after a database error leaves one report.

The task runs the same pipeline as in-process submit (worker/pipeline.py), with its failure policy:
a batch that breaks fails retryably and the task goes on. Only what the pipeline could not record
(the database away) makes the task retry the message, with backoff.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from model.errors import ModelError
from worker import runtime
from worker.enqueue import BACKLOG_TASK, CPU_QUEUE, EVALUATE_TASK, GENERATE_TASK, GPU_QUEUE, BrokerRunner
from worker.errors import ModelMismatchError
from worker.messages import InvalidMessageError, parse_backlog, parse_evaluate, parse_generate
from worker.pipeline import fail_batch, transient_errors
from worker.runner import LocalRunner

if TYPE_CHECKING:
    from celery import Celery, Task

    from worker.settings import BrokerOptions, Settings

__all__ = ["BACKLOG_TASK", "CPU_QUEUE", "EVALUATE_TASK", "GENERATE_TASK", "GPU_QUEUE", "backoff", "register",
           "run_batch"]

log = logging.getLogger(__name__)
M = TypeVar("M")
REJECTED = "xrq: rejected, see the line above"  # the reason Celery is given (see OneLineRejects)
LEAVE_PAUSE = 1.0  # seconds before another deployment's message goes back to the queue
LOG_FOREIGN_EVERY = 60.0  # seconds between two log lines about one other deployment, per process
_foreign_logged: dict[str, float] = {}


def backoff(retries: int, maximum: int) -> float:
    """Exponential backoff with jitter: about 1, 2, 4 ... seconds, never more than `maximum`.

    Half the wait is fixed and half random, so workers that failed together don't retry together,
    and no retry comes at once (a restarting server needs a moment).
    """
    base = float(min(maximum, 2**retries))
    return base / 2 + random.uniform(0, base / 2)


def generate_batch(task: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Report a message's studies with the job's model, and store the results."""
    message = _checked(task, parse_generate, args, kwargs)
    job_id, study_ids = message.job_id, message.study_ids
    settings, options = _settings(task), _options(task)
    try:
        _leave_if_foreign(task, message.deployment)
        result = run_batch(settings, job_id, study_ids, processes=_processes(task.app))
    except transient_errors() as exc:  # the job's row could not even be read: nothing was claimed
        raise _retry(task, options, job_id, exc) from exc
    except ModelError as exc:  # the job's stored settings are unusable (an older xrq let them in)
        fail_batch(runtime.database(settings.database_url), job_id, study_ids, "reading the job's settings", exc)
        return {"job_id": job_id, "error": str(exc)}
    except ModelMismatchError as exc:
        if task.request.retries < options.task_max_retries:
            # Another worker may hold the right model: put the message back on the queue.
            log.error("%s; handing the batch back to the queue", exc)
            raise _retry(task, options, job_id, exc) from exc
        fail_batch(runtime.database(settings.database_url), job_id, study_ids, "loading the model", exc)
        raise
    unrecorded = [e for e in result["errors"] if not e.recorded]
    if unrecorded:
        # The database is the truth and it is away: what could not be recorded is still open there,
        # so the same message later does exactly what this one would have done for those studies.
        raise _retry(task, options, job_id, RuntimeError(unrecorded[0].reason))
    return {"job_id": job_id, **{k: v for k, v in result.items() if k != "errors"}}


def run_batch(settings: Settings, job_id: int, study_ids: list[int], *, processes: int = 1) -> dict[str, Any]:
    """The task's body without Celery: the pipeline over the message's studies, and what happened."""
    result = LocalRunner(settings, processes=processes).run(job_id, study_ids)
    return {**result.as_dict(), "errors": result.errors}


def _retry(task: Task, options: BrokerOptions, job_id: int, exc: BaseException) -> BaseException:
    log.warning("job %s's message will be retried (retry %d): %s", job_id, task.request.retries + 1, exc)
    return cast(BaseException, task.retry(exc=exc, countdown=backoff(task.request.retries, options.retry_backoff_max),
                                          max_retries=options.task_max_retries))


def backlog(task: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The nightly backlog run (beat schedules it on the cpu queue); a second concurrent run does nothing."""
    from worker.backlog import run_backlog

    _leave_if_foreign(task, _checked(task, parse_backlog, args, kwargs).deployment)
    settings = _settings(task)
    return run_backlog(settings, BrokerRunner(task.app, settings)).as_dict()


def evaluate(task: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """`xrq evaluate` as a task: a job, a model or a baseline scored on a split (worker/messages.py says
    what a message may ask; never a file to read or a folder to write)."""
    from worker.evaluate import run_evaluation

    message = _checked(task, parse_evaluate, args, kwargs)
    _leave_if_foreign(task, message.deployment)
    summary = run_evaluation(_settings(task), **message.options).summary()
    return {k: v for k, v in summary.items() if k != "clinical"}  # corpus scores; details are in the database


def _checked(task: Task, parse: Callable[[Sequence[Any], Mapping[str, Any]], M], args: Sequence[Any],
             kwargs: Mapping[str, Any]) -> M:
    """The message, checked against its task's schema; one that does not fit is rejected for good (not
    retried, not requeued: it would not fit the next time either), in one line of the log."""
    try:
        return parse(args, kwargs)
    except InvalidMessageError as exc:
        log.error("rejected message %s of %s, not retried: %s", task.request.id, task.name, exc)
        from celery.exceptions import Reject

        raise Reject(REJECTED, requeue=False) from None


def _leave_if_foreign(task: Task, deployment: str | None) -> None:
    """Put back, for its owner's workers, a message of another deployment (another database on this broker).

    It is requeued after a pause, so that a worker of its owner (waiting on the queue) takes it next,
    and this worker says so in its log (once a minute per deployment) and in its database (`xrq health`).
    A message without a deployment comes from an xrq older than deployment ids: it is taken.
    """
    settings = _settings(task)
    own = runtime.deployment(settings.database_url)
    if deployment is None or deployment == own:
        return
    from celery.exceptions import Reject

    from db.deployment import record_foreign

    worker = str(task.request.hostname or "?")
    try:
        record_foreign(runtime.database(settings.database_url), deployment=deployment, task=task.name,
                       worker=worker)
    except transient_errors():
        log.warning("could not record the other deployment's message in the database")
    now = time.monotonic()
    if now - _foreign_logged.get(deployment, -LOG_FOREIGN_EVERY) >= LOG_FOREIGN_EVERY:
        _foreign_logged[deployment] = now
        log.error("left message %s of %s for its owner: it belongs to deployment %s, this worker's database is "
                  "deployment %s. Two deployments share this broker: give each its own Redis database "
                  "(XRQ_BROKER_URL) or XRQ_BROKER_PREFIX", task.request.id, task.name, deployment, own)
    time.sleep(LEAVE_PAUSE)
    raise Reject(REJECTED, requeue=True)


class OneLineRejects(logging.Filter):
    """Celery logs each rejected message with a traceback; xrq has said why in one line (`_checked`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and REJECTED in str(record.exc_info[1]))


ONE_LINE_REJECTS = OneLineRejects()  # one instance: adding it again changes nothing


def _settings(task: Task) -> Settings:
    return cast("Settings", task.app.xrq_settings)


def _options(task: Task) -> BrokerOptions:
    return cast("BrokerOptions", task.app.xrq_options)


def _processes(app: Celery) -> int:
    """How many pool processes share this host's cores (set by `xrq worker --concurrency`)."""
    return int(app.conf.worker_concurrency or 1)


def register(app: Celery) -> None:
    """Register the tasks on `app`; called by `worker.app.make_app`."""
    # The queue comes from task_routes (worker.app): the task attribute is deprecated in Celery 6.
    app.task(bind=True, name=GENERATE_TASK, acks_late=True, reject_on_worker_lost=True,
             typing=True)(generate_batch)
    app.task(bind=True, name=BACKLOG_TASK, acks_late=True)(backlog)
    app.task(bind=True, name=EVALUATE_TASK, acks_late=True)(evaluate)
