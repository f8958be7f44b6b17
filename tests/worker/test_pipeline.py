"""The one batch pipeline: the same failure policy and the same overlap in every path that runs it.

Paths: in-process `submit_folder`, the Celery generate task (run by Celery's own `apply`, in this
process: the task, its request and its retry policy are real, only the broker is not needed), and
the in-process backlog. Faults: the database while claiming, while recording; a bug and a GPU out of
memory while generating. (Out-of-memory is the one thing simulated: there is no GPU here.)
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from db import jobs
from db.schema import JobStudy, Report
from model.imaging.scan import scan_folder
from model.inference.engine import Engine
from tests.conftest import EXAMPLES
from worker import runtime
from worker.pipeline import describe, message_size, plan_batches
from worker.settings import Settings
from worker.submit import submit_folder, to_study_in

# The IU folder's studies by view count: 25 (1 view), 54 and 7 (2 views), 1000 (3 views). With a
# batch size of 2 the pipeline plans [54, 7] (a full batch of like studies), then [25, 1000] (the
# remainders): the second batch is the one that breaks.
SECOND_BATCH = 2


def record_only(settings: Settings, folder: Path) -> tuple[int, list[int]]:
    db = runtime.database(settings.database_url)
    model_id = runtime.model_id(db, runtime.bundle(str(settings.model)))
    record = jobs.record_job(db, source=str(folder), model_id=model_id, group_by="auto", batch_size=2,
                             settings={"max_new_tokens": 4}, studies=[to_study_in(s) for s in scan_folder(folder)])
    return record.job_id, record.to_run


def run_submit(settings: Settings, folder: Path) -> int:
    return submit_folder(settings, folder).job_id


def run_celery_task(settings: Settings, folder: Path) -> int:
    """The generate task as a worker runs it for one message holding the whole job."""
    from worker.app import make_app
    from worker.tasks import GENERATE_TASK

    job_id, ids = record_only(settings, folder)
    app = make_app(settings)
    app.tasks[GENERATE_TASK].apply(args=[job_id, ids], throw=True)
    return job_id


def run_backlog_here(settings: Settings, folder: Path) -> int:
    from worker.backlog import run_backlog

    job_id, _ = record_only(settings, folder)
    run_backlog(settings, score=False)
    return job_id


PATHS = {"submit": run_submit, "celery": run_celery_task, "backlog": run_backlog_here}


def locked() -> OperationalError:
    """What SQLAlchemy raises when SQLite stays locked; its statement holds other studies' report text."""
    return OperationalError("INSERT INTO reports (text) VALUES (?)", ["another study's report text"],
                            sqlite3.OperationalError("database is locked"))


def on_call(n: int, real: Callable[..., Any], error: Callable[[], BaseException]) -> Callable[..., Any]:
    """`real`, except that its n-th call raises `error()`."""
    calls = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == n:
            raise error()
        return real(*args, **kwargs)

    return wrapped


