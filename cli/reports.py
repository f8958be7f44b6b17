"""`xrq reports`, `xrq export`, `xrq show`: get reports out as text, files and pictures."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cli import output
from cli.context import settings_from
from model.printable import printable

DATE = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


REPORT_FORMATS = ("table", "csv", "jsonl")
EXPORT_FORMATS = ("csv", "jsonl", "parquet")


@click.command()
@click.option("--job", type=int, help="Only the reports of this job.")
@click.option("--model", help="Only reports by this model (its name).")
@click.option("--since", type=DATE, help="Only reports made at or after this UTC date/time.")
@click.option("--until", type=DATE, help="Only reports made before this UTC date/time.")
@click.option("--status", type=click.Choice(["done", "failed"]), default="done",
              help="done: reports; failed: failed studies with their reasons.")
@click.option("--text", "contains", metavar="TEXT", help="Only reports containing TEXT (any case).")
@click.option("--format", "fmt", type=click.Choice(REPORT_FORMATS),
              help="[default: from the -o file's name (.csv, .jsonl), else table]")
@click.option("-o", "--output", "out", type=output.OutputPath("file"),
              help="Write to this file (in a folder that exists) instead of standard output.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@click.pass_context
def reports(ctx: click.Context, job: int | None, model: str | None, since: datetime | None,
            until: datetime | None, status: str, contains: str | None, fmt: str | None, out: Path | None,
            limit: int | None) -> None:
    """Print stored reports (or failed studies) as a table, CSV or JSON lines.

    The table is for people (names and reports with control characters escaped, one line a row);
    CSV and JSON lines hold the text as stored.

    \b
    Examples:
      xrq reports --job 1
      xrq reports --text effusion --since 2026-11-01 -o effusions.jsonl
      xrq reports --status failed
    """
    from db.queries import ReportFilter
    from db.queries import reports as query_reports
    from worker import runtime

    fmt = fmt or output.format_from_name(out, REPORT_FORMATS, "table")
    db = runtime.database(settings_from(ctx).database_url)
    where = ReportFilter(job_id=job, model=model, since=_utc(since), until=_utc(until), text=contains,
                         status=status)
    rows = query_reports(db, where=where, limit=limit)
    text = output.reports_text(rows, fmt)
    if out is None:
        click.echo(text, nl=False)
    else:
        output.write_text(out, text)
        click.echo(f"Wrote {len(rows)} rows to {printable(str(out))}", err=True)


@click.command()
@click.argument("jobs", type=int, nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS),
              help="[default: from the -o file's name (.csv, .jsonl, .parquet), else csv]")
@click.option("-o", "--output", "out", type=output.OutputPath("file"), required=True,
              help="The file to write, in a folder that exists.")
@click.pass_context
def export(ctx: click.Context, jobs: tuple[int, ...], fmt: str | None, out: Path) -> None:
    """Write whole jobs (every study: status, reason, report, images) to CSV, JSON lines or Parquet.

    Typed for pandas: integers stay integers, `reported_at` is UTC with its offset, and `images` is
    a list (joined with `;` in CSV).

    \b
    Examples:
      xrq export 1 -o job1.csv
      xrq export 1 2 3 -o night.parquet
    """
    from db.queries import export_batches, export_count
    from worker import runtime

    fmt = fmt or output.format_from_name(out, EXPORT_FORMATS, "csv")
    write = output.export_writer(fmt)
    db = runtime.database(settings_from(ctx).database_url)
    bar = output.Progress(output.stderr_is_terminal(), desc="Exporting")
    rows: list[dict[str, Any]] = []
    try:
        bar.start(export_count(db, list(jobs)))
        for batch in export_batches(db, list(jobs)):
            rows += batch
            bar.update(len(batch))
    finally:
        bar.close()
    try:
        write(rows, out)
    except OSError as exc:
        raise click.ClickException(f"cannot write {printable(str(out))}: {exc.strerror or exc}") from exc
    click.echo(f"Wrote {len(rows)} studies of {len(jobs)} job(s) to {printable(str(out))}")


@click.command()
@click.argument("uid", required=False)
@click.option("--id", "study_id", type=int, help="The study by its database id (`study_id` in `xrq reports`) "
                                                 "instead of its uid.")
@click.option("--job", type=int, help="With a study: its report by this job's model. Alone: every study of the job.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="A .png file for one study; a folder for --job (made if absent, in a folder that exists).")
@click.pass_context
def show(ctx: click.Context, uid: str | None, study_id: int | None, job: int | None, out: Path) -> None:
    """Draw a study's images beside its report, with the ground truth and scores when known.

    UID is the study's uid, as `xrq reports` lists it (1000 for `1000_IM-0003-1001.dcm.png`);
    --id names a study by its database id instead.

    \b
    Examples:
      xrq show 1000 -o study1000.png
      xrq show --id 3 -o study3.png
      xrq show --job 1 -o pictures/     (a PNG per study, named by uid, and an index.html)
    """
    from worker.show import show_job, show_study

    settings = settings_from(ctx)
    if uid is not None and study_id is not None:
        raise click.UsageError("give a study's UID or its --id, not both")
    if uid is None and study_id is None:
        if job is None:
            raise click.UsageError("give a study UID (or --id), or --job ID for every study of a job")
        output.output_folder(out)
        bar = output.Progress(output.stderr_is_terminal(), desc="Drawing")
        try:
            index = show_job(settings, job, out, on_start=bar.start, progress=bar.update)
        finally:
            bar.close()
        click.echo(f"Wrote {printable(str(index))}")
    else:
        output.output_file(out, suffixes=(".png",))
        picked = show_study(settings, out, uid=uid, study_id=study_id, job_id=job,
                            on_pick=lambda line: click.echo(printable(line), err=True))
        click.echo(f"Wrote {printable(str(picked))}")
