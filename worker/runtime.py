"""Per-process caches: one database engine per URL, one loaded model per (path, device).

A worker process loads its model once, lazily, on the first batch it takes, never in a parent
process before a fork (CUDA cannot survive one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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


def generation(settings: Settings) -> GenerationSettings:
    from model.generate import GenerationSettings

    return GenerationSettings(num_beams=settings.num_beams, max_new_tokens=settings.max_new_tokens)


def clear() -> None:
    """Forget cached engines and models (tests; a worker process after a fork)."""
    for db in _databases.values():
        db.dispose()
    _databases.clear()
    _bundles.clear()
    _model_ids.clear()
