"""`xrq submit`, `xrq status`, `xrq reports`: put folders in, see how they go, get reports out."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli import output
from cli.context import COUNT, ID, settings_from, settings_options

if TYPE_CHECKING:
    from db.queries import JobSummary
    from worker.settings import Settings
    from worker.submit import Submission


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--group-by", type=click.Choice(["auto", "image", "folder", "pattern"]), default="auto",
              help="How images form studies: auto (DICOM StudyInstanceUID, IU file names, else one "
                   "image each), image, folder (one subfolder per study), pattern (--pattern).")
@click.option("--pattern", metavar="REGEX",
              help="With --group-by pattern: a regex on the relative path; group `study` (or 1) is the id.")
@click.option("--wait", is_flag=True, help="With a broker: follow the job until it finishes, saying so when "
                                           "no worker moves it.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="With --wait: stop waiting after this long (exit status 1; the job goes on).")
@click.option("--strict", is_flag=True, help="Exit with status 1 when any study failed (for cron).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (docs/cli.md).")
@settings_options("submit", expose=("model", "batch_size", "num_beams", "max_new_tokens", "device"))
@click.pass_context
def submit(ctx: click.Context, folder: Path, model: str | None, batch_size: int | str | None, group_by: str,
           pattern: str | None, num_beams: int | None, max_new_tokens: int | None, device: str | None, wait: bool,
           as_json: bool, timeout: float | None, strict: bool) -> None:
    """Draft a report for every study in FOLDER (PNG, JPEG, DICOM; recursive).

    Studies already reported by the same model are skipped; bad files become failed studies
    with their reason, and the rest of the job goes on.

    \b
    Example:
      xrq submit examples/iu --model models/tiny
    """
    settings = settings_from(ctx, model=model, num_beams=num_beams, max_new_tokens=max_new_tokens, device=device)
    if settings.model:  # a mistyped --model is named now, not after torch's seconds of importing
        from model.network.directory import precheck

        precheck(settings.model)
    from worker.dispatch import runner_for
    from worker.submit import SubmitHooks, submit_folder

    if batch_size is not None:
        settings = settings.replace(batch_size=None if batch_size == "auto" else batch_size)
    shown = not as_json and sys.stderr.isatty()
    steps = output.Progress(enabled=shown, desc="Submitting")
    scanning = output.Progress(enabled=shown, desc="Scanning and hashing", unit="file")
    bar = output.Progress(enabled=shown)
    stages = ["loading the model", "scanning and hashing", "recording the job"]

    def stage(name: str) -> None:
        if name in stages:
            steps.stage(name, stages.index(name), len(stages))
        else:  # reporting (its own bar) or queueing
            steps.close()
        if name == "scanning and hashing":
            scanning.start(None)
        elif name == "recording the job":
            scanning.close()

    started = time.perf_counter()
    try:
        result = submit_folder(settings, folder, group_by=group_by, pattern=pattern, runner=runner_for(settings),
                               hooks=SubmitHooks(stage=stage, scanned=scanning.update, start=bar.start,
                                                 progress=bar.update))
    finally:
        for shown_bar in (steps, scanning, bar):
            shown_bar.close()
    if wait and settings.broker_url and not result.summary.finished:
        result = _follow(settings, result, show_bar=not as_json and sys.stderr.isatty(), timeout=timeout)
    elapsed = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps(output.submission_json(result, elapsed)))
    else:
        click.echo(output.submission_text(result, elapsed))
    if result.unfinished:
        from worker.errors import UnfinishedError

        raise UnfinishedError(result.unfinished)
    failed = result.summary.counts.get("failed", 0)
    if strict and failed:
        raise click.ClickException(f"--strict: {failed} of job {result.job_id}'s {result.summary.total} studies "
                                   f"failed (`xrq status {result.job_id}` lists why)")


STALLED_AFTER = 3.0  # seconds without progress before `submit --wait` says why it waits
SAY_AGAIN_AFTER = 30.0  # and how often it says so again while nothing moves


def _follow(settings: Settings, result: Submission, *, show_bar: bool, timeout: float | None) -> Submission:
    """`submit --wait` with a broker: a progress bar fed from the database until the job is finished;
    a line on standard error when nothing moves (and whether any worker answers)."""
    from dataclasses import replace

    from worker import runtime
    from worker.follow import finished_count, follow_job, waiting_note

    bar = output.Progress(enabled=show_bar)
    seen = [finished_count(result.summary)]
    bar.start(result.summary.total - seen[0])

    def advance(summary: JobSummary) -> None:
        bar.update(finished_count(summary) - seen[0])
        seen[0] = finished_count(summary)

    said = [float("-inf")]

    def tick(summary: JobSummary, idle: float) -> None:
        if idle >= STALLED_AFTER and time.monotonic() - said[0] >= SAY_AGAIN_AFTER:
            said[0] = time.monotonic()
            click.echo(output.printable(waiting_note(settings, summary, idle)), err=True)

    try:
        final = follow_job(runtime.database(settings.database_url), result.job_id, on_change=advance, on_tick=tick,
                           timeout=timeout)
    finally:
        bar.close()
    return replace(result, summary=final)


def _distributed_text(settings: Settings, summaries: list[JobSummary]) -> str:
    """With a broker: where the waiting studies are (pending, queued, running) and which workers answer."""
    from worker.errors import BrokerUnavailableError
    from worker.follow import alive_workers, queue_depths

    lines = [f"job {s.job_id} waiting: {s.counts.get('pending', 0)} pending, {s.counts.get('queued', 0)} "
             f"queued, {s.counts.get('running', 0)} running" for s in summaries if not s.finished]
    try:
        depths = queue_depths(settings)
        lines.append("waiting on the broker: " + ", ".join(f"{n} in {name}" for name, n in depths.items()))
        found = alive_workers(settings)
    except BrokerUnavailableError as exc:
        return "\n".join([*lines, f"workers: unknown, {exc}"])
    if not found:
        return "\n".join([*lines, "workers: none answered within 1 s (start one with `xrq worker`)"])
    return "\n".join([*lines, f"workers: {len(found)} alive"] +
                     [f"  {w.name}  queues: {', '.join(w.queues)}" for w in found])


@click.command()
@click.argument("job", type=ID, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (docs/cli.md).")
@click.option("--limit", type=COUNT, default=20, help="Jobs listed without JOB.")
@click.pass_context
def status(ctx: click.Context, job: int | None, as_json: bool, limit: int) -> None:
    """Show one job (studies by status, failures with reasons) or the latest jobs.

    \b
    Examples:
      xrq status
      xrq status 3 --json
    """
    from db.queries import job_summary, list_jobs
    from worker import runtime

    settings = settings_from(ctx)
    db = runtime.database(settings.database_url)
    summaries = [job_summary(db, job)] if job is not None else list_jobs(db, limit=limit)
    if as_json:
        data = [s.as_dict() for s in summaries]
        click.echo(json.dumps(data[0] if job is not None else data))
    else:
        click.echo(output.status_text(summaries, detailed=job is not None))
        if job is None:
            from datetime import timedelta

            from db.queries import activity
            from db.schema import utcnow

            click.echo(output.activity_text(activity(db, utcnow() - timedelta(hours=1))))
        if settings.broker_url:
            click.echo(_distributed_text(settings, summaries))
