"""Every setting xrq reads, in one place: `SETTINGS`, one table of `XRQ_*` variables.

Each row names a setting (the variable is `XRQ_` + its name in capitals), its kind, its default, one
line of help and the commands that take it as an option (`xrq` itself: an option of the group, before
the command). The CLI builds its options from this table (cli/context.py), so `--help` shows each
one's variable and default from here; docs/operations.md lists the same rows (a test compares them).

`Settings` holds the settings of the work itself, `BrokerOptions` (rows marked broker) the ones only
the Celery app needs. Precedence: the default, then the variable, then the option.
XRQ_DECODE_THREADS is XRQ_DECODE_WORKERS's old name, still read.

This module imports neither celery nor torch nor SQLAlchemy: the CLI reads settings without them. The
generation defaults and limits come from model/defaults.py, which imports no torch either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from model.defaults import DEFAULT_MAX_NEW_TOKENS, MAX_BEAMS, GenerationSettings
from worker.errors import SettingsError

AUTO = "auto"  # the value of XRQ_BATCH_SIZE and XRQ_DECODE_WORKERS that lets xrq choose
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
DB_INT_MAX = 2**31 - 1  # the largest id or count a PostgreSQL INTEGER column holds
MAX_BATCH_SIZE = 65536


@dataclass(frozen=True)
class Setting:
    """One row of the table. `kind`: text, int, count (a whole number or auto: None), bool, cron, choice,
    url (checked for its scheme and port here, so a typo is named before anything connects)."""

    name: str
    kind: str
    default: Any
    help: str
    commands: tuple[str, ...] = ()
    shown: str | None = None  # the default as people read it, where the value itself says little
    minimum: int = 1
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    old_names: tuple[str, ...] = ()
    broker: bool = False  # read by BrokerOptions, not Settings
    schemes: tuple[str, ...] = ()  # a url's schemes xrq can use (a "+driver" after one is allowed)
    secret: bool = False  # a variable only, never an option (`ps` shows a command line); never logged

    @property
    def var(self) -> str:
        return f"XRQ_{self.name.upper()}"

    @property
    def shown_default(self) -> str | None:
        """The default as `--help` and the docs show it; None when there is none (unset)."""
        if self.shown is not None:
            return self.shown
        if self.default is None or self.default == "":
            return None
        if self.kind == "bool":
            return "1" if self.default else "0"
        return str(self.default)

    def parse(self, raw: str) -> Any:
        """The value of a variable as text, typed and checked; SettingsError names the variable."""
        text = raw.strip()
        if self.kind in ("int", "count"):
            if self.kind == "count" and text.lower() == AUTO:
                return None
            try:
                value = int(text)
            except ValueError:
                also = " or auto" if self.kind == "count" else ""
                raise SettingsError(f"{self.var} must be a whole number{also}, not {raw!r}") from None
            return self.check(value)
        if self.kind == "bool":
            if text.lower() not in _TRUE | _FALSE:
                raise SettingsError(f"{self.var} must be 1 or 0 (true or false), not {raw!r}")
            return text.lower() in _TRUE
        if self.kind == "choice":
            return self.check(text.lower())
        return self.check(raw)

    def check(self, value: Any) -> Any:
        """`value` if this setting can take it, else SettingsError saying what it can take."""
        if value is None:
            return None
        if self.kind in ("int", "count"):
            if value < self.minimum:
                raise SettingsError(f"{self.var} must be at least {self.minimum}, not {value}")
            if self.maximum is not None and value > self.maximum:
                raise SettingsError(f"{self.var} must be at most {self.maximum}, not {value}")
        if self.kind == "choice" and value not in self.choices:
            raise SettingsError(f"{self.var} must be one of {', '.join(self.choices)}, not {value!r}")
        if self.kind == "cron":
            check_cron(self.var, str(value))
        if self.kind == "url" and value:
            check_url(self.var, str(value), self.schemes)
        return value


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
# Cron fields: (name, lowest, highest, names accepted in place of numbers)
_CRON = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
         ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
         ("weekday", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")))
_CRON_ITEM = re.compile(r"^(\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(\d+))?$")


def check_cron(var: str, value: str) -> None:
    """SettingsError naming `var` unless `value` is five cron fields within their ranges (what
    Celery's crontab takes: numbers, ranges, lists, steps, month and weekday names)."""
    parts = value.split()
    if len(parts) != 5:
        raise SettingsError(f"{var} must have five fields (minute hour day month weekday), not {value!r}")
    for text, (name, low, high, names) in zip(parts, _CRON, strict=True):
        for item in text.lower().split(","):
            found = _CRON_ITEM.match(item)
            stepped = found is not None and found.group(2) is not None
            if found is None or (stepped and (int(found.group(2)) == 0 or not (
                    found.group(1) == "*" or "-" in found.group(1)))):
                raise SettingsError(f"{var}: the {name} field {text!r} is not cron (e.g. 5, 1-5, */15, 1,3)")
            if found.group(1) == "*":
                continue
            for bound in found.group(1).split("-"):
                number = names.index(bound) + (low if name == "month" else 0) if bound in names else (
                    int(bound) if bound.isdigit() else None)
                if number is None or not low <= number <= high:
                    raise SettingsError(f"{var}: the {name} field {text!r} must be within {low}-{high} "
                                        f"(minute hour day month weekday), in {value!r}")


def hide_password(url: str) -> str:
    """`url` with its password (if any) shown as ***."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':')[0]}:***@{host}{slash}{path}"


def check_url(var: str, value: str, schemes: tuple[str, ...]) -> None:
    """SettingsError naming `var` (never the password) unless `value` has a scheme in `schemes` and,
    if it names a port, a number from 1 to 65535."""
    shown = hide_password(value)
    scheme = value.partition("://")[0].lower() if "://" in value else ""
    if not scheme or scheme.split("+")[0] not in schemes:
        raise SettingsError(f"{var} is {shown!r}: {'no' if not scheme else 'an unknown'} scheme; it must start "
                            f"with one of {', '.join(s + ('+...://' if s == 'sqla' else '://') for s in schemes)}")
    try:
        urlsplit(value).port  # noqa: B018  (reading it checks it: ValueError for a bad one)
    except ValueError as exc:
        raise SettingsError(f"{var} is {shown!r}: a bad port ({exc}); a port is a number from 1 to 65535") from None
    if urlsplit(value).port == 0:
        raise SettingsError(f"{var} is {shown!r}: a bad port (0); a port is a number from 1 to 65535")


_WORK = ("submit", "worker", "backlog", "listen")  # the commands that run the pipeline (in-process or as a worker)

SETTINGS: tuple[Setting, ...] = (
    Setting("database_url", "url", "sqlite:///xrq.db",
            "Where jobs and reports live: a SQLite file, or postgresql://user@host:5432/xrq.", ("xrq",),
            schemes=("sqlite", "postgresql", "postgres")),
    Setting("broker_url", "url", None,
            "Celery broker, e.g. redis://:password@redis:6379/0; unset: work runs in-process.", ("xrq", "worker"),
            schemes=("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "memory", "sqla", "filesystem")),
    Setting("model", "text", None,
            "Model directory (or hub id) to report with; a worker without one uses each job's recorded path.",
            _WORK),
    Setting("batch_size", "count", None,
            "Studies per generate call; auto: 8 on a CPU, on a GPU the most its free memory holds.",
            ("submit", "backlog"), shown=AUTO, maximum=MAX_BATCH_SIZE),
    Setting("device", "text", "auto", "auto (CUDA if present), cpu, cuda, cuda:1 ...", _WORK),
    Setting("num_beams", "int", GenerationSettings.num_beams, "1: greedy decoding; more: beam search of that width.",
            ("submit", "backlog"), maximum=MAX_BEAMS),
    Setting("max_new_tokens", "int", None, "Report length cap, in tokens.", ("submit", "backlog"),
            shown=f"the model's recommendation, else {DEFAULT_MAX_NEW_TOKENS}"),
    Setting("max_pixels", "int", 50_000_000, "Larger images are refused (decompression bombs).", _WORK),
    Setting("max_file_bytes", "int", 512 * 1024 * 1024, "Larger files are refused before a byte is read.", _WORK),
    Setting("decode_workers", "count", None,
            "Image decoders beside the model (processes if more than 1); auto: from the host's cores.", _WORK,
            shown=AUTO, maximum=1024, old_names=("XRQ_DECODE_THREADS",)),
    Setting("cache_dir", "text", None, "A folder of preprocessed views: reruns skip decoding.", _WORK),
    Setting("cache_max_bytes", "int", 10_000_000_000, "The view cache's bound; least recently used go first.",
            _WORK),
    Setting("compile", "bool", False, "Static KV cache + torch.compile (CUDA graphs); the same tokens.", _WORK),
    Setting("backlog_cron", "cron", "0 2 * * *",
            "When beat runs the backlog job, in UTC (cron: minute hour day month weekday).", ("beat",)),
    Setting("stuck_after", "int", 7200, "Seconds after which a queued or running study counts as lost.",
            ("worker", "backlog")),
    Setting("max_attempts", "int", 3, "Tries of a study that failed for a transient reason.", _WORK),
    Setting("inbox", "text", None, "A folder the backlog job submits new files from (with XRQ_MODEL).",
            ("worker", "backlog")),
    Setting("auto_migrate", "bool", True,
            "Migrate the database to this xrq's schema when opening it; 0 in production, where "
            "`xrq db upgrade` does it.", ("xrq",)),
    Setting("log_level", "choice", None, "How much to log.", ("xrq", "worker", "beat"),
            shown="info for worker and beat, else warning", choices=LOG_LEVELS),
    Setting("log_format", "choice", "text", "text, or json: one JSON object a line, for log collectors.",
            ("xrq",), choices=LOG_FORMATS),
    # DICOM: `xrq listen` (a Storage SCP) and pushing reports to a PACS or DICOMweb server.
    Setting("listen_aet", "text", "XRQ", "The listener's AE title (what the PACS sends to).", ("listen",)),
    Setting("listen_port", "int", 11112, "The listener's TCP port.", ("listen",), maximum=65535),
    Setting("listen_bind", "text", "127.0.0.1", "The address the listener binds; 0.0.0.0: every interface.",
            ("listen",)),
    Setting("listen_allow", "text", None,
            "Peers that may send, AET@HOST (or AET from any host); several, space-separated.", ("listen",)),
    Setting("allow_any", "bool", False, "Accept associations from any AE title and host (a warning is logged).",
            ("listen",)),
    Setting("listen_inbox", "text", "xrq-inbox",
            "Where the listener keeps received instances (on disk before they are acknowledged).", ("listen",)),
    Setting("study_timeout", "int", 30, "Seconds without a new instance after which a study is reported.",
            ("listen",)),
    Setting("max_associations", "int", 10, "Concurrent associations the listener accepts.", ("listen",),
            maximum=1000),
    Setting("min_free_bytes", "int", 1_000_000_000,
            "Free disk the inbox keeps: below it, instances get an out-of-resources status.", ("listen",),
            minimum=0),
    Setting("push_to", "text", None,
            "Send each report as its batch is written: dicom://AET@HOST:PORT or https://HOST/DICOMWEB-ROOT.",
            ("submit", "worker", "backlog", "listen")),
    # The review application (`xrq serve`, web/).
    Setting("secret_key", "text", None,
            "Signs the session cookies; the same for every server process, kept secret. Unset, sessions end "
            "when the server restarts.", ("serve",), shown="a random key at each start", secret=True),
    Setting("serve_https", "bool", False,
            "Mark session cookies Secure: set when users reach the server through HTTPS (a TLS proxy).",
            ("serve",)),
    # Broker-only: how the Celery app talks to Redis (worker/app.py).
    Setting("visibility_timeout", "int", 3600,
            "Seconds before Redis redelivers an unacknowledged batch: keep it above the slowest batch.",
            ("worker",), broker=True),
    Setting("task_max_retries", "int", 10, "Retries of a batch after transient database errors (with backoff).",
            ("worker",), minimum=0, broker=True),
    Setting("retry_backoff_max", "int", 120, "Longest wait between two retries, in seconds.", ("worker",),
            broker=True),
    Setting("broker_prefix", "text", "", "Prefix of every Redis key: several deployments on one Redis.",
            ("worker", "beat", "health"), broker=True),
)
SETTING = {s.name: s for s in SETTINGS}
_D = {s.name: s.default for s in SETTINGS}


def read_env(env: Mapping[str, str], *, broker: bool, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The table's variables found in `env` (empty ones are unset), typed and checked; those in `skip`
    (set by an option, which wins) are not read, so a bad variable an option replaces is no error."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.broker != broker or setting.name in skip:
            continue
        for var in (setting.var, *setting.old_names):
            raw = env.get(var)
            if raw is not None and raw != "":
                values[setting.name] = setting.parse(raw)
                break
    return values


@dataclass(frozen=True)
class Settings:
    """The settings of the work (every row of SETTINGS that is not broker-only); defaults from the table."""

    database_url: str = _D["database_url"]
    broker_url: str | None = _D["broker_url"]
    model: str | None = _D["model"]
    batch_size: int | None = _D["batch_size"]  # None: auto
    device: str = _D["device"]
    num_beams: int = _D["num_beams"]
    max_new_tokens: int | None = _D["max_new_tokens"]  # None: what the model recommends (xrq.json), else 60
    max_pixels: int = _D["max_pixels"]
    max_file_bytes: int = _D["max_file_bytes"]
    decode_workers: int | None = _D["decode_workers"]  # None: auto, from the host's cores
    cache_dir: str | None = _D["cache_dir"]
    cache_max_bytes: int = _D["cache_max_bytes"]
    compile: bool = _D["compile"]
    backlog_cron: str = _D["backlog_cron"]
    stuck_after: int = _D["stuck_after"]
    max_attempts: int = _D["max_attempts"]
    inbox: str | None = _D["inbox"]
    auto_migrate: bool = _D["auto_migrate"]
    log_level: str | None = _D["log_level"]  # None: info for workers and beat, warning for other commands
    log_format: str = _D["log_format"]
    listen_aet: str = _D["listen_aet"]
    listen_port: int = _D["listen_port"]
    listen_bind: str = _D["listen_bind"]
    listen_allow: str | None = _D["listen_allow"]
    allow_any: bool = _D["allow_any"]
    listen_inbox: str = _D["listen_inbox"]
    study_timeout: int = _D["study_timeout"]
    max_associations: int = _D["max_associations"]
    min_free_bytes: int = _D["min_free_bytes"]
    push_to: str | None = _D["push_to"]
    secret_key: str | None = field(default=_D["secret_key"], repr=False)
    serve_https: bool = _D["serve_https"]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `XRQ_*` variables, then explicit overrides (CLI options) that are not None."""
        given = {k: v for k, v in overrides.items() if v is not None}
        values = read_env(os.environ if env is None else env, broker=False, skip=frozenset(given))
        values.update(given)
        return cls(**values).checked()

    def replace(self, **changes: Any) -> Settings:
        """A copy with these values (None included: for `batch_size`, auto), checked."""
        return replace(self, **changes).checked()

    def checked(self) -> Settings:
        for f in fields(self):
            SETTING[f.name].check(getattr(self, f.name))
        return self


@dataclass(frozen=True)
class BrokerOptions:
    """The broker-only settings of the table (rows marked broker)."""

    visibility_timeout: int = _D["visibility_timeout"]
    task_max_retries: int = _D["task_max_retries"]
    retry_backoff_max: int = _D["retry_backoff_max"]
    broker_prefix: str = _D["broker_prefix"]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> BrokerOptions:
        values = read_env(os.environ if env is None else env, broker=True)
        values.update({k: SETTING[k].check(v) for k, v in overrides.items() if v is not None})
        return cls(**values)
