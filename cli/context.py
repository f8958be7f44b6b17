"""Options from the one table of settings (worker/settings.py), and the settings a command runs with.

`settings_options("submit")` gives a command an option for every setting the table lists for it, with
its variable and its default in `--help`. Values the command's body does not take as arguments are
kept on the context, and `settings_from(ctx)` puts them over the `XRQ_*` variables: the group's
options first (`xrq --database-url ... status`), the command's on top, explicit overrides last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from worker.settings import AUTO, DB_INT_MAX, SETTING, SETTINGS, BrokerOptions, Setting, Settings

F = TypeVar("F", bound=Callable[..., Any])
GROUP = "xrq"  # the commands of a setting that is an option of `xrq` itself
_KEY = "xrq.settings"  # ctx.meta (shared by a command and its group): name -> (value, from the command line)
_FLAGS = {("worker", "log_level"): ("-l", "--loglevel", "--log-level"),  # older spellings kept
          ("listen", "listen_aet"): ("--aet", "--listen-aet"), ("listen", "listen_port"): ("--port", "--listen-port"),
          ("listen", "listen_bind"): ("--bind", "--listen-bind"),
          ("serve", "serve_https"): ("--https", "--serve-https")}
_OWN = {("listen", "listen_allow")}  # options the command declares itself (--allow, given several times)


class CountOrAuto(click.ParamType):
    """A whole number from 1 to `maximum`, or `auto` (xrq chooses): what XRQ_BATCH_SIZE and
    XRQ_DECODE_WORKERS take."""

    name = "N|auto"

    def __init__(self, maximum: int = DB_INT_MAX) -> None:
        self.maximum = maximum

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        text = str(value).strip().lower()
        if text == AUTO:
            return AUTO
        if text.isdigit() and 1 <= int(text) <= self.maximum:
            return int(text)
        if text.isdigit() and int(text) > self.maximum:
            self.fail(f"{value} is more than {self.maximum}, the most this takes (or auto)", param, ctx)
        self.fail(f"{value!r} is neither a whole number of at least 1 nor auto", param, ctx)


ID = click.IntRange(1, DB_INT_MAX)  # a job, study or evaluation id: what the database can hold
COUNT = click.IntRange(1, DB_INT_MAX)  # --limit and the like


class SettingOption(click.Option):
    """An option of a setting: `--help` shows its variable and the table's default (the option itself
    defaults to None, so that an unset option leaves the variable, or the group's option, in force)."""

    def __init__(self, *args: Any, setting: Setting, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setting = setting

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        if self.setting.shown_default is not None:
            extra["default"] = self.setting.shown_default
        return extra


def _type(setting: Setting) -> click.ParamType | None:
    if setting.kind == "count":
        return CountOrAuto(setting.maximum or DB_INT_MAX)
    if setting.kind == "int":
        return click.IntRange(setting.minimum, setting.maximum)
    if setting.kind == "choice":
        return click.Choice(setting.choices, case_sensitive=False)
    return None


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep an option's value for `settings_from`; one typed on the command line beats a variable."""
    source = ctx.get_parameter_source(param.name) if param.name else None
    if value is None or param.name is None or source not in (ParameterSource.COMMANDLINE,
                                                              ParameterSource.ENVIRONMENT):
        return value  # a default: the table's, applied by Settings itself
    typed = source is ParameterSource.COMMANDLINE
    kept = ctx.meta.setdefault(_KEY, {})
    if typed or not kept.get(param.name, (None, False))[1]:
        kept[param.name] = (value, typed)
    return value


def setting_option(command: str, setting: Setting, *, expose: bool = False) -> Callable[[F], F]:
    """The option of one setting for `command`; `expose`: the command's function takes its value."""
    flag = "--" + setting.name.replace("_", "-")
    names = _FLAGS.get((command, setting.name), (flag,))
    if setting.kind == "bool":
        names = tuple(f"{name}/--no-{name[2:]}" for name in names)
    envvar: list[str] = [setting.var, *setting.old_names]
    return click.option(
        *names, setting.name, cls=SettingOption, setting=setting, type=_type(setting), default=None,
        envvar=envvar if setting.old_names else setting.var, show_envvar=True, help=setting.help,
        expose_value=expose, callback=_remember, is_flag=True if setting.kind == "bool" else None,
        metavar="DIR" if setting.name in ("model", "cache_dir", "inbox", "listen_inbox") else None,
    )


def settings_options(command: str, *, expose: Iterable[str] = ()) -> Callable[[F], F]:
    """Every setting the table lists for `command`, as options (in the table's order in `--help`)."""
    exposed = set(expose)

    def decorate(f: F) -> F:
        for setting in reversed(SETTINGS):
            if command in setting.commands and (command, setting.name) not in _OWN and not setting.secret:
                f = setting_option(command, setting, expose=setting.name in exposed)(f)
        return f

    return decorate


def _given(ctx: click.Context, *, broker: bool) -> dict[str, Any]:
    kept = ctx.meta.get(_KEY, {})
    names = {s.name for s in SETTINGS if s.broker == broker}
    return {name: value for name, (value, _) in kept.items() if name in names}


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    """The settings of this command: variables, the options given (group, then command), then `overrides`.

    A count option given as `auto` sets its setting to None (auto) even over a variable.
    """
    given = {**_given(ctx, broker=False), **{k: v for k, v in overrides.items() if v is not None}}
    autos = {k: None for k, v in given.items() if v == AUTO and SETTING[k].kind == "count"}
    settings = Settings.from_env(**{k: v for k, v in given.items() if k not in autos})
    if autos:
        settings = settings.replace(**autos)
    _apply(settings)
    return settings


def broker_options_from(ctx: click.Context) -> BrokerOptions:
    """The broker-only settings: variables with this command's options on top."""
    return BrokerOptions.from_env(**_given(ctx, broker=True))


def _apply(settings: Settings) -> None:
    """What a setting changes for the whole process: whether opening a database migrates it."""
    from db.engine import set_auto_migrate

    set_auto_migrate(settings.auto_migrate)

