"""The Celery app: how messages are carried between `xrq submit` and the GPU workers.

The broker only carries work; the database says what is done. So every choice here is about never
losing a message and never minding a duplicate:

- JSON only, never pickle: a message is `(job_id, [study ids])`, and a broker is no code path.
- Late acknowledgement, and reject when the worker process is lost: a batch is acknowledged after
  its reports are committed; a pool process killed mid-batch puts its message back at once, a whole
  worker killed (machine gone) gets its message back from Redis after the visibility timeout.
- Prefetch of one message per process: a slow GPU batch never holds other batches hostage.
- A visibility timeout longer than the slowest batch (`XRQ_VISIBILITY_TIMEOUT`), or Redis hands a
  batch that is still running to a second worker (harmless, but twice the work).
- Queues: `gpu` for generation, `cpu` (the default) for evaluation and housekeeping.
- No result backend: results are in the database.

Broker settings (`XRQ_VISIBILITY_TIMEOUT`, `XRQ_TASK_MAX_RETRIES`, ...) are read in `worker/settings.py`.

Logging is xrq's, not Celery's (worker/logs.py): XRQ_LOG_LEVEL and XRQ_LOG_FORMAT (text or json) for
the worker, its pool processes and beat alike. Flower: `celery --app worker.app flower` (see `app`).

The model is never loaded here, and CUDA never touched: a worker's pool processes are forked from
its parent, and CUDA does not survive a fork. Each pool process loads its model on its first batch.
"""

from __future__ import annotations

import logging
import os
import re
from functools import cache
from typing import Any

from celery import Celery
from celery.schedules import crontab
from celery.signals import setup_logging, worker_init, worker_process_init
from kombu import Queue
from kombu.transport import sqlalchemy as kombu_sqla

from worker import tasks
from worker.enqueue import BACKLOG_TASK, CPU_QUEUE, EVALUATE_TASK, GENERATE_TASK, GPU_QUEUE, QUEUES
from worker.errors import SettingsError
from worker.settings import BrokerOptions, Settings, check_cron

log = logging.getLogger(__name__)


class PromptSqlaTransport(kombu_sqla.Transport):
    """kombu's SQLAlchemy transport, polling its tables every 50 ms, not every second: a worker would
    otherwise wait up to a second for each message."""

    polling_interval = 0.05


class XrqCelery(Celery):
    """A Celery app that carries xrq's settings to the tasks (read in the pool processes after fork)."""

    xrq_settings: Settings
    xrq_options: BrokerOptions


