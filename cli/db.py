"""`xrq db upgrade`, `xrq db current`: the schema, migrated when the operator says so."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from cli.context import settings_from


@click.group()
def db() -> None:
    """Migrate the database and see where its schema is.

    By default every xrq process migrates the database when it opens it. In production set
    XRQ_AUTO_MIGRATE=0 and run `xrq db upgrade` as a step of each upgrade: then a process that
    finds the schema behind its code stops with an error that says so.
    """


@db.command("upgrade")
@click.option("--json", "as_json", is_flag=True, help="Print the revisions as JSON.")
@click.pass_context
def upgrade(ctx: click.Context, as_json: bool) -> None:
    """Migrate the database to this xrq's newest schema (nothing to do: says so).

    \b
    Example:
      XRQ_DATABASE_URL=postgresql://xrq@db/xrq xrq db upgrade
    """
    from db.engine import migrate, schema_state

    with _engine(ctx) as (engine, shown):
        before = migrate(engine)
        after = schema_state(engine)
    if as_json:
        click.echo(json.dumps({"url": shown, "before": before.current, "after": after.current, "head": after.head}))
    elif before.current == after.current:
        click.echo(f"{shown}: already at revision {after.current}, the newest; nothing to do.")
    else:
        click.echo(f"{shown}: upgraded from revision {before.current or '(empty)'} to {after.current}.")


@db.command("current")
@click.option("--check", is_flag=True, help="Exit with status 1 unless the schema is the newest.")
@click.option("--json", "as_json", is_flag=True, help="Print the revisions as JSON.")
@click.pass_context
def current(ctx: click.Context, check: bool, as_json: bool) -> None:
    """Show the database's schema revision and whether it is this xrq's newest. Changes nothing.

    \b
    Examples:
      xrq db current
      xrq db current --check && echo up to date
    """
    from db.engine import schema_state

    with _engine(ctx) as (engine, shown):
        state = schema_state(engine)
    if as_json:
        click.echo(json.dumps({"url": shown, "current": state.current, "head": state.head, "state": state.state}))
    else:
        click.echo({
            "up-to-date": f"{shown}: revision {state.current}, the newest this xrq knows.",
            "empty": f"{shown}: no xrq tables yet; `xrq db upgrade` creates them (revision {state.head}).",
            "behind": f"{shown}: revision {state.current}, behind this xrq's {state.head}: run `xrq db upgrade`.",
            "newer": f"{shown}: revision {state.current}, unknown to this xrq (made by a newer xrq?).",
        }[state.state])
    if check and state.state != "up-to-date":
        ctx.exit(1)


@contextmanager
def _engine(ctx: click.Context) -> Iterator[tuple[Any, str]]:
    """The database of the command's settings (no migration on opening), and its URL without the password."""
    from db.engine import create

    engine = create(settings_from(ctx).database_url)
    try:
        yield engine, engine.url.render_as_string(hide_password=True)
    finally:
        engine.dispose()
