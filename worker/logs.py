"""Logging for workers, beat and the CLI: a level and a format (text, or JSON lines) from the settings.

One handler on the root logger, replaced (not added to) when configured again, so a process that
configures twice (a worker's pool process after the fork) logs each line once. Alembic's INFO lines
("Context impl PostgresqlImpl", "Will assume transactional DDL") say nothing an operator needs on
every worker start: below debug they are quiet.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"
QUIET = ("alembic",)  # loggers kept at WARNING unless the level is debug
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, process, and what else
    the record carries (Celery's task id and name, `extra=` fields); `exc` holds a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class _XrqHandler(logging.StreamHandler):
    """The handler `configure` installs (a class of its own, so the next call finds and replaces it)."""


def configure(level: str, fmt: str = "text", *, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record at `level` or above to `stream` (standard error) as `fmt` (text or json)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _XrqHandler)]:
        root.removeHandler(old)
    handler = _XrqHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.NOTSET if level.lower() == "debug" else logging.WARNING)
    return handler


def unconfigure() -> None:
    """Remove the handler `configure` installed (tests)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _XrqHandler)]:
        root.removeHandler(old)
