"""`xrq export --format sr|fhir`: reports as DICOM Structured Reports and FHIR DiagnosticReports."""

from __future__ import annotations

from pathlib import Path

import click

from cli import output
from cli.context import settings_from
from model.printable import printable

DOCUMENT_FORMATS = ("sr", "fhir")


def export_documents(ctx: click.Context, jobs: tuple[int, ...], fmt: str, out: Path) -> None:
    """Write the jobs' reports as SR files into the folder `out`, or as FHIR NDJSON into the file `out`."""
    from worker.documents import export_fhir, export_sr

    settings = settings_from(ctx)
    if fmt == "sr":
        folder = output.output_folder(out)
        folder.mkdir(exist_ok=True)
        result = export_sr(settings, jobs, folder)
        for uid, why in result.skipped:
            click.echo(f"No SR for study {printable(uid)}: {why}", err=True)
        click.echo(f"Wrote {result.written} SR file(s) for {result.reports} report(s) of {len(jobs)} job(s) "
                   f"to {printable(str(folder))}")
        if result.reports and not result.written:
            raise click.ClickException("no report of these jobs is of a DICOM study; use --format fhir")
    else:
        result = export_fhir(settings, jobs, output.output_file(out))
        click.echo(f"Wrote {result.written} FHIR DiagnosticReport(s) of {len(jobs)} job(s) to {printable(str(out))}")
