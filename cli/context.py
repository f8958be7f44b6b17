"""Settings for a command: XRQ_* variables with the group's and the command's options on top."""

from __future__ import annotations

from typing import Any

import click

from worker.settings import Settings


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    root = ctx.find_root()
    return Settings.from_env(database_url=(root.obj or {}).get("database_url"), **overrides)
