"""`xrq reports`, `xrq export`, `xrq show`: get reports out as text, files and pictures."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cli import listing, output
from cli.context import COUNT, settings_from
from cli.documents import DOCUMENT_FORMATS, export_documents
from model.defaults import ATTENTION_METHODS
from model.printable import printable

if TYPE_CHECKING:
    from db.engine import Database
    from db.queries import ReportFilter, ReportRow

DATE = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


REPORT_FORMATS = ("table", "csv", "jsonl")
EXPORT_FORMATS = ("csv", "jsonl", "parquet", *DOCUMENT_FORMATS)


class CursorType(click.ParamType):
    """A keyset cursor, `STUDY.SECOND` (study id, then model id for reports or job id for failures)."""

    name = "CURSOR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        study, _, second = str(value).partition(".")
        if not (study.isdigit() and second.isdigit()):
            self.fail(f"{value!r} is not a cursor: give STUDY.MODEL as a table page's last line prints it "
                      "(e.g. 1234.1)", param, ctx)
        return int(study), int(second)


def page_size() -> int:
    """Rows of a table page on a terminal: the terminal's height less the header and footer lines."""
    return max(10, shutil.get_terminal_size((120, 24)).lines - 4)


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
@click.option("--limit", type=COUNT, help="At most this many rows. [default: all; a page for a table on a terminal]")
@click.option("--offset", type=click.IntRange(min=0), default=0,
              help="Skip this many rows first (the database still walks them; --after does not).")
@click.option("--after", type=CursorType(), help="Only rows after this cursor (STUDY.MODEL, or STUDY.JOB with "
                                                 "--status failed), as a table page's last line prints it.")
