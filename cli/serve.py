"""`xrq serve`, `xrq user ...`, `xrq study ...`: the review application, its accounts, its reader studies."""

from __future__ import annotations

import json
import sys

import click

from cli.context import settings_from, settings_options
from model.printable import printable

ROLES = ("reviewer", "admin")  # db.review_schema.ROLES (not imported: `xrq --help` stays free of SQLAlchemy)


@click.command()
@click.option("--host", default="127.0.0.1", help="Address to listen on (put a TLS proxy in front; README).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, help="Port to listen on.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, help="Server processes (more than 1: PostgreSQL).")
@settings_options("serve")
@click.option("--forwarded-allow-ips", metavar="IPS",
              help="Trust X-Forwarded-For/-Proto from these proxy addresses (e.g. 127.0.0.1).")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int, forwarded_allow_ips: str | None) -> None:
    """Run the review web application: radiologists correct, sign or reject drafts.

    Sessions are signed with XRQ_SECRET_KEY (set it, the same for every process, so that sessions
    survive a restart; without it a random key is made at start). Add users first with `xrq user add`.

    \b
    Examples:
      xrq user add alice --role admin
      xrq serve --port 8000
      XRQ_DATABASE_URL=postgresql://xrq@db/xrq xrq serve --workers 4 --https --forwarded-allow-ips 127.0.0.1
    """
    from web.app import WebConfig, secret_key
    from web.server import Listen, ServeError, run

    settings = settings_from(ctx)
    config = WebConfig(database_url=settings.database_url, secret_key=secret_key(settings),
                       https=settings.serve_https)
    try:
        run(config, Listen(host, port, workers, forwarded_allow_ips))
    except ServeError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def user() -> None:
    """Accounts of the review application (`xrq serve`)."""


def _password(stdin: bool) -> str:
    if stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise click.ClickException("no password on standard input")
        return line
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="reviewer", help="admin: also manages users.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.pass_context
def user_add(ctx: click.Context, name: str, role: str, password_stdin: bool) -> None:
    """Add a user; the password is asked for (twice), or read with --password-stdin.

    \b
    Examples:
      xrq user add alice --role admin
      printf '%s\\n' "$PASSWORD" | xrq user add bob --password-stdin
    """
    from web.auth import add_user
    from worker import runtime

    db = runtime.database(settings_from(ctx).database_url)
    account = add_user(db, name, _password(password_stdin), role)
    click.echo(f"Added {printable(account.name)} ({account.role})")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per user.")
@click.pass_context
def user_list(ctx: click.Context, as_json: bool) -> None:
    """List the users, their roles, and whether they are disabled or locked.

    \b
    Example:
      xrq user list
    """
    from db.accounts import accounts
    from db.schema import utcnow
    from worker import runtime

    now = utcnow()
    for a in accounts(runtime.database(settings_from(ctx).database_url)):
        state = "disabled" if a.disabled else "locked" if a.locked(now) else "active"
        last = a.last_login_at.isoformat() if a.last_login_at else None
        if as_json:
            click.echo(json.dumps({"name": a.name, "role": a.role, "state": state, "last_login_at": last}))
        else:
            click.echo(f"{printable(a.name):<24} {a.role:<9} {state:<9} last sign-in {last or 'never'}")


@user.command("disable")
@click.argument("name")
@click.pass_context
def user_disable(ctx: click.Context, name: str) -> None:
    """Disable a user: they cannot sign in, and their open sessions stop working.

    \b
    Example:
      xrq user disable bob
    """
    _set_disabled(ctx, name, True)


@user.command("enable")
@click.argument("name")
@click.pass_context
def user_enable(ctx: click.Context, name: str) -> None:
    """Enable a user again; also lifts a lock from failed sign-ins.

    \b
    Example:
      xrq user enable bob
    """
    _set_disabled(ctx, name, False)


def _set_disabled(ctx: click.Context, name: str, disabled: bool) -> None:
    from db.accounts import set_disabled
    from worker import runtime

    set_disabled(runtime.database(settings_from(ctx).database_url), name, disabled)
    click.echo(f"{'Disabled' if disabled else 'Enabled'} {printable(name)}")


@click.group()
def study() -> None:
    """Reader studies: readers compare two reports of a study, blinded, in `xrq serve`."""


@study.command("create")
@click.argument("name")
@click.option("--job", "jobs", type=int, multiple=True, help="A job whose reports are compared (once or twice).")
@click.option("--truth", "collections", multiple=True, metavar="COLLECTION",
              help="Compare with this imported ground truth (e.g. iu).")
@click.option("--reader", "readers", multiple=True, required=True, help="A user who reads (repeat for each).")
@click.option("--studies", type=click.IntRange(1, 100_000), default=50, help="How many studies to draw.")
@click.option("--seed", type=int, default=0, help="Seed of the draw and of the sides.")
@click.pass_context
def study_create(ctx: click.Context, name: str, jobs: tuple[int, ...], collections: tuple[str, ...],
                 readers: tuple[str, ...], studies: int, seed: int) -> None:
    """Make a reader study comparing two sources: two jobs, or a job and the ground truth.

    Studies with a report from both are drawn at random (seeded); each case shows the two reports
    side by side, sides randomised, labels hidden, and no ground truth.

    \b
    Examples:
      xrq study create draft-vs-truth --job 3 --truth iu --reader alice --reader bob --studies 50
      xrq study create old-vs-new --job 3 --job 5 --reader alice --reader bob --reader carol
    """
    from db.readers import StudyPlan, create
    from worker import runtime

    sources = [f"job:{j}" for j in jobs] + [f"truth:{c}" for c in collections]
    if len(sources) != 2:
        raise click.UsageError("compare exactly two sources: --job A --job B, or --job A --truth COLLECTION")
    plan = StudyPlan(name, (sources[0], sources[1]), tuple(readers), studies, seed)
    made = create(runtime.database(settings_from(ctx).database_url), plan)
    click.echo(f"Reader study {printable(name)}: {made} cases, {len(set(readers))} readers "
               f"({sources[0]} vs {sources[1]})")


@study.command("list")
@click.pass_context
def study_list(ctx: click.Context) -> None:
    """List the reader studies.

    \b
    Example:
      xrq study list
    """
    from db.readers import study_names
    from worker import runtime

    for name in study_names(runtime.database(settings_from(ctx).database_url)):
        click.echo(printable(name))


@study.command("results")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def study_results(ctx: click.Context, name: str, as_json: bool) -> None:
    """Preference rates with 95% confidence intervals (Wilson), errors per report by kind, and agreement
    between readers (Cohen's kappa for two, Fleiss' for more).

    \b
    Examples:
      xrq study results draft-vs-truth
      xrq study results draft-vs-truth --json
    """
    from worker import runtime
    from worker.readers import results, results_text

    found = results(runtime.database(settings_from(ctx).database_url), name)
    click.echo(json.dumps(found) if as_json else results_text(found))
