"""Every setting xrq reads, in one place: `XRQ_*` environment variables, overridable by CLI options.

| variable              | default            | meaning                                                   |
|-----------------------|--------------------|-----------------------------------------------------------|
| XRQ_DATABASE_URL      | sqlite:///xrq.db   | where jobs and reports live (SQLite file or PostgreSQL)   |
| XRQ_BROKER_URL        | (unset)            | Celery broker; unset: work runs in-process               |
| XRQ_MODEL             | (unset)            | model directory (or hub id) used by `xrq submit`          |
| XRQ_BATCH_SIZE        | 8                  | studies per batch (one `generate` call)                   |
| XRQ_DEVICE            | auto               | auto (CUDA if present), cpu, cuda, cuda:1 ...             |
| XRQ_NUM_BEAMS         | 1                  | 1: greedy decoding; more: beam search                     |
| XRQ_MAX_NEW_TOKENS    | 60                 | report length cap, in tokens                              |
| XRQ_MAX_PIXELS        | 50000000           | larger images are refused (decompression bombs)           |
| XRQ_DECODE_THREADS    | 4                  | threads decoding images while the model runs              |

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
    max_new_tokens: int = 60
    max_pixels: int = 50_000_000
    decode_threads: int = 4

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `XRQ_*` variables, then explicit overrides (CLI options) that are not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"XRQ_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, int if f.type in ("int", int) else str)
        settings = cls(**values)
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None}).checked()

    def checked(self) -> Settings:
        for name in ("batch_size", "num_beams", "max_new_tokens", "max_pixels", "decode_threads"):
            if getattr(self, name) < 1:
                raise SettingsError(f"XRQ_{name.upper()} must be at least 1, not {getattr(self, name)}")
        return self


def _convert(name: str, raw: str, kind: type) -> Any:
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"XRQ_{name.upper()} must be a whole number, not {raw!r}") from None
    return raw
