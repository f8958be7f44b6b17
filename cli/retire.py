"""`xrq jobs delete`: retire old jobs, optionally archiving them to a file first."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli import listing, output
from cli.context import ID, settings_from
from model.printable import printable

ARCHIVE_FORMATS = ("csv", "jsonl", "parquet")


@click.group()
def jobs() -> None:
    """Manage jobs: retire old ones."""


@jobs.command()
@click.argument("job_ids", metavar="JOB...", type=ID, nargs=-1, required=True)
@click.option("--archive", type=output.OutputPath("file", suffixes=(".parquet", ".csv", ".jsonl")),
              help="First write the jobs (every study: status, reason, report, images) to this file, as "
                   "`xrq export` does; nothing is deleted if that fails.")
@click.option("--keep-reports", is_flag=True,
              help="Keep the jobs' reports (and their job rows, as their provenance); delete the rest.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print what was deleted as JSON.")
@click.pass_context
def delete(ctx: click.Context, job_ids: tuple[int, ...], archive: Path | None, keep_reports: bool, yes: bool,
           as_json: bool) -> None:
    """Delete jobs: their studies' statuses, their images' rows, their reports (unless --keep-reports).

    A report that another job of the same model also counts moves to that job instead; studies nothing
    refers to any more go; evaluations stay. Safe while workers run: it deletes in short transactions,
    and refuses a job with studies queued or running.

    \b
    Examples:
      xrq jobs delete 3 --archive job3.parquet
      xrq jobs delete 3 4 --keep-reports --yes
    """
    from db.queries import export_count
    from db.retire import retire_job
    from worker import runtime

    if archive is not None:
        listing.load_export_libraries(output.format_from_name(archive, ARCHIVE_FORMATS, "parquet"))
    db = runtime.database(settings_from(ctx).database_url)
    total = export_count(db, list(job_ids))  # every job exists before anything is written or deleted
    if not yes:
        what = "their studies and images" + ("" if keep_reports else " and reports")
        click.confirm(f"Delete job(s) {', '.join(map(str, job_ids))} ({total} studies): {what}?", abort=True)
    if archive is not None:
        fmt = output.format_from_name(archive, ARCHIVE_FORMATS, "parquet")
        try:
            with listing.export_file(fmt, archive) as write:
                for batch in listing.export_rows(db, list(job_ids)):
                    write(batch)
        except OSError as exc:
            raise click.ClickException(f"cannot write {printable(str(archive))}: {exc.strerror or exc}; "
                                       "nothing was deleted") from exc
        if not as_json:
            click.echo(f"Archived {total} studies to {printable(str(archive))}")
    done = [retire_job(db, job_id, keep_reports=keep_reports) for job_id in job_ids]
    if as_json:
        click.echo(json.dumps([d.as_dict() for d in done]))
        return
    for d in done:
        kept = f", {d.reports_kept} reports kept (job row kept)" if d.reports_kept else ""
        click.echo(f"Job {d.job_id}: deleted {d.studies} studies' rows, {d.images} images' rows, "
                   f"{d.reports_deleted} reports, {d.orphans_deleted} studies nothing refers to; "
                   f"{d.reports_moved} reports moved to another job{kept}")
