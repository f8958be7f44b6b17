"""`xrq worker`: start a Celery worker that takes batches from the broker. Celery is imported lazily."""

from __future__ import annotations

import click

from cli.context import settings_from


@click.command("worker")
@click.option("-Q", "--queues", default="gpu", show_default=True,
              help="Comma-separated queues to consume: gpu (generation), cpu (evaluation, housekeeping).")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes. On GPUs: one worker per GPU, each with --concurrency 1.")
@click.option("--device", envvar="XRQ_DEVICE", show_envvar=True,
              help="auto, cpu, cuda, cuda:1 ...  [default: auto]")
@click.option("--model", envvar="XRQ_MODEL", show_envvar=True, metavar="DIR",
              help="A local copy of the model; by default each job's recorded model path is used.")
@click.option("--broker-url", envvar="XRQ_BROKER_URL", show_envvar=True,
              help="Celery broker, e.g. redis://redis:6379/0")
@click.option("--pool", type=click.Choice(["prefork", "solo", "threads"]), default="prefork",
              show_default=True, help="prefork forks pool processes from a parent that never touched CUDA.")
@click.option("-n", "--hostname", help="Worker name  [default: xrq-PID@HOST]")
@click.option("-l", "--loglevel", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.pass_context
def worker(ctx: click.Context, queues: str, concurrency: int, device: str | None, model: str | None,
           broker_url: str | None, pool: str, hostname: str | None, loglevel: str) -> None:
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

    settings = settings_from(ctx, device=device, model=model, broker_url=broker_url)
    run_worker(settings, queues=[q.strip() for q in queues.split(",") if q.strip()],
               concurrency=concurrency, pool=pool, hostname=hostname, loglevel=loglevel)
