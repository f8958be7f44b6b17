"""Handing a recorded job to the broker: the task and queue names, and the runner that publishes.

The job is already in the database (pending) when this runs. Its studies go out grouped by view
count, several batches to a message (so a worker decodes one batch while it generates another).

What is sent: pending studies, and queued or running ones whose message may be lost: older than
XRQ_STUCK_AFTER, or all of them when the broker holds no xrq message at all (Redis restarted empty).
One submitter of a job sends at a time (the job's row is locked), and each message's studies are
marked queued in the transaction that is committed once the broker has taken the message: so the
database never says queued for more than the broker holds, a second submitter finds them queued
(and the broker not empty) and sends nothing again, and if the broker goes away halfway the user is
told what was queued, and submitting again (or the backlog job) sends the rest. A batch delivered
twice anyway is harmless (the second delivery finds the studies done and claims nothing).

This is the bottom of the Celery glue: it takes an app and imports neither `worker.app` nor
`worker.tasks`, which import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.utils.url import maybe_sanitize_url

from db import jobs
from db.schema import utcnow
from worker import runtime
from worker.errors import BrokerUnavailableError
from worker.messages import DEPLOYMENT_KEY
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
        errors = broker_errors(self.app)
        sent: list[int] = []
        try:
            with jobs.sending(db, job_id) as sender:  # one sender of this job at a time
                # Lost: with an empty broker, every study queued before this sender took the job (not
                # those another submitter queues meanwhile, between two of our messages); else the old ones.
                now = utcnow()
                stale = now if broker_is_empty(self.app) else now - timedelta(seconds=self.settings.stuck_after)
                to_send = sender.to_send(study_ids, stale_before=stale)
                # Grouped by view count here too: the worker cuts a message into batches of like studies.
                for message in plan_batches(jobs.view_counts(db, job_id, to_send),
                                            message_size(job.batch_size or None), max_views=1 << 16):
                    claimed = sender.claim(message, stale_before=stale)
                    if claimed:
                        self.app.send_task(GENERATE_TASK, args=[job_id, claimed],
                                           kwargs={DEPLOYMENT_KEY: runtime.deployment(self.settings.database_url)})
                        sender.sent()
                        sent += claimed
        except errors as exc:
            if not sent:
                raise BrokerUnavailableError(_unreachable(
                    self.app, exc, job_id, f"its {len(study_ids)} unfinished studies are as they were")) from exc
            raise BrokerUnavailableError(_unreachable(
                self.app, exc, job_id, f"{len(sent)} of the {len(to_send)} studies to send were queued before that; "
                f"the other {len(to_send) - len(sent)} are as they were")) from exc
        return RunResult(queued=len(sent))


def broker_is_empty(app: Celery) -> bool:
    """True when the broker holds no xrq message at all, waiting or taken: then every study the
    database calls queued or running has lost its message. Known for Redis; False elsewhere."""
    if not str(app.conf.broker_url or "").startswith(("redis", "rediss")):
        return False
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        waiting = sum(int(channel._size(queue)) for queue in QUEUES)
        taken = int(channel.client.hlen(channel.unacked_key))
    return waiting == 0 and taken == 0


def _unreachable(app: Celery, exc: BaseException, job_id: int, done: str) -> str:
    where = maybe_sanitize_url(app.conf.broker_url)  # the password masked
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"cannot reach the broker at {where} ({reason}). Job {job_id} is recorded and {done}: start "
            "the broker (check XRQ_BROKER_URL) and run the same `xrq submit` again, or leave them to the "
            "nightly backlog job.")
