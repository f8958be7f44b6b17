"""Per-process caches: one database engine per URL, one loaded model per (path, device), one engine
per model, one view cache; and the job context a pipeline run needs (which model, how to generate).

A worker process loads its model once, lazily, on the first batch it takes, never in a parent
process before a fork (CUDA cannot survive one).
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

from db import jobs
from db.engine import Database, open_database
from model.defaults import DEFAULT_MAX_NEW_TOKENS, GenerationSettings
from model.network.meta import SavedModel
from worker.errors import ModelMismatchError
from worker.settings import Settings

if TYPE_CHECKING:
    from db.schema import Model
    from model.imaging.view_cache import ViewCache
    from model.inference.engine import Engine
    from model.network.bundle import Bundle
    from worker.decoding import DecodePool, Limits
    from worker.pipeline import JobContext
    from worker.resources import Balance

_databases: dict[str, Database] = {}
_bundles: dict[tuple[str, str], Bundle] = {}
_fingerprints: dict[int, str] = {}  # id(bundle) -> its weights' fingerprint as loaded
_engines: dict[tuple[int, bool], Engine] = {}
_caches: dict[tuple[str, int], ViewCache] = {}
_pools: dict[tuple[int, Limits], DecodePool] = {}
_balances: dict[tuple[int, int, int | None, int | None], Balance] = {}
_model_ids: dict[tuple[str, str], int] = {}
_deployments: dict[str, str] = {}


def database(url: str) -> Database:
    if url not in _databases:
        _databases[url] = open_database(url)
    return _databases[url]


def deployment(url: str) -> str:
    """The deployment id of the database at `url` (made with it), read once per process."""
    if url not in _deployments:
        from db.deployment import deployment_id

        _deployments[url] = deployment_id(database(url))
    return _deployments[url]


def bundle(name_or_path: str, device: str = "auto") -> Bundle:
    key = (name_or_path, device)
    if key not in _bundles:
        from model.inference.generate import resolve_device
        from model.network.store import load

        _bundles[key] = load(name_or_path, device=resolve_device(device))
        _fingerprints[id(_bundles[key])] = _bundles[key].fingerprint
    return _bundles[key]


def fingerprint(loaded: Bundle) -> str:
    """The fingerprint of the weights as loaded: on CUDA the engine holds them in bf16 since, and
    the bf16 tensors hash differently, but they are still the model the database knows."""
    return _fingerprints.get(id(loaded)) or loaded.fingerprint


def model_id(db: Database, loaded: Bundle | SavedModel) -> int:
    """The database id of a model, recorded on first use: a loaded one, or a saved one by the fingerprint it
    records (a worker refuses weights that do not match it)."""
    known = loaded.fingerprint if isinstance(loaded, SavedModel) else fingerprint(loaded)
    if known is None:
        raise ModelMismatchError(f"{loaded.name} records no fingerprint (no xrq.json): load it to fingerprint it")
    key = (db.url, known)
    if key not in _model_ids:
        _model_ids[key] = jobs.upsert_model(
            db, name=loaded.name, fingerprint=known,
            path=str(loaded.path.resolve()) if loaded.path else None, meta=loaded.meta.to_dict(),
        )
    return _model_ids[key]


def generation(settings: Settings, loaded: Bundle | SavedModel | None = None) -> GenerationSettings:
    """The generation settings asked for; unset ones from what the model recommends, then defaults."""
    recommended = loaded.meta.recommended_max_new_tokens if loaded is not None else None
    max_new_tokens = settings.max_new_tokens or recommended or DEFAULT_MAX_NEW_TOKENS
    return GenerationSettings(num_beams=settings.num_beams, max_new_tokens=int(max_new_tokens))


def engine(loaded: Bundle, compile: bool = False) -> Engine:
    """The inference engine of a loaded model (on CUDA it holds the weights in bf16), made once."""
    key = (id(loaded), compile)
    if key not in _engines:
        from model.inference.engine import Engine, EngineOptions

        _engines[key] = Engine(loaded, EngineOptions(compile=compile))
    return _engines[key]


def view_cache(settings: Settings) -> ViewCache | None:
    """The preprocessed-view cache of XRQ_CACHE_DIR, or None when it is not set."""
    if not settings.cache_dir:
        return None
    key = (settings.cache_dir, settings.cache_max_bytes)
    if key not in _caches:
        from model.imaging.view_cache import ViewCache

        _caches[key] = ViewCache(settings.cache_dir, settings.cache_max_bytes)
    return _caches[key]


def decode_pool(loaded: Bundle, limits: Limits) -> DecodePool:
    """Decode workers for this model's preprocessing, kept for the life of the process."""
    key = (id(loaded), limits)
    if key not in _pools:
        from worker.decoding import DecodePool

        _pools[key] = DecodePool(loaded.processor, limits)
    return _pools[key]


def balance(settings: Settings, loaded: Bundle, processes: int = 1) -> Balance:
    """How this process splits its cores between decoding and this model on a CPU, learnt batch after
    batch and kept across jobs (worker/resources.py)."""
    from worker.resources import Balance, core_share, fixed_torch_threads

    key = (id(loaded), core_share(processes), settings.decode_workers, fixed_torch_threads())
    if key not in _balances:
        _balances[key] = Balance(key[1], torch_threads=key[3], decode_workers=settings.decode_workers)
    return _balances[key]


def job_context(settings: Settings, db: Database, job_id: int) -> JobContext:
    """Everything a pipeline run needs about a job: its model (these very weights), how to generate."""
    from worker.pipeline import JobContext

    job, model_row = jobs.job_model(db, job_id)
    loaded = job_bundle(settings, model_row)
    return JobContext(job_id=job_id, model_id=model_row.id, bundle=loaded, engine=engine(loaded, settings.compile),
                      generation=job_generation(job.settings), batch_size=job.batch_size or None)


def job_bundle(settings: Settings, model_row: Model) -> Bundle:
    """The job's model, loaded once per process: from the worker's XRQ_MODEL if it holds these very
    weights, else from the path the model was recorded with (a shared volume)."""
    from model.errors import ModelError

    tried: list[str] = []
    for source in dict.fromkeys(s for s in (settings.model, model_row.path) if s):
        try:
            loaded = bundle(source, settings.device)
        except ModelError as exc:
            tried.append(f"{source} ({exc})")
            continue
        if fingerprint(loaded) == model_row.fingerprint:
            return loaded
        tried.append(f"{source} (other weights, fingerprint {fingerprint(loaded)[:12]})")
    raise ModelMismatchError(
        f"this worker has no copy of model {model_row.name} (fingerprint {model_row.fingerprint[:12]}): "
        f"tried {', '.join(tried) or 'nothing (no XRQ_MODEL, no recorded path)'}. Put the model on the "
        "shared models volume at its recorded path, or point the worker's XRQ_MODEL at a copy."
    )


def clear() -> None:
    """Forget cached engines and models (tests; a worker process after a fork)."""
    for db in _databases.values():
        db.dispose()
    _databases.clear()
    for pool in _pools.values():
        pool.close()
    _pools.clear()
    _bundles.clear()
    _fingerprints.clear()
    _engines.clear()
    _caches.clear()
    _model_ids.clear()
    _deployments.clear()


def job_generation(stored: dict[str, Any]) -> GenerationSettings:
    """The generation settings the job was submitted with (stored on the job row), not the worker's."""
    known = {f.name for f in fields(GenerationSettings)}
    return GenerationSettings(**{k: v for k, v in stored.items() if k in known})
