"""Per-process caches: one database engine per URL, one loaded model per (path, device).

A worker process loads its model once, lazily, on the first batch it takes, never in a parent
process before a fork (CUDA cannot survive one).
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

from db import jobs
from db.engine import Database, open_database
from worker.settings import Settings

if TYPE_CHECKING:
    from model.bundle import Bundle
    from model.generate import GenerationSettings

_databases: dict[str, Database] = {}
_bundles: dict[tuple[str, str], Bundle] = {}
_model_ids: dict[tuple[str, str], int] = {}


def database(url: str) -> Database:
    if url not in _databases:
        _databases[url] = open_database(url)
    return _databases[url]


def bundle(name_or_path: str, device: str = "auto") -> Bundle:
    key = (name_or_path, device)
    if key not in _bundles:
        from model.bundle import load
        from model.generate import resolve_device

        _bundles[key] = load(name_or_path, device=resolve_device(device))
    return _bundles[key]


def model_id(db: Database, loaded: Bundle) -> int:
    """The database id of a loaded model, recorded on first use."""
    key = (db.url, loaded.fingerprint)
    if key not in _model_ids:
        _model_ids[key] = jobs.upsert_model(
            db, name=loaded.name, fingerprint=loaded.fingerprint,
            path=str(loaded.path.resolve()) if loaded.path else None, meta=loaded.meta,
        )
    return _model_ids[key]


DEFAULT_MAX_NEW_TOKENS = 60  # the field's report length (R2Gen: 60 tokens)


def generation(settings: Settings, loaded: Bundle | None = None) -> GenerationSettings:
    """The generation settings asked for; unset ones from what the model recommends, then defaults."""
    from model.generate import GenerationSettings

    recommended = (loaded.meta.get("generation") or {}) if loaded is not None else {}
    max_new_tokens = settings.max_new_tokens or recommended.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
    return GenerationSettings(num_beams=settings.num_beams, max_new_tokens=int(max_new_tokens))


def clear() -> None:
    """Forget cached engines and models (tests; a worker process after a fork)."""
    for db in _databases.values():
        db.dispose()
    _databases.clear()
    _bundles.clear()
    _model_ids.clear()


def job_generation(stored: dict[str, Any]) -> GenerationSettings:
    """The generation settings the job was submitted with (stored on the job row), not the worker's."""
    from model.generate import GenerationSettings

    known = {f.name for f in fields(GenerationSettings)}
    return GenerationSettings(**{k: v for k, v in stored.items() if k in known})
