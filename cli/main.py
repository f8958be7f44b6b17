"""The `xrq` command. Each command parses, calls one library function, prints. Only cli/ imports click."""

from __future__ import annotations

from typing import Any

import click

from cli import backlog as backlog_commands
from cli import evaluate as evaluate_commands
from cli import jobs as job_commands
from cli import models as model_commands
from cli import reports as report_commands
from cli import train as train_commands
from cli import workers as worker_commands
from db.errors import DatabaseError
from model.errors import ModelError
from worker.errors import WorkerError

USER_ERRORS = (ModelError, DatabaseError, WorkerError)


class XrqGroup(click.Group):
    """Turns xrq's named errors into `Error: ...` and exit status 1, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=XrqGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--database-url", envvar="XRQ_DATABASE_URL", show_envvar=True,
              help="SQLAlchemy URL of the database  [default: sqlite:///xrq.db]")
@click.version_option(package_name="xrq")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None) -> None:
    """xrq: draft chest X-ray reports for folders of images, stored in SQL.

    \b
    Quick start (from the repository; models/demo is a tiny trained model):
      xrq submit examples/iu --model models/demo
      xrq reports --format jsonl
      xrq show 1000 -o study1000.png
    """
    ctx.obj = {"database_url": database_url}


cli.add_command(job_commands.submit)
cli.add_command(job_commands.status)
cli.add_command(report_commands.reports)
cli.add_command(report_commands.export)
cli.add_command(report_commands.show)
cli.add_command(model_commands.model)
cli.add_command(evaluate_commands.truth)
cli.add_command(evaluate_commands.evaluate)
cli.add_command(train_commands.train)
cli.add_command(worker_commands.worker)
cli.add_command(backlog_commands.backlog)


def main() -> None:
    cli(prog_name="xrq")