def transport_options(options: BrokerOptions) -> dict[str, Any]:
    # Sweep for abandoned messages often enough to notice them soon after the visibility timeout,
    # not kombu's default of about 100 s; each sweep is one cheap ZRANGE on Redis.
    interval = max(1, min(60, options.visibility_timeout // 4))
    opts: dict[str, Any] = {
        "visibility_timeout": options.visibility_timeout,
        "unacked_restore_interval": interval,
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 3,  # `xrq submit` fails fast when Redis is down
        "socket_timeout": 30,  # a publish never hangs on a half-open connection
    }
    if options.broker_prefix:
        opts["global_keyprefix"] = options.broker_prefix
    return opts


def make_app(settings: Settings | None = None, options: BrokerOptions | None = None) -> XrqCelery:
    """A configured app for these settings; registers xrq's tasks. Creating it connects to nothing."""
    settings = settings or Settings.from_env()
    options = options or BrokerOptions.from_env()
    app = XrqCelery("xrq", set_as_current=False)
    app.xrq_settings = settings
    app.xrq_options = options
    url = settings.broker_url or ""
    sqla = url.startswith("sqla+")
    app.conf.update(
        # kombu's SQLAlchemy transport (a bench host with no Redis) hands every transport option to
        # create_engine, so its quicker polling comes as a transport class, named where kombu allows it.
        broker_url=url.removeprefix("sqla+") if sqla else settings.broker_url,
        broker_transport=f"{__name__}:PromptSqlaTransport" if sqla else None,
        # Redis's options; other transports (AMQP, kombu's SQLAlchemy one) refuse them.
        broker_transport_options=transport_options(options) if url.startswith(("redis", "rediss")) else {},
        broker_connection_timeout=3,
        broker_connection_retry_on_startup=True,  # workers wait for the broker to come up
        broker_pool_limit=4,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        result_accept_content=["json"],
        task_ignore_result=True,  # the database is the result
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,  # they come back by redelivery
        task_queues=[Queue(GPU_QUEUE), Queue(CPU_QUEUE)],
        task_default_queue=CPU_QUEUE,
        task_routes={GENERATE_TASK: {"queue": GPU_QUEUE}, BACKLOG_TASK: {"queue": CPU_QUEUE},
                     EVALUATE_TASK: {"queue": CPU_QUEUE}},
        # Beat: the nightly backlog run (XRQ_BACKLOG_CRON, UTC); the task's lock stops overlaps.
        beat_schedule={"backlog": {"task": BACKLOG_TASK, "schedule": backlog_schedule(settings.backlog_cron)}},
        # Publishing: a couple of quick retries, then an error the CLI can show, never a hang.
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                   "interval_max": 1},
        worker_send_task_events=True,  # Flower and `celery events` can watch
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,  # print() goes to standard output, not through the log handler
        enable_utc=True,
    )
    tasks.register(app)
    return app


def app_for(settings: Settings, options: BrokerOptions | None = None) -> XrqCelery:
    """One app (and so one producer pool) per broker configuration in this process."""
    return _app(settings, options or BrokerOptions.from_env())


@cache
def _app(settings: Settings, options: BrokerOptions) -> XrqCelery:
    return make_app(settings, options)


def backlog_schedule(cron: str) -> crontab:
    """`XRQ_BACKLOG_CRON` ("minute hour day month weekday") as Celery's crontab."""
    check_cron("XRQ_BACKLOG_CRON", cron)
    minute, hour, day_of_month, month_of_year, day_of_week = cron.split()
    try:
        return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                       day_of_week=day_of_week)
    except ValueError as exc:  # what check_cron lets through and Celery still refuses
        raise SettingsError(f"XRQ_BACKLOG_CRON {cron!r} is not a schedule Celery takes: {exc}") from None


