"""Who runs a job's studies: this process (the pipeline, here) or the broker's workers (worker/enqueue.py).

`xrq submit` and the backlog are told which by whoever calls them (the CLI through
`worker.dispatch.runner_for`, the Celery backlog task with its own app), so nothing below the Celery
glue imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from worker import runtime
from worker.pipeline import Limits, Pipeline, RunResult
from worker.resources import apply_torch_threads, plan_threads
from worker.settings import Settings


class Runner(Protocol):
    """Runs (or queues) some studies of a recorded job."""

    local: bool  # True: the work is done by the time `run` returns

    def run(self, job_id: int, study_ids: Sequence[int],
            progress: Callable[[int], None] | None = None) -> RunResult: ...


class LocalRunner:
    """The batch pipeline in this process: what in-process submit, the backlog without a broker and
    each Celery generate task run. `processes` is how many such processes share this host's cores."""

    local = True

    def __init__(self, settings: Settings, *, processes: int = 1) -> None:
        self.settings, self.processes = settings, processes

    def run(self, job_id: int, study_ids: Sequence[int],
            progress: Callable[[int], None] | None = None) -> RunResult:
        """Raises only when the job cannot be run at all (no such job, its model is not here)."""
        settings = self.settings
        db = runtime.database(settings.database_url)
        ctx = runtime.job_context(settings, db, job_id)
        plan = plan_threads(ctx.engine.device.type, processes=self.processes, decode_workers=settings.decode_workers)
        apply_torch_threads(plan)
        balance = runtime.balance(settings, ctx.bundle, self.processes) if ctx.engine.device.type == "cpu" else None
        workers = balance.share if balance is not None and balance.decode_workers is None else plan.decode_workers
        limits = Limits(max_pixels=settings.max_pixels, decode_workers=workers,
                        max_file_bytes=settings.max_file_bytes,
                        max_attempts=settings.max_attempts, cache=runtime.view_cache(settings),
                        processes=plan.decode_workers > 1)  # threads where the plan had one: no start-up
        pool = runtime.decode_pool(ctx.bundle, limits) if limits.processes else None  # kept: slow to start
        on_recorded = None
        if settings.push_to:
            from worker.push import push_reported

            def on_recorded(job_id: int, reported: list[int]) -> None:
                push_reported(settings, job_id, reported)
        return Pipeline(db, ctx, limits, pool, on_recorded, balance).run(study_ids, progress)
