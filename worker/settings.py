"""Every setting xrq reads, in one place: `XRQ_*` environment variables, overridable by CLI options.

| variable              | default            | meaning                                                   |
|-----------------------|--------------------|-----------------------------------------------------------|
| XRQ_DATABASE_URL      | sqlite:///xrq.db   | where jobs and reports live (SQLite file or PostgreSQL)   |
| XRQ_BROKER_URL        | (unset)            | Celery broker; unset: work runs in-process               |
| XRQ_MODEL             | (unset)            | model directory (or hub id) used by `xrq submit`          |
| XRQ_BATCH_SIZE        | auto               | studies per `generate` call; auto: 8 on a CPU, what fits a GPU |
| XRQ_DEVICE            | auto               | auto (CUDA if present), cpu, cuda, cuda:1 ...             |
| XRQ_NUM_BEAMS         | 1                  | 1: greedy decoding; more: beam search                     |
| XRQ_MAX_NEW_TOKENS    | (the model's, or 60) | report length cap, in tokens; a trained model recommends one |
| XRQ_MAX_PIXELS        | 50000000           | larger images are refused (decompression bombs)           |
| XRQ_DECODE_WORKERS    | auto               | image decoders beside the model (processes if > 1); auto: cores |
| XRQ_CACHE_DIR         | (unset)            | a folder of preprocessed views: reruns skip decoding      |
| XRQ_CACHE_MAX_BYTES   | 10000000000        | the view cache's bound; least recently used go first      |
| XRQ_COMPILE           | 0                  | 1: static KV cache + torch.compile (CUDA graphs); same tokens |
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

XRQ_DECODE_THREADS is XRQ_DECODE_WORKERS's old name, still read.

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
    batch_size: int | None = None  # None: auto (see the table)
    device: str = "auto"
    num_beams: int = 1
    max_new_tokens: int | None = None  # None: what the model recommends (xrq.json), else 60
    max_pixels: int = 50_000_000
    decode_workers: int | None = None  # None: auto, from the host's cores
    cache_dir: str | None = None
    cache_max_bytes: int = 10_000_000_000
    compile: bool = False
    backlog_cron: str = "0 2 * * *"
    stuck_after: int = 7200
    max_attempts: int = 3
    inbox: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `XRQ_*` variables, then explicit overrides (CLI options) that are not None."""
        env = os.environ if env is None else env
        if "XRQ_DECODE_THREADS" in env and "XRQ_DECODE_WORKERS" not in env:  # its name before 0.2
            env = {**env, "XRQ_DECODE_WORKERS": env["XRQ_DECODE_THREADS"]}
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"XRQ_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, _KINDS.get(str(f.type), str))
        settings = cls(**values)
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None}).checked()

    def replace(self, **changes: Any) -> Settings:
        """A copy with these values (None included: for `batch_size`, auto), checked."""
        return replace(self, **changes).checked()

    def checked(self) -> Settings:
        for name in ("batch_size", "num_beams", "max_new_tokens", "max_pixels", "decode_workers", "stuck_after",
                     "max_attempts", "cache_max_bytes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SettingsError(f"XRQ_{name.upper()} must be at least 1, not {getattr(self, name)}")
        if len(self.backlog_cron.split()) != 5:
            raise SettingsError(f"XRQ_BACKLOG_CRON must have five fields (minute hour day month weekday), "
                                f"not {self.backlog_cron!r}")
        return self


AUTO = "auto"  # the value of XRQ_BATCH_SIZE and XRQ_DECODE_WORKERS that lets xrq choose
_KINDS: dict[str, Any] = {"int": int, "int | None": "int_or_auto", "bool": bool}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _convert(name: str, raw: str, kind: Any) -> Any:
    if kind == "int_or_auto" and raw.strip().lower() == AUTO:
        return None
    if kind in (int, "int_or_auto"):
        try:
            return int(raw)
        except ValueError:
            also = " or auto" if kind == "int_or_auto" and name != "max_new_tokens" else ""
            raise SettingsError(f"XRQ_{name.upper()} must be a whole number{also}, not {raw!r}") from None
    if kind is bool:
        if raw.strip().lower() not in _TRUE | _FALSE:
            raise SettingsError(f"XRQ_{name.upper()} must be 1 or 0 (true or false), not {raw!r}")
        return raw.strip().lower() in _TRUE
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
