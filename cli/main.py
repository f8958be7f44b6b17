"""The `xrq` command. Each command parses, calls one library function, prints. Only cli/ imports click."""

from __future__ import annotations

from typing import Any

import click

from cli import backlog as backlog_commands
from cli import db as db_commands
from cli import dicom as dicom_commands
from cli import evaluate as evaluate_commands
from cli import health as health_commands
from cli import jobs as job_commands
from cli import models as model_commands
from cli import reports as report_commands
from cli import retire as retire_commands
from cli import serve as serve_commands
from cli import train as train_commands
from cli import workers as worker_commands
from cli.context import settings_options
from common.errors import XrqError
from db.errors import DatabaseError


class XrqGroup(click.Group):
    """Turns xrq's named errors into `Error: ...` and exit status 1, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except XrqError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            named = _driver_error(exc)
            if named is None:
                raise
            raise click.ClickException(str(named)) from None


def _driver_error(exc: BaseException) -> DatabaseError | None:
    """A database driver's error that a user can fix (a read-only file, a number too large), named."""
    if not (isinstance(exc, OverflowError) or type(exc).__module__.startswith("sqlalchemy")):
        return None
    from db.engine import driver_error

    return driver_error(exc)


@click.group(cls=XrqGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@settings_options("xrq", expose=("database_url", "log_level", "log_format"))
@click.version_option(package_name="xrq")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, log_level: str | None, log_format: str | None) -> None:
    """xrq: draft chest X-ray reports for folders of images, stored in SQL.

    Every option that has a variable (XRQ_...) can be set by either; worker/settings.py and
    docs/operations.md list them all.

    \b
    Quick start (from the repository; models/demo is a tiny trained model):
      xrq submit examples/iu --model models/demo
      xrq reports --format jsonl
      xrq show 1000 -o study1000.png
    """
    ctx.obj = {"database_url": database_url}
    if (log_level or log_format) and ctx.invoked_subcommand not in ("worker", "beat", "listen"):  # their own way
        from worker.logs import configure

        configure(log_level or "warning", log_format or "text")


cli.add_command(job_commands.submit)
cli.add_command(job_commands.status)
cli.add_command(retire_commands.jobs)
cli.add_command(report_commands.reports)
cli.add_command(report_commands.export)
cli.add_command(report_commands.show)
cli.add_command(model_commands.model)
cli.add_command(evaluate_commands.truth)
cli.add_command(evaluate_commands.evaluate)
cli.add_command(train_commands.train)
cli.add_command(worker_commands.worker)
cli.add_command(worker_commands.beat)
cli.add_command(backlog_commands.backlog)
cli.add_command(db_commands.db)
cli.add_command(health_commands.health)
cli.add_command(serve_commands.serve)
cli.add_command(serve_commands.user)
cli.add_command(serve_commands.study)
cli.add_command(dicom_commands.listen)
cli.add_command(dicom_commands.push)


def main() -> None:
    cli(prog_name="xrq")
