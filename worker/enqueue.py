"""Handing a recorded job to the broker, one message per batch of study ids.

The job is already in the database (pending) when this runs. A batch is marked `queued` only after
the broker has accepted its message, so the database never claims more than the broker holds: if
the broker goes away halfway, the rest stays `pending`, the user is told so, and submitting again
(or the backlog job) queues what is missing. Submitting again sends every unfinished study, queued
ones too: after a broker restart their messages may be gone, and a batch queued twice is harmless
(the second delivery finds the studies done and claims nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy import update

from db import jobs
from db.engine import Database
from db.schema import JobStudy, utcnow
from worker.app import XrqCelery, make_app
from worker.errors import BrokerUnavailableError
from worker.pipeline import batches
from worker.settings import BrokerOptions, Settings
from worker.tasks import GENERATE_TASK


def app_for(settings: Settings, options: BrokerOptions | None = None) -> XrqCelery:
    """One app (and so one producer pool) per broker configuration in this process."""
    return _app(settings, options or BrokerOptions.from_env())


@cache
def _app(settings: Settings, options: BrokerOptions) -> XrqCelery:
    return make_app(settings, options)


def broker_errors(app: XrqCelery) -> tuple[type[BaseException], ...]:
    """What "the broker is unreachable" looks like for this transport (Redis, AMQP ...)."""
    with app.connection_for_write() as conn:
        return (KombuOperationalError, OSError, *conn.connection_errors, *conn.channel_errors)


def enqueue_job(settings: Settings, db: Database, job_id: int, study_ids: Sequence[int]) -> int:
    """Publish the job's studies in batches of the job's size; returns the number of studies queued.

    Raises BrokerUnavailableError, saying what is queued and what is still pending, when the broker
    cannot be reached or stops accepting messages.
    """
    if not study_ids:
        return 0
    job = jobs.get_job(db, job_id)
    app = app_for(settings)
    errors = broker_errors(app)
    queued = 0
    try:
        with app.producer_or_acquire() as producer:
            for batch in batches(study_ids, job.batch_size):
                app.send_task(GENERATE_TASK, args=[job_id, batch], producer=producer)
                mark_queued(db, job_id, batch)
                queued += len(batch)
    except errors as exc:
        raise BrokerUnavailableError(_unreachable(app, exc, job_id, queued, len(study_ids))) from exc
    return queued


def mark_queued(db: Database, job_id: int, study_ids: Sequence[int]) -> None:
    """pending -> queued. Only pending: a fast worker may already have the batch running or done."""
    with db.session() as s:
        s.execute(update(JobStudy).where(
            JobStudy.job_id == job_id, JobStudy.study_id.in_(list(study_ids)), JobStudy.status == "pending",
        ).values(status="queued", updated_at=utcnow()))


def _unreachable(app: XrqCelery, exc: BaseException, job_id: int, queued: int, total: int) -> str:
    where = maybe_sanitize_url(app.conf.broker_url)  # the password masked
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    done = f"{queued} of its {total} studies were queued before that; the other {total - queued}" \
        if queued else f"its {total} studies"
    return (f"cannot reach the broker at {where} ({reason}). Job {job_id} is recorded and {done} are "
            "pending: start the broker (check XRQ_BROKER_URL) and run the same `xrq submit` again, or "
            "leave them to the nightly backlog job.")