FAULTS = {
    "claiming": ("claim_batch", locked, "database error: OperationalError: database is locked"),
    "recording": ("record_results", locked, "database error: OperationalError: database is locked"),
    "generating": ("drafts", lambda: RuntimeError("index out of range\nin a second line"),
                   "worker error: RuntimeError: index out of range"),
    "out of memory": ("drafts", lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                      "worker error: OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_fails_only_its_batch_retryably_and_the_job_goes_on(
    path: str, fault: str, sqlite_url: str, tiny_model: Path, iu_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, error, reason = FAULTS[fault]
    if target == "drafts":
        monkeypatch.setattr(Engine, "drafts", on_call(SECOND_BATCH, Engine.drafts, error))
    else:
        monkeypatch.setattr(jobs, target, on_call(SECOND_BATCH, getattr(jobs, target), error))
    settings = Settings(database_url=sqlite_url, model=str(tiny_model), batch_size=2, max_new_tokens=4)

    job_id = PATHS[path](settings, iu_folder)

    db = runtime.database(sqlite_url)
    with db.session() as s:
        rows = s.execute(select(JobStudy.status, JobStudy.error, JobStudy.retryable)
                         .where(JobStudy.job_id == job_id)).all()
        reported = set(s.scalars(select(Report.study_id)))
    failed = [(e, r) for status, e, r in rows if status == "failed"]
    assert sorted(status for status, _, _ in rows) == ["done", "done", "failed", "failed"]
    assert failed == [(reason, True), (reason, True)]  # one line, retryable, no SQL, no other study's text
    assert len(reported) == 2

    from worker.backlog import run_backlog  # and the nightly run (or a resubmit) finishes the job

    monkeypatch.undo()
    assert run_backlog(settings, score=False).retry == 2
    assert jobs.count_by_status(db, job_id) == {"done": 4}


@pytest.mark.parametrize("path", PATHS)
def test_the_next_batch_is_decoded_while_this_one_is_generated(
    path: str, sqlite_url: str, tiny_model: Path, iu_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generating batch k waits (with a deadline) for batch k+1 to be claimed and decoded: it can only
    go on if the pipeline prepares the next batch while this one is in the model."""
    import worker.pipeline

    real_decode, real_generate = worker.pipeline.Pipeline._decode, Engine.drafts
    decoded = [threading.Event() for _ in range(2)]  # the two planned batches
    decodes: list[int] = []
    waited: list[bool] = []

    def decode(self: Any, prepared: Any, pool: Any) -> None:
        real_decode(self, prepared, pool)
        decoded[len(decodes)].set()
        decodes.append(1)

    def generate(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
        k = len(waited)
        waited.append(decoded[k + 1].wait(timeout=60) if k + 1 < len(decoded) else True)
        return real_generate(self, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(worker.pipeline.Pipeline, "_decode", decode)
    monkeypatch.setattr(Engine, "drafts", generate)
    settings = Settings(database_url=sqlite_url, model=str(tiny_model), batch_size=2, max_new_tokens=4)
    job_id = PATHS[path](settings, iu_folder)
    assert waited == [True, True]
    assert jobs.count_by_status(runtime.database(sqlite_url), job_id) == {"done": 4}


def test_batches_are_grouped_by_view_count() -> None:
    counts = {1: 1, 2: 3, 3: 1, 4: 2, 5: 1, 6: 5, 7: 3}  # study id -> views
    # Full batches of like studies, then the remainders mixed (6's fifth view is dropped: 4 at most).
    assert plan_batches(counts, 2, max_views=4) == [[1, 3], [2, 7], [5, 4], [6]]
    # Auto: the batch size falls with the views; a mixed batch is sized for its most views.
    assert plan_batches(counts, lambda views: 4 // views, max_views=3) == [[2], [6], [7], [1, 3, 5], [4]]
    assert plan_batches(dict.fromkeys(range(11), 1), 8, max_views=4) == [list(range(8)), [8, 9, 10]]


@pytest.mark.parametrize("batch_size", [1, 8, 64, None], ids=lambda b: f"batch {b or 'auto'}")
def test_a_message_holds_several_batches(batch_size: int | None) -> None:
    """A worker decodes one batch of a message while it generates another: so each message the planner fills
    holds two full batches or more, whatever the batch size (auto: as a CPU worker sizes them)."""
    from model.inference.engine import CPU_BATCH_SIZE

    size = batch_size or CPU_BATCH_SIZE
    studies = dict.fromkeys(range(message_size(batch_size)), 2)  # one message's worth of 2-view studies
    batches = plan_batches(studies, size, max_views=4)
    assert len(batches) >= 2 and all(len(batch) == size for batch in batches)


def test_a_stored_reason_is_one_line_without_the_statement() -> None:
    assert describe(locked()) == "database error: OperationalError: database is locked"
    assert describe(ValueError("")) == "worker error: ValueError"


def reports_by_uid(url: str) -> dict[str, str]:
    from db.schema import Study

    with runtime.database(url).session() as s:
        return dict(s.execute(select(Study.uid, Report.text).join(Report, Report.study_id == Study.id)).all())


@pytest.mark.slow
def test_decode_workers_as_processes_give_the_reports_of_threads(tiny_model: Path, iu_folder: Path,
                                                                  tmp_path: Path) -> None:
    threads = Settings(database_url=f"sqlite:///{tmp_path}/threads.db", model=str(tiny_model), decode_workers=1,
                       max_new_tokens=8)
    processes = Settings(database_url=f"sqlite:///{tmp_path}/processes.db", model=str(tiny_model),
                         decode_workers=2, max_new_tokens=8)
    submit_folder(threads, iu_folder)
    submit_folder(processes, iu_folder)
    pools = list(runtime._pools.values())
    assert [p.kind for p in pools] == ["processes"]  # kept for the next run: processes are slow to start
    assert reports_by_uid(processes.database_url) == reports_by_uid(threads.database_url)
    assert len(reports_by_uid(threads.database_url)) == 4


def test_a_view_cache_skips_decoding_for_a_second_model(tiny_model: Path, iu_folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import model.imaging.images
    from model.network.bundle import build
    from model.network.store import save
    other = save(build("tiny", seed=1), tmp_path / "other")  # same preprocessing, other weights
    cache = tmp_path / "cache"
    first = Settings(database_url=f"sqlite:///{tmp_path}/a.db", model=str(tiny_model), cache_dir=str(cache),
                     max_new_tokens=4)
    submit_folder(first, iu_folder)
    assert len(list(cache.rglob("*.safetensors"))) == 8  # the folder's eight images

    decoded: list[int] = []
    real = model.imaging.images.decode_bytes
    monkeypatch.setattr(model.imaging.images, "decode_bytes", lambda *a, **k: decoded.append(1) or real(*a, **k))
    second = submit_folder(Settings(**{**first.__dict__, "model": str(other)}), iu_folder)
    assert second.summary.counts == {"done": 4} and decoded == []
    with runtime.database(first.database_url).session() as s:  # sizes are known from the cache too
        from db.schema import Image

        assert None not in set(s.scalars(select(Image.width).where(Image.job_id == second.job_id)))


def test_threads_are_planned_from_the_cores() -> None:
    from worker.resources import plan_threads

    def plan(device: str, **kwargs: Any) -> tuple[int, int]:
        p = plan_threads(device, **{"env": {}, **kwargs})
        return p.decode_workers, p.torch_threads

    assert plan("cpu", cores=2) == (1, 1)  # this machine: the model and the decoder, one core each
    assert plan("cpu", cores=16) == (8, 8)
    assert plan("cuda", cores=16) == (15, 1)  # a GPU needs one core to drive it; the rest decode
    assert plan("cpu", cores=16, processes=2) == (4, 4)  # `xrq worker --concurrency 2` shares the cores
    assert plan("cpu", cores=16, env={"OMP_NUM_THREADS": "1"})[1] == 1
    assert plan("cuda", cores=16, decode_workers=3)[0] == 3


def test_weights_held_in_bf16_are_still_the_model_the_database_knows(
    sqlite_url: str, tiny_model: Path, iu_folder: Path
) -> None:
    """On CUDA the engine casts the weights to bf16 once; the next job must still find its model.
    (The cast is done here on the CPU: the fingerprint is what is tested, not the GPU.)"""
    settings = Settings(database_url=sqlite_url, model=str(tiny_model), max_new_tokens=2)
    first = submit_folder(settings, iu_folder)
    loaded = runtime.bundle(str(tiny_model), settings.device)
    loaded.model.to(dtype=torch.bfloat16)  # what Engine does on CUDA
    assert loaded.fingerprint != runtime.fingerprint(loaded)
    more = iu_folder.parent / "more"
    more.mkdir()
    shutil.copy(EXAMPLES / "CXR303_IM-1404-1001.png", more)
    second = submit_folder(settings, more)  # a new job and a new study, the same model row
    db = runtime.database(sqlite_url)
    assert jobs.job_model(db, second.job_id)[1].id == jobs.job_model(db, first.job_id)[1].id
    assert second.summary.counts == {"done": 1}


def _pool_kind_in_a_daemon(queue: Any) -> None:
    from worker.decoding import DecodePool, Limits

    pool = DecodePool(object(), Limits(max_pixels=1, decode_workers=2, processes=True))
    queue.put(pool.kind)
    pool.close()


def test_a_daemonic_process_decodes_with_threads() -> None:
    """A prefork pool process of `xrq worker` is daemonic: starting decode processes there fails on the
    first batch ("daemonic processes are not allowed to have children"), so it uses threads.
    The daemon is spawned, not forked: a fork of this many-threaded test process can inherit a lock
    that another thread held (CI once hung here for the whole minute)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    daemon = context.Process(target=_pool_kind_in_a_daemon, args=(queue,), daemon=True)
    daemon.start()
    kind = queue.get(timeout=60)
    daemon.join(timeout=60)
    assert kind == "threads"


def test_every_report_is_stored_with_its_tokens_and_confidence(sqlite_url: str, tiny_model: Path,
                                                               iu_folder: Path) -> None:
    """What the engine wrote is what the row holds: the tokens, their log-probabilities, exp(mean)."""
    import math

    settings = Settings(database_url=sqlite_url, model=str(tiny_model), batch_size=2, max_new_tokens=6)
    run_submit(settings, iu_folder)
    with runtime.database(sqlite_url).session() as s:
        rows = s.execute(select(Report.text, Report.confidence, Report.token_logprobs, Report.token_ids)).all()
    assert len(rows) == 4
    bundle = runtime.bundle(str(tiny_model))
    for text, confidence, logprobs, ids in rows:
        assert len(ids) == len(logprobs) and 1 <= len(ids) <= 6
        assert all(isinstance(lp, float) and lp <= 0 for lp in logprobs)
        assert confidence == pytest.approx(math.exp(sum(logprobs) / len(logprobs)))
        assert " ".join(bundle.tokenizer.decode(ids, skip_special_tokens=True).split()) == text
