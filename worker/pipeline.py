"""The one batch pipeline: decode workers -> batches -> model -> database.

Every way xrq reports studies runs this: `xrq submit` in-process, the Celery generate task, the
in-process backlog. A run takes some studies of one job and

1. plans batches: full batches of studies with the same number of views first (a 1-view study padded
   beside 3-view ones costs cross-attention work), then the remainders mixed; the batch size is the
   job's, or (`auto`) what the engine says fits;
2. prepares batch k+1 on a helper thread while the model generates batch k: claim it in the
   database, then read, decode and preprocess its images on the decode workers (worker/decoding.py:
   processes when there are several, a thread when one);
3. finishes batch k on the calling thread: one batched generation, one transaction for the results.

One failure policy, in `fail_batch`: a bad file fails its study with the reason (data, not an
error); anything that breaks a stage (the database while claiming or recording, the GPU out of
memory, an unreadable share, a bug) fails only that batch's open studies, retryably, with a one-line
reason, and the run goes on with the next batch. If even that failure cannot be recorded (the
database is away), the studies stay open: a Celery task is redelivered, the backlog finds them stuck.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from db import jobs
from db.engine import Database
from db.errors import DatabaseUnavailableError
from model.defaults import MAX_SEQUENCES
from model.errors import ImageError
from worker.decoding import DecodePool, Limits, load_view
from worker.resources import Balance, ThreadPlan, apply_torch_threads

__all__ = ["BatchError", "JobContext", "Limits", "Pipeline", "RunResult", "Timings", "fail_batch", "load_view",
           "message_size", "plan_batches"]

if TYPE_CHECKING:
    import torch

    from model.inference.engine import Engine
    from model.inference.generate import GenerationSettings
    from model.network.bundle import Bundle

log = logging.getLogger(__name__)

AUTO_MESSAGE_STUDIES = 256  # studies per broker message when the batch size is auto (the worker cuts them)
BATCHES_PER_MESSAGE = 4  # with a set batch size: a message holds this many, so decoding overlaps in a task
# The most studies a message holds: four batches of the largest batch `xrq submit` accepts (MAX_SEQUENCES
# studies of one beam). A worker refuses a message with more (worker/messages.py).
MAX_STUDIES_PER_MESSAGE = MAX_SEQUENCES * BATCHES_PER_MESSAGE


def message_size(batch_size: int | None) -> int:
    """Studies per broker message: several batches, so a worker overlaps decoding with generation."""
    return min(batch_size * BATCHES_PER_MESSAGE, MAX_STUDIES_PER_MESSAGE) if batch_size else AUTO_MESSAGE_STUDIES


def plan_batches(view_counts: dict[int, int], batch_size: Callable[[int], int] | int,
                 max_views: int) -> list[list[int]]:
    """Study ids -> batches, full batches of studies with the same number of views (capped at
    `max_views`) first, then what is left of each group, mixed, fewest views first.

    A 1-view study padded beside 3-view ones costs cross-attention work; a batch left half empty costs
    a whole generation pass. So like studies go together as long as they fill batches, and only the
    remainders (at most one batch's worth per view count) share batches. `batch_size` is a number,
    or a function of the view count (auto: more views, smaller batches).
    """
    def size_for(views: int) -> int:
        return max(1, batch_size(views) if callable(batch_size) else batch_size)

    groups: dict[int, list[int]] = {}
    for sid, views in view_counts.items():
        groups.setdefault(min(max(views, 1), max_views), []).append(sid)
    planned: list[list[int]] = []
    leftovers: list[tuple[int, int]] = []  # (views, study id), fewest views first
    for views in sorted(groups):
        ids, size = groups[views], size_for(views)
        full = len(ids) - len(ids) % size
        planned.extend(ids[i : i + size] for i in range(0, full, size))
        leftovers.extend((views, sid) for sid in ids[full:])
    batch: list[int] = []
    for views, sid in leftovers:  # a mixed batch is sized for its most views (the last one added)
        if batch and len(batch) + 1 > size_for(views):
            planned.append(batch)
            batch = []
        batch.append(sid)
    if batch:
        planned.append(batch)
    return planned


@dataclass
class Timings:
    """Seconds spent per stage, summed over batches: where the time of a run goes."""

    decode: float = 0.0
    model: float = 0.0
    db: float = 0.0
    studies: int = 0
    decode_cpu: float = 0.0  # CPU seconds, in whichever decode workers ran them
    model_cpu: float = 0.0  # CPU seconds of the model: its thread's, times torch's threads

    def add(self, other: Timings) -> None:
        self.decode += other.decode
        self.model += other.model
        self.db += other.db
        self.studies += other.studies
        self.decode_cpu += other.decode_cpu
        self.model_cpu += other.model_cpu

    def as_dict(self) -> dict[str, float]:
        return {"decode_s": round(self.decode, 4), "model_s": round(self.model, 4),
                "db_s": round(self.db, 4), "studies": self.studies}


@dataclass(frozen=True)
class BatchError:
    """A batch that a stage could not get through (its studies failed retryably, if `recorded`)."""

    study_ids: tuple[int, ...]
    stage: str  # claiming, decoding, generating, recording
    reason: str
    transient: bool  # the database, memory, the disk: worth retrying as it is
    recorded: bool  # the failure is in the database; False: the studies are still open there


@dataclass
class RunResult:
    timings: Timings = field(default_factory=Timings)
    claimed: int = 0
    reported: int = 0
    failed: int = 0  # studies failed for a reason of their own (bad images)
    queued: int = 0  # studies handed to the broker instead (worker/enqueue.py)
    errors: list[BatchError] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"claimed": self.claimed, "reported": self.reported, "failed": self.failed, "queued": self.queued,
                "batch_errors": [f"{e.stage}: {e.reason}" for e in self.errors], **self.timings.as_dict()}


@dataclass(frozen=True)
class JobContext:
    """What a run needs to know about its job: the model to report with and how."""

    job_id: int
    model_id: int
    bundle: Bundle
    engine: Engine
    generation: GenerationSettings
    batch_size: int | None  # None: auto


@dataclass
class _Prepared:
    batch: list[int]
    items: list[jobs.WorkItem] = field(default_factory=list)
    views: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # study id -> (3, H, W) per view
    outcome: jobs.BatchOutcome = field(default_factory=jobs.BatchOutcome)
    timings: Timings = field(default_factory=Timings)
    error: BatchError | None = None


class Pipeline:
    """Runs batches of one job's studies through decode -> model -> database, overlapping the stages."""

    def __init__(self, db: Database, context: JobContext, limits: Limits, pool: DecodePool | None = None,
                 on_recorded: Callable[[int, list[int]], None] | None = None, balance: Balance | None = None) -> None:
        """`pool`: decode workers kept by the caller across runs (processes are slow to start); by
        default, threads made for this run. `on_recorded(job_id, study_ids)`: after each batch's reports
        are committed (XRQ_PUSH_TO sends them there); it must not raise. `balance`: on a CPU, the split
        of cores between decoding and the model, set again after each batch from its measured times."""
        self.db, self.ctx, self.limits, self.pool = db, context, limits, pool
        self.on_recorded, self.balance = on_recorded, balance

    def plan(self, study_ids: Sequence[int]) -> list[list[int]]:
        """Batches of the studies this job has still to do (one query: ids it lacks are dropped here)."""
        counts = jobs.open_view_counts(self.db, self.ctx.job_id, study_ids)
        fixed = self.ctx.batch_size
        size: Callable[[int], int] | int = fixed or (
            lambda views: self.ctx.engine.auto_batch_size(self.ctx.generation, views))
        return plan_batches(counts, size, self.ctx.bundle.max_views)

    def run(self, study_ids: Sequence[int], progress: Callable[[int], None] | None = None) -> RunResult:
        """Process the studies; never raises for a batch's trouble (see the module's failure policy)."""
        result = RunResult()
        planned = self.plan(study_ids)
        pool = self.pool or DecodePool(self.ctx.bundle.processor, self.limits)
        if self.balance is not None:
            self._apply(self.balance.plan(), pool)
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="xrq-prepare") as ahead:
                for prepared in _overlapped(planned, lambda batch: ahead.submit(self._prepare, batch, pool)):
                    if prepared.error is None:
                        self._finish(prepared)
                    self._tally(prepared, result)
                    if self.balance is not None and prepared.error is None:
                        t = prepared.timings
                        self._apply(self.balance.observe(t.decode_cpu, t.model_cpu, t.studies), pool)
                    if progress is not None:
                        progress(len(prepared.batch))
        finally:
            if pool is not self.pool:
                pool.close()
        return result

    @staticmethod
    def _apply(plan: ThreadPlan, pool: DecodePool) -> None:
        """The balance's split, from the next images and the next batch on."""
        pool.concurrency = plan.decode_workers
        apply_torch_threads(plan)

    def _prepare(self, batch: list[int], pool: DecodePool) -> _Prepared:
        """Claim the batch and load its images; a study with any unreadable image fails with the reason."""
        prepared = _Prepared(batch)
        t0 = time.perf_counter()
        try:
            prepared.items = jobs.claim_batch(self.db, self.ctx.job_id, batch, max_attempts=self.limits.max_attempts)
        except Exception as exc:
            prepared.error = fail_batch(self.db, self.ctx.job_id, batch, "claiming", exc)
            return prepared
        t1, cpu = time.perf_counter(), pool.cpu_s
        try:
            self._decode(prepared, pool)
        except Exception as exc:
            prepared.error = fail_batch(self.db, self.ctx.job_id, batch, "decoding", exc)
        prepared.timings = Timings(decode=time.perf_counter() - t1, db=t1 - t0, studies=len(prepared.items),
                                   decode_cpu=pool.cpu_s - cpu)
        return prepared

    def _decode(self, prepared: _Prepared, pool: DecodePool) -> None:
        refs = [(ref, item.root) for item in prepared.items for ref in item.images]
        loaded = dict(zip((ref.id for ref, _ in refs), pool.map(refs), strict=True))
        outcome = prepared.outcome
        for item in prepared.items:
            errors = [(ref, loaded[ref.id]) for ref in item.images if isinstance(loaded[ref.id], ImageError)]
            for ref, err in errors:
                outcome.image_errors[ref.id] = str(err)
            if not item.images:
                outcome.failures[item.study_id] = "study has no images"
            elif errors:
                ref, err = errors[0]
                outcome.failures[item.study_id] = f"{ref.relpath}: {err}"
                if all(e.transient for _, e in errors):  # type: ignore[union-attr]
                    outcome.retryable.add(item.study_id)
            else:
                views = [loaded[ref.id] for ref in item.images]
                prepared.views[item.study_id] = [tensor for _, tensor in views]  # type: ignore[misc]
                for ref, (size, _) in zip(item.images, views, strict=True):  # type: ignore[misc]
                    if size is not None:
                        outcome.image_sizes[ref.id] = size

    def _finish(self, prepared: _Prepared) -> None:
        """Generate the readable studies' reports in one batch; store everything in one transaction."""
        from model.imaging.preprocess import stack_views

        ctx, outcome = self.ctx, prepared.outcome
        t0, cpu = time.perf_counter(), time.thread_time()
        study_ids = list(prepared.views)
        try:
            if study_ids:
                pixels, mask = stack_views([prepared.views[sid] for sid in study_ids], ctx.bundle.max_views,
                                           pin=ctx.engine.device.type == "cuda")
                for sid, written in zip(study_ids, ctx.engine.drafts(pixels, mask, ctx.generation), strict=True):
                    outcome.reports[sid] = written.text
                    outcome.details[sid] = written.record()
        except Exception as exc:
            prepared.error = fail_batch(self.db, ctx.job_id, prepared.batch, "generating", exc)
            return
        finally:
            prepared.views.clear()  # free the pixels as soon as they are used
        t1, model_cpu = time.perf_counter(), (time.thread_time() - cpu) * _torch_threads()
        try:
            jobs.record_results(self.db, job_id=ctx.job_id, model_id=ctx.model_id, outcome=outcome,
                                settings=report_settings(ctx))
        except Exception as exc:
            prepared.error = fail_batch(self.db, ctx.job_id, prepared.batch, "recording", exc)
        prepared.timings.add(Timings(model=t1 - t0, db=time.perf_counter() - t1, model_cpu=model_cpu))
        if prepared.error is None and self.on_recorded is not None and outcome.reports:
            self.on_recorded(ctx.job_id, list(outcome.reports))

    @staticmethod
    def _tally(prepared: _Prepared, result: RunResult) -> None:
        result.timings.add(prepared.timings)
        result.claimed += len(prepared.items)
        if prepared.error is not None:
            result.errors.append(prepared.error)
        else:
            result.reported += len(prepared.outcome.reports)
            result.failed += len(prepared.outcome.failures)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _overlapped(planned: list[list[int]], start: Callable[[list[int]], Future[_Prepared]]) -> Iterator[_Prepared]:
    """Yield each batch prepared, having started preparing the next one before handing it out."""
    upcoming = start(planned[0]) if planned else None
    for index in range(len(planned)):
        assert upcoming is not None
        prepared = upcoming.result()  # _prepare never raises
        upcoming = start(planned[index + 1]) if index + 1 < len(planned) else None
        yield prepared


