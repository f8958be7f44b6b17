"""`xrq health`: does the database answer, the broker, a worker of each queue? Exit status 1 if not."""

from __future__ import annotations

import json

import click

from cli.context import broker_options_from, settings_from, settings_options


@click.command()
@click.option("-q", "--queue", "queues", multiple=True, metavar="QUEUE",
              help="A queue some worker must answer for: gpu or cpu (repeat for both).")
@click.option("-w", "--worker", "workers", multiple=True, metavar="NAME",
              help="A worker that must answer, by its name (xrq worker --hostname), e.g. gpu@host1.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=2.0,
              help="Seconds to wait for the broker and for the workers' answers.")
@click.option("--no-database", is_flag=True, help="Do not check the database (a host that only runs workers).")
@click.option("--json", "as_json", is_flag=True, help='Print [{"name", "ok", "detail"}, ...] as JSON.')
@settings_options("health")
@click.pass_context
def health(ctx: click.Context, queues: tuple[str, ...], workers: tuple[str, ...], timeout: float,
           no_database: bool, as_json: bool) -> None:
    """Check that the database, the broker and the workers answer; exit 1 if one does not.

    The database must answer and have this xrq's schema (nothing is migrated); the broker, if
    XRQ_BROKER_URL is set, must answer; each --queue needs a worker that answers for it, and each
    --worker must answer itself. docker-compose.yml runs it as the workers' healthcheck.

    \b
    Examples:
      xrq health
      xrq health --queue gpu --queue cpu
      xrq health --worker gpu@$(hostname) --timeout 5
    """
    from worker.health import run_checks

    checks = run_checks(settings_from(ctx), broker_options_from(ctx), queues=queues, workers=workers,
                        timeout=timeout, database=not no_database)
    if as_json:
        click.echo(json.dumps([c.as_dict() for c in checks]))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{c.name:<{width}}  {'ok' if c.ok else 'FAIL'}  {c.detail}")
    failed = [c.name for c in checks if not c.ok]
    if failed:
        raise click.ClickException(f"not healthy: {', '.join(failed)} (see above)")
