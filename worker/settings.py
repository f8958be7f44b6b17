"""Every setting xrq reads, in one place: `XRQ_*` environment variables, overridable by CLI options.

| variable              | default            | meaning                                                   |
|-----------------------|--------------------|-----------------------------------------------------------|
| XRQ_DATABASE_URL      | sqlite:///xrq.db   | where jobs and reports live (SQLite file or PostgreSQL)   |
| XRQ_BROKER_URL        | (unset)            | Celery broker; unset: work runs in-process               |
| XRQ_MODEL             | (unset)            | model directory (or hub id) used by `xrq submit`          |
| XRQ_BATCH_SIZE        | 8                  | studies per batch (one `generate` call)                   |
| XRQ_DEVICE            | auto               | auto (CUDA if present), cpu, cuda, cuda:1 ...             |
| XRQ_NUM_BEAMS         | 1                  | 1: greedy decoding; more: beam search                     |
| XRQ_MAX_NEW_TOKENS    | (the model's, or 60) | report length cap, in tokens; a trained model recommends one |
| XRQ_MAX_PIXELS        | 50000000           | larger images are refused (decompression bombs)           |
| XRQ_DECODE_THREADS    | 4                  | threads decoding images while the model runs              |
| XRQ_BACKLOG_CRON      | 0 2 * * *          | when beat runs the backlog job (cron: min hour dom mon dow) |
| XRQ_STUCK_AFTER       | 7200               | seconds after which a queued/running study counts as lost |
| XRQ_MAX_ATTEMPTS      | 3                  | tries of a study that failed for a transient reason       |
| XRQ_INBOX             | (unset)            | a folder the backlog job submits new files from           |

Broker-only settings (read by `BrokerOptions`, used by the Celery app and `xrq submit` with a broker):

| variable                | default | meaning                                                              |
|-------------------------|---------|----------------------------------------------------------------------|
| XRQ_VISIBILITY_TIMEOUT  | 3600    | seconds before Redis redelivers an unacknowledged batch              |
| XRQ_TASK_MAX_RETRIES    | 10      | retries of a batch after transient database errors (backoff, jitter) |
| XRQ_RETRY_BACKOFF_MAX   | 120     | longest wait between two retries, in seconds                         |
| XRQ_BROKER_PREFIX       | (none)  | prefix for every Redis key: several deployments on one Redis         |

This module imports neither celery nor torch: the CLI reads settings without starting either.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from worker.errors import SettingsError


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///xrq.db"
    broker_url: str | None = None
    model: str | None = None
    batch_size: int = 8
    device: str = "auto"
    num_beams: int = 1
    max_new_tokens: int | None = None  # None: what the model recommends (xrq.json), else 60
    max_pixels: int = 50_000_000
    decode_threads: int = 4
    backlog_cron: str = "0 2 * * *"
    stuck_after: int = 7200
    max_attempts: int = 3
    inbox: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `XRQ_*` variables, then explicit overrides (CLI options) that are not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"XRQ_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, int if str(f.type).startswith("int") else str)
        settings = cls(**values)
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None}).checked()

    def checked(self) -> Settings:
        for name in ("batch_size", "num_beams", "max_new_tokens", "max_pixels", "decode_threads", "stuck_after",
                     "max_attempts"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SettingsError(f"XRQ_{name.upper()} must be at least 1, not {getattr(self, name)}")
        if len(self.backlog_cron.split()) != 5:
            raise SettingsError(f"XRQ_BACKLOG_CRON must have five fields (minute hour day month weekday), "
                                f"not {self.backlog_cron!r}")
        return self


def _convert(name: str, raw: str, kind: type) -> Any:
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"XRQ_{name.upper()} must be a whole number, not {raw!r}") from None
    return raw


@dataclass(frozen=True)
class BrokerOptions:
    """The broker-only settings of the table above."""

    visibility_timeout: int = 3600
    task_max_retries: int = 10
    retry_backoff_max: int = 120
    broker_prefix: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BrokerOptions:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, kind in (("visibility_timeout", int), ("task_max_retries", int),
                           ("retry_backoff_max", int), ("broker_prefix", str)):
            raw = env.get(f"XRQ_{name.upper()}")
            if raw is None or raw == "":
                continue
            if kind is int:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise SettingsError(f"XRQ_{name.upper()} must be a whole number, not {raw!r}") from None
                if values[name] < (0 if name == "task_max_retries" else 1):
                    raise SettingsError(f"XRQ_{name.upper()} is too small: {raw}")
            else:
                values[name] = raw
        return cls(**values)