def report_settings(ctx: JobContext) -> dict[str, object]:
    """What is stored with each report: how it was generated, where, and by which weights."""
    from model.inference.generate import record

    dtype = str(ctx.engine.dtype).removeprefix("torch.")  # what the weights were held in, bf16 on GPUs
    return {**record(ctx.generation, ctx.engine.device), "dtype": dtype, "model": ctx.bundle.name,
            "model_fingerprint": ctx.engine.fingerprint}


# ---- the failure policy -------------------------------------------------------------------------------

def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors that go away by themselves: the database restarting or locked, a dropped connection, an
    unreadable share. (GPU out-of-memory is matched by name: torch is not imported for this.)"""
    from sqlalchemy import exc as sa_exc

    return (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, DatabaseUnavailableError,
            OSError, MemoryError)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, transient_errors()) or type(exc).__name__ == "OutOfMemoryError"


def describe(exc: BaseException) -> str:
    """One line for a stored reason: the error's kind and first line, never an SQL statement or its
    parameters (other studies' report text would leak into this study's reason)."""
    from sqlalchemy.exc import DBAPIError

    shown: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first = next((line.strip() for line in str(shown).splitlines() if line.strip()), "")
    kind = "database error" if isinstance(exc, DBAPIError) else "worker error"
    return f"{kind}: {type(shown).__name__}" + (f": {first[:300]}" if first else "")


def fail_batch(db: Database, job_id: int, study_ids: Sequence[int], stage: str, exc: BaseException) -> BatchError:
    """The failure policy: fail the batch's open studies retryably with a one-line reason, and go on."""
    reason = describe(exc)
    log.error("job %s: a batch of %d studies failed while %s: %s", job_id, len(study_ids), stage, reason,
              exc_info=not is_transient(exc))
    try:
        jobs.fail_open(db, job_id, study_ids, reason)
        recorded = True
    except Exception as again:  # the database is away: the studies stay open, to be redone
        log.warning("job %s: could not record that failure either (%s)", job_id, describe(again))
        recorded = False
    if type(exc).__name__ == "OutOfMemoryError":
        _release_gpu_memory()
    return BatchError(tuple(study_ids), stage, reason, is_transient(exc), recorded)


def _release_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
