"""`xrq reports`, `xrq export`, `xrq show`: get reports out as text, files and pictures."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from cli import output
from cli.context import settings_from

DATE = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@click.command()
@click.option("--job", type=int, help="Only the reports of this job.")
@click.option("--model", help="Only reports by this model (its name).")
@click.option("--since", type=DATE, help="Only reports made at or after this UTC date/time.")
@click.option("--until", type=DATE, help="Only reports made before this UTC date/time.")
@click.option("--status", type=click.Choice(["done", "failed"]), default="done",
              help="done: reports; failed: failed studies with their reasons.")
@click.option("--text", "contains", metavar="TEXT", help="Only reports containing TEXT (any case).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default="table")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of standard output.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@click.pass_context
def reports(ctx: click.Context, job: int | None, model: str | None, since: datetime | None,
            until: datetime | None, status: str, contains: str | None, fmt: str, out: Path | None,
            limit: int | None) -> None:
    """Print stored reports (or failed studies) as a table, CSV or JSON lines.

    \b
    Examples:
      xrq reports --job 1
      xrq reports --text effusion --since 2026-11-01 --format jsonl -o effusions.jsonl
      xrq reports --status failed
    """
    from db.queries import ReportFilter
    from db.queries import reports as query_reports
    from worker import runtime

    db = runtime.database(settings_from(ctx).database_url)
    where = ReportFilter(job_id=job, model=model, since=_utc(since), until=_utc(until), text=contains,
                         status=status)
    rows = query_reports(db, where=where, limit=limit)
    text = output.reports_text(rows, fmt)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"Wrote {len(rows)} rows to {out}", err=True)


@click.command()
@click.argument("jobs", type=int, nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]), default="csv")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The file to write.")
@click.pass_context
def export(ctx: click.Context, jobs: tuple[int, ...], fmt: str, out: Path) -> None:
    """Write whole jobs (every study: status, reason, report, images) to CSV, JSON lines or Parquet.

    \b
    Examples:
      xrq export 1 -o job1.csv
      xrq export 1 2 3 --format parquet -o night.parquet
    """
    import pandas as pd

    from db.queries import export_rows
    from worker import runtime

    rows = export_rows(runtime.database(settings_from(ctx).database_url), list(jobs))
    frame = pd.DataFrame(rows, columns=["job_id", "study_id", "uid", "status", "error", "attempts", "model",
                                        "report", "reported_at", "reported_by_job", "images"])
    if fmt == "csv":
        frame.to_csv(out, index=False)
    elif fmt == "jsonl":
        frame.to_json(out, orient="records", lines=True, date_format="iso")
    else:
        frame.to_parquet(out, index=False)
    click.echo(f"Wrote {len(frame)} studies of {len(jobs)} job(s) to {out}")


@click.command()
@click.argument("study", required=False)
@click.option("--job", type=int, help="With STUDY: its report by this job's model. Alone: every study of the job.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="A .png file for one study; a folder for --job.")
@click.pass_context
def show(ctx: click.Context, study: str | None, job: int | None, out: Path) -> None:
    """Draw a study's images beside its report, with the ground truth and scores when known.

    \b
    Examples:
      xrq show 1000 -o study1000.png
      xrq show --job 1 -o pictures/     (one PNG per study and an index.html)
    """
    from worker.show import show_job, show_study

    settings = settings_from(ctx)
    if study is None:
        if job is None:
            raise click.UsageError("give a STUDY (id or uid), or --job ID for every study of a job")
        click.echo(f"Wrote {show_job(settings, job, out)}")
    else:
        click.echo(f"Wrote {show_study(settings, study, out, job_id=job)}")
