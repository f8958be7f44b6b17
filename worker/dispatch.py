"""Which runner does the work: the top of worker/, where the in-process services meet the Celery glue.

With XRQ_BROKER_URL set, studies are queued for the workers; without it they run here, through the
same pipeline a worker runs. Celery is imported only in the first case.
"""

from __future__ import annotations

from worker.runner import LocalRunner, Runner
from worker.settings import Settings


def runner_for(settings: Settings) -> Runner:
    if not settings.broker_url:
        return LocalRunner(settings)
    from worker.app import app_for
    from worker.enqueue import BrokerRunner

    return BrokerRunner(app_for(settings), settings)