@click.option("--order-by", "order", type=click.Choice(["study", "confidence"]), default="study", show_default=True,
              help="study: the study order (the cursor's); confidence: the least sure reports first.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), help="Only reports at least this sure (0..1).")
@click.option("--max-confidence", type=click.FloatRange(0, 1), help="Only reports at most this sure (0..1).")
@click.pass_context
def reports(ctx: click.Context, job: int | None, model: str | None, since: datetime | None,
            until: datetime | None, status: str, contains: str | None, fmt: str | None, out: Path | None,
            limit: int | None, offset: int, after: tuple[int, int] | None, order: str, min_confidence: float | None,
            max_confidence: float | None) -> None:
    """Print stored reports (or failed studies) as a table, CSV or JSON lines, as they are read.

    Rows come in study order (or, with --order-by confidence, least sure first) and leave as they are
    read, in constant memory whatever their number. The table is for people (names and reports with
    control characters escaped, one line a row); on a terminal it shows a page and says how many more
    rows there are and how to get them. CSV and JSON lines hold the text as stored (to a terminal, CSV
    escapes control characters too; a CSV cell that a spreadsheet would run as a formula starts with ':
    cli/safecsv.py). `confidence` is how
    sure the model was (exp of the mean log-probability of the report's tokens, 0..1); JSON lines also
    carry `token_logprobs`.

    \b
    Examples:
      xrq reports --job 1
      xrq reports --text effusion --since 2026-11-01 -o effusions.jsonl
      xrq reports --status failed
      xrq reports --format jsonl | head -3
      xrq reports --order-by confidence --limit 20     (the drafts to read first)
      xrq reports --max-confidence 0.5 -o unsure.csv
    """
    from db.listing import report_rows
    from db.queries import ReportFilter
    from db.review import with_reviews
    from worker import runtime

    fmt = fmt or output.format_from_name(out, REPORT_FORMATS, "table")
    db = runtime.database(settings_from(ctx).database_url)
    if status == "failed" and (order != "study" or min_confidence is not None or max_confidence is not None):
        raise click.UsageError("failed studies have no confidence: --order-by confidence, --min-confidence "
                               "and --max-confidence go with reports (--status done)")
    if order == "confidence" and after is not None:
        raise click.UsageError("--after is a cursor in study order; with --order-by confidence page with --offset")
    where = ReportFilter(job_id=job, model=model, since=_utc(since), until=_utc(until), text=contains,
                         status=status, min_confidence=min_confidence, max_confidence=max_confidence,
                         order_by=order)
    if fmt == "table" and out is None and limit is None and sys.stdout.isatty():
        _table_page(db, where, offset=offset, after=after)
        return
    rows = report_rows(db, where, limit=limit, offset=offset, after=after)
    if status == "done":
        rows = with_reviews(db, rows)
    if out is None:
        listing.write_reports(rows, fmt, sys.stdout, failed=status == "failed")
        return
    try:
        with out.open("w", encoding="utf-8", newline="") as f:
            n = listing.write_reports(rows, fmt, f, failed=status == "failed")
    except OSError as exc:
        raise click.ClickException(f"cannot write {printable(str(out))}: {exc.strerror or exc}") from exc
    click.echo(f"Wrote {n} rows to {printable(str(out))}", err=True)


def _table_page(db: Database, where: ReportFilter, *, offset: int, after: tuple[int, int] | None) -> None:
    """A page of the table on a terminal, then how many rows are left and the option for the next page."""
    from db.listing import count_rows, cursor_of, report_rows

    size = page_size()
    shown: list[ReportRow] = []

    def page() -> Iterator[ReportRow]:
        for row in report_rows(db, where, limit=size + 1, offset=offset, after=after):
            if len(shown) == size:
                return  # the row past the page: there are more
            shown.append(row)
            yield row

    listing.write_reports(page(), "table", sys.stdout, failed=where.status == "failed")
    if len(shown) < size:
        return
    if where.order_by == "confidence":  # no keyset cursor in this order: the next page is an offset
        left = count_rows(db, where) - offset - size
        if left > 0:
            click.echo(f"-- {size} rows shown, {left} more: add --offset {offset + size} for the next page, "
                       "--limit N for N rows, or --format jsonl / -o FILE for all of them --")
        return
    cursor = cursor_of(shown[-1], where)
    left = count_rows(db, where, after=cursor)
    if left:
        click.echo(f"-- {size} rows shown, {left} more: add --after {cursor[0]}.{cursor[1]} for the next page, "
                   "--limit N for N rows, or --format jsonl / -o FILE for all of them --")


@click.command()
@click.argument("jobs", type=int, nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS),
              help="sr: a DICOM Structured Report per report of a DICOM study, into the folder -o; fhir: "
                   "FHIR R4 DiagnosticReports, one a line.  [default: from the -o file's name (.csv, .jsonl, "
                   ".parquet), else csv]")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="The file to write, in a folder that exists (for --format sr: a folder, made if absent).")
@click.pass_context
def export(ctx: click.Context, jobs: tuple[int, ...], fmt: str | None, out: Path) -> None:
    """Write whole jobs (every study: status, reason, report, images) to CSV, JSON lines or Parquet.

    Typed for pandas: integers stay integers, `reported_at` is UTC with its offset, and `images` is
    a list (joined with `;` in CSV). `confidence` is how sure the model was (0..1); JSON lines and
    Parquet also carry `token_logprobs`, each token's natural-log probability (a list column).
    `--format sr` and `--format fhir` write the reports as documents for a PACS and an EHR instead
    (docs/conformance.md); patient data comes from the DICOM files.

    \b
    Examples:
      xrq export 1 -o job1.csv
      xrq export 1 2 3 -o night.parquet
      xrq export 1 --format sr -o srs/
      xrq export 1 --format fhir -o reports.ndjson
    """
    from db.queries import export_count
    from worker import runtime

    if fmt in DOCUMENT_FORMATS:
        export_documents(ctx, jobs, fmt, out)
        return
    fmt = fmt or output.format_from_name(out, EXPORT_FORMATS, "csv")
    out = output.output_file(out)
    listing.load_export_libraries(fmt)
    db = runtime.database(settings_from(ctx).database_url)
    total = export_count(db, list(jobs))  # every job exists before the file is made
    bar = output.Progress(output.stderr_is_terminal(), desc="Exporting")
    n = 0
    try:
        with listing.export_file(fmt, out) as write:
            bar.start(total)
            for batch in listing.export_rows(db, list(jobs)):
                write(batch)
                n += len(batch)
                bar.update(len(batch))
    except OSError as exc:
        raise click.ClickException(f"cannot write {printable(str(out))}: {exc.strerror or exc}") from exc
    finally:
        bar.close()
    click.echo(f"Wrote {n} studies of {len(jobs)} job(s) to {printable(str(out))}")


