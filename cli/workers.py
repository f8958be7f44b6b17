"""`xrq worker` and `xrq beat`: a Celery worker that takes batches, and the scheduler. Celery is imported
lazily."""

from __future__ import annotations

import click

from cli.context import broker_options_from, settings_from, settings_options


@click.command("worker")
@click.option("-Q", "--queues", default="gpu", show_default=True,
              help="Comma-separated queues to consume: gpu (generation), cpu (evaluation, housekeeping).")
@click.option("-c", "--concurrency", type=click.IntRange(min=1, max=1024), default=1, show_default=True,
              help="Worker processes. On GPUs: one worker per GPU, each with --concurrency 1.")
@click.option("--pool", type=click.Choice(["prefork", "solo", "threads"]), default="prefork",
              show_default=True, help="prefork forks pool processes from a parent that never touched CUDA.")
@click.option("-n", "--hostname", help="Worker name, for `xrq health --worker` and Flower  [default: xrq-PID@HOST]")
@settings_options("worker")
@click.pass_context
def worker(ctx: click.Context, queues: str, concurrency: int, pool: str, hostname: str | None) -> None:
    """Take batches from the broker and write their reports to the database.

    Runs until stopped (Ctrl-C or SIGTERM finish the current batch first). Each process loads the
    model on its first batch. Any number of workers, on any number of hosts, may share one broker
    and one database.

    \b
    Examples:
      xrq worker --device cuda:0
      CUDA_VISIBLE_DEVICES=1 xrq worker --device cuda --hostname gpu1@%h
      xrq worker --queues cpu --concurrency 4 --device cpu
    """
    from worker.app import run_worker

    settings = settings_from(ctx)
    run_worker(settings, queues=[q.strip() for q in queues.split(",") if q.strip()], concurrency=concurrency,
               pool=pool, hostname=hostname, loglevel=settings.log_level or "info",
               options=broker_options_from(ctx))


@click.command("beat")
@click.option("--schedule-file", default="celerybeat-schedule", show_default=True, metavar="FILE",
              help="Where beat remembers when each job last ran: keep it on a volume.")
@settings_options("beat")
@click.pass_context
def beat(ctx: click.Context, schedule_file: str) -> None:
    """Run the scheduler: the backlog job at XRQ_BACKLOG_CRON (exactly one per deployment).

    \b
    Example:
      xrq beat --schedule-file /var/lib/xrq/celerybeat-schedule --backlog-cron "30 1 * * *"
    """
    from worker.app import run_beat

    settings = settings_from(ctx)
    run_beat(settings, broker_options_from(ctx), schedule_file=schedule_file, loglevel=settings.log_level or "info")
