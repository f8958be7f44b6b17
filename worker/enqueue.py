"""Handing a recorded job to the broker: the task and queue names, and the runner that publishes.

The job is already in the database (pending) when this runs. Its studies go out grouped by view
count, several batches to a message (so a worker decodes one batch while it generates another). A
message's studies are marked `queued` only after the broker has accepted it, so the database never
claims more than the broker holds: if the broker goes away halfway, the rest stays `pending`, the
user is told so, and submitting again (or the backlog job) queues what is missing. Submitting again
sends every unfinished study, queued ones too: after a broker restart their messages may be gone,
and a batch queued twice is harmless (the second delivery finds the studies done and claims nothing).

This is the bottom of the Celery glue: it takes an app and imports neither `worker.app` nor
`worker.tasks`, which import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.utils.url import maybe_sanitize_url

from db import jobs
from worker import runtime
from worker.errors import BrokerUnavailableError
from worker.pipeline import RunResult, message_size, plan_batches
from worker.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
QUEUES = (GPU_QUEUE, CPU_QUEUE)
GENERATE_TASK = "xrq.generate_batch"
BACKLOG_TASK = "xrq.backlog"
EVALUATE_TASK = "xrq.evaluate"


def broker_errors(app: Celery) -> tuple[type[BaseException], ...]:
    """What "the broker is unreachable" looks like for this transport (Redis, AMQP ...)."""
    with app.connection_for_write() as conn:
        return (KombuOperationalError, OSError, *conn.connection_errors, *conn.channel_errors)


class BrokerRunner:
    """Queues a job's studies for the workers; `run` returns once the broker holds them."""

    local = False

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def run(self, job_id: int, study_ids: Sequence[int],
            progress: Callable[[int], None] | None = None) -> RunResult:
        """Publish the studies; raises BrokerUnavailableError, saying what is queued and what is still
        pending, when the broker cannot be reached or stops accepting messages."""
        if not study_ids:
            return RunResult()
        db = runtime.database(self.settings.database_url)
        job = jobs.get_job(db, job_id)
        # Grouped by view count here too: the worker cuts a message into batches of like studies.
        messages = plan_batches(jobs.view_counts(db, job_id, study_ids), message_size(job.batch_size or None),
                                max_views=1 << 16)
        errors = broker_errors(self.app)
        queued = 0
        try:
            with self.app.producer_or_acquire() as producer:
                for message in messages:
                    self.app.send_task(GENERATE_TASK, args=[job_id, message], producer=producer)
                    jobs.mark_queued(db, job_id, message)
                    queued += len(message)
        except errors as exc:
            raise BrokerUnavailableError(_unreachable(self.app, exc, job_id, queued, len(study_ids))) from exc
        return RunResult(queued=queued)


def _unreachable(app: Celery, exc: BaseException, job_id: int, queued: int, total: int) -> str:
    where = maybe_sanitize_url(app.conf.broker_url)  # the password masked
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    done = f"{queued} of its {total} studies were queued before that; the other {total - queued}" \
        if queued else f"its {total} studies"
    return (f"cannot reach the broker at {where} ({reason}). Job {job_id} is recorded and {done} are "
            "pending: start the broker (check XRQ_BROKER_URL) and run the same `xrq submit` again, or "
            "leave them to the nightly backlog job.")