@click.command()
@click.argument("uid", required=False)
@click.option("--id", "study_id", type=int, help="The study by its database id (`study_id` in `xrq reports`) "
                                                 "instead of its uid.")
@click.option("--job", type=int, help="With a study: its report by this job's model. Alone: every study of the job.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="A .png file for one study; a folder for --job (made if absent, in a folder that exists).")
@click.option("--attention", is_flag=True,
              help="Also draw where the model looked for each sentence (NAME-attention.png beside each picture) "
                   "and print the report with its unsure words marked.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="With --attention: words the model gave a lower probability are marked [like this].")
@click.option("--attention-method", "method", type=click.Choice(ATTENTION_METHODS),
              default=ATTENTION_METHODS[0], show_default=True,
              help="With --attention: the decoder's raw cross-attention; relevance, that attention weighted by what "
                   "raised each sentence's words and carried back through the encoder (a backward pass a sentence); "
                   "occlusion, how far each sentence's probability falls with each window of patches painted over "
                   "(a pass a window: the one whose maps fall on the finding; fast on a GPU, slow on a CPU).")
@click.pass_context
def show(ctx: click.Context, uid: str | None, study_id: int | None, job: int | None, out: Path, attention: bool,
         threshold: float, method: str) -> None:
    """Draw a study's images beside its report, with the ground truth and scores when known.

    UID is the study's uid, as `xrq reports` lists it (1000 for `1000_IM-0003-1001.dcm.png`);
    --id names a study by its database id instead.

    \b
    Examples:
      xrq show 1000 -o study1000.png
      xrq show --id 3 -o study3.png
      xrq show --job 1 -o pictures/     (a PNG per study, named by uid, and an index.html)
      xrq show 1000 -o study1000.png --attention     (+ study1000-attention.png)
      xrq show 1000 -o study1000.png --attention --attention-method occlusion

    With --attention the report's stored tokens go through its model once more (teacher-forced, one
    pass): for each sentence, the decoder's cross-attention over each view, averaged over heads, layers
    and the sentence's tokens, drawn as a heat map over the image.
    """
    from worker.show import show_job, show_study, show_study_attention

    settings = settings_from(ctx)
    if uid is not None and study_id is not None:
        raise click.UsageError("give a study's UID or its --id, not both")
    if uid is None and study_id is None:
        if job is None:
            raise click.UsageError("give a study UID (or --id), or --job ID for every study of a job")
        output.output_folder(out)
        bar = output.Progress(output.stderr_is_terminal(), desc="Drawing")
        try:
            index = show_job(settings, job, out, on_start=bar.start, progress=bar.update, attention=attention,
                             threshold=threshold, method=method)
        finally:
            bar.close()
        click.echo(f"Wrote {printable(str(index))}")
    elif attention:
        output.output_file(out, suffixes=(".png",))
        picture, shown = show_study_attention(settings, out, uid=uid, study_id=study_id, job_id=job,
                                              threshold=threshold, method=method)
        sure = "" if shown.confidence is None else f" (confidence {shown.confidence:.2f})"
        click.echo(f"Report{sure}, {shown.unsure_words} word(s) below {threshold:g} in [brackets]:")
        click.echo(f"  {printable(shown.marked_report)}")
        click.echo(f"Wrote {printable(str(picture))}")
        click.echo(f"Wrote {printable(str(shown.picture))} ({shown.sentences} sentence(s) x views)")
    else:
        output.output_file(out, suffixes=(".png",))
        picked = show_study(settings, out, uid=uid, study_id=study_id, job_id=job,
                            on_pick=lambda line: click.echo(printable(line), err=True))
        click.echo(f"Wrote {printable(str(picked))}")
