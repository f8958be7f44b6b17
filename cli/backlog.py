"""`xrq backlog`: the nightly job, by hand."""

from __future__ import annotations

import json

import click

from cli.context import settings_from, settings_options


@click.command()
@click.option("--dry-run", is_flag=True, help="Only say what would be done.")
@click.option("--no-score", is_flag=True, help="Do not score new reports that have ground truth.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@settings_options("backlog")
@click.pass_context
def backlog(ctx: click.Context, dry_run: bool, no_score: bool, as_json: bool) -> None:
    """Queue again what was left undone: pending, stuck and transiently failed studies.

    Also submits new files from XRQ_INBOX and scores new reports that have ground truth. Beat runs
    the same at XRQ_BACKLOG_CRON (default 02:00 UTC); a lock stops two runs from overlapping.

    \b
    Examples:
      xrq backlog --dry-run
      xrq backlog --json
    """
    from worker.backlog import run_backlog
    from worker.dispatch import runner_for

    settings = settings_from(ctx)
    run = run_backlog(settings, None if dry_run else runner_for(settings), dry_run=dry_run, score=not no_score)
    if as_json:
        click.echo(json.dumps(run.as_dict()))
        return
    if run.locked_out:
        click.echo("Another backlog run holds the lock; nothing done.")
        return
    verb = "would queue" if dry_run else "queued"
    click.echo(f"Backlog: {run.pending} pending, {run.stuck} stuck, {run.retry} to retry "
               f"({run.exhausted} failed for good after {settings_from(ctx).max_attempts} attempts).")
    for job_id, n in run.requeued.items():
        click.echo(f"  job {job_id}: {verb} {n} studies")
    if run.inbox_job is not None:
        click.echo(f"  inbox: job {run.inbox_job} with {run.inbox_studies} studies")
    if run.scored:
        click.echo(f"  scored: evaluation(s) {', '.join(map(str, run.scored))}")
    if run.inbox:
        click.echo(f"  would submit new files from the inbox {run.inbox}")
    if run.to_score:
        click.echo(f"  would score job(s) {', '.join(map(str, run.to_score))} (new reports with ground truth)")
    for error in run.errors:
        click.echo(f"  problem: {error}", err=True)