@setup_logging.connect
def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Celery asks for logging (worker, pool process, beat): xrq's level and format, not Celery's
    (connecting here is what stops Celery from configuring its own)."""
    from celery import current_app

    from worker.logs import configure

    settings = getattr(current_app, "xrq_settings", None) or Settings.from_env()
    level = settings.log_level or (loglevel if isinstance(loglevel, str) else None) or "info"
    configure(level.lower(), settings.log_format)
    logging.getLogger("celery.app.trace").addFilter(tasks.ONE_LINE_REJECTS)


@worker_init.connect
def _init_worker(sender: Any = None, **_: Any) -> None:
    """The worker's main process, before any pool process is forked: XRQ_AUTO_MIGRATE for the
    whole worker (the pool processes inherit it)."""
    from db.engine import set_auto_migrate

    settings = getattr(getattr(sender, "app", None), "xrq_settings", None) or Settings.from_env()
    set_auto_migrate(settings.auto_migrate)


@worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    """A fresh pool process: no engines or models inherited across the fork. Its threads (decode
    workers, torch) are planned from its share of the host's cores on its first batch."""
    from worker import runtime

    runtime.clear()


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def run_worker(settings: Settings, *, queues: list[str], concurrency: int = 1, pool: str = "prefork",
               hostname: str | None = None, loglevel: str = "info", options: BrokerOptions | None = None) -> None:
    """Start a worker in this process (blocks until it is stopped): what `xrq worker` runs.

    The database is opened (and migrated) once here, before any pool process exists, so a wrong
    XRQ_DATABASE_URL fails now rather than on the first batch; then it is closed again so no
    connection is shared across the fork. Nothing here imports torch or touches CUDA.
    """
    from worker import runtime

    if not settings.broker_url:
        raise SettingsError("xrq worker needs a broker: set XRQ_BROKER_URL (e.g. redis://localhost:6379/0) "
                            "or pass --broker-url")
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        raise SettingsError(f"unknown queue {', '.join(unknown) or '(none)'}; choose from {', '.join(QUEUES)}")
    if not _DEVICE.fullmatch(settings.device):
        raise SettingsError(f"device {settings.device!r} is not one of auto, cpu, cuda, cuda:N")
    if pool not in ("prefork", "solo", "threads"):
        raise SettingsError(f"pool {pool!r} is not one of prefork, solo, threads")
    options = options or BrokerOptions.from_env()
    from db.engine import set_auto_migrate

    set_auto_migrate(settings.auto_migrate)
    runtime.database(settings.database_url)
    runtime.clear()
    worker_app = make_app(settings, options)
    worker_app.conf.worker_concurrency = concurrency  # each process plans its threads from its share
    worker_app.set_current()
    argv = ["worker", f"--queues={','.join(queues)}", f"--concurrency={concurrency}", f"--pool={pool}",
            f"--loglevel={loglevel}", f"--hostname={hostname or f'xrq-{os.getpid()}@%h'}",
            # Mingle and gossip sync state xrq keeps in the database; skipping them starts faster.
            "--without-mingle", "--without-gossip"]
    if settings.log_format == "json":
        argv.insert(0, "--quiet")  # celery's own option, before the command: no banner, JSON lines only
    log.info("starting worker: queues %s, device %s, %d process(es)", queues, settings.device, concurrency)
    worker_app.worker_main(argv)


def _deployment_kwargs(settings: Settings) -> dict[str, str]:
    """Beat's backlog messages name this database's deployment, as `xrq submit`'s do (worker/tasks.py).
    A database that cannot be read now (still starting) leaves them unnamed: any worker takes them."""
    from common.errors import XrqError
    from worker import runtime
    from worker.messages import DEPLOYMENT_KEY
    from worker.pipeline import transient_errors

    unreadable: tuple[type[BaseException], ...] = (XrqError, *transient_errors())
    try:
        return {DEPLOYMENT_KEY: runtime.deployment(settings.database_url)}
    except unreadable as exc:
        log.warning("beat could not read the deployment id from the database (%s): its backlog messages "
                    "name no deployment, and any worker on this broker takes them", exc)
        return {}


def run_beat(settings: Settings, options: BrokerOptions | None = None, *, schedule_file: str,
             loglevel: str = "info") -> None:
    """Run beat in this process (blocks): the backlog job at XRQ_BACKLOG_CRON. What `xrq beat` runs."""
    if not settings.broker_url:
        raise SettingsError("xrq beat needs a broker: set XRQ_BROKER_URL (e.g. redis://localhost:6379/0) "
                            "or pass --broker-url")
    beat_app = make_app(settings, options or BrokerOptions.from_env())
    beat_app.conf.beat_schedule["backlog"]["kwargs"] = _deployment_kwargs(settings)
    beat_app.set_current()
    log.info("starting beat: backlog at %r (UTC), schedule in %s", settings.backlog_cron, schedule_file)
    beat_app.Beat(schedule=schedule_file, loglevel=loglevel.upper(), quiet=settings.log_format == "json").run()


# `celery -A worker.app worker|beat|inspect|flower ...` finds this; `xrq worker` builds its own.
app = make_app()
# Flower asks every worker eight things at once (stats, active_queues, registered, conf ...) from a
# thread pool, each broadcast holding one pooled connection while its producer takes another, and its
# event thread takes one more: with make_app's pool of 4 they wait on each other forever (Flower shows
# no workers and no tasks, and its API hangs). This app serves command-line tools, never `xrq submit`:
# no limit.
app.conf.broker_pool_limit = None
