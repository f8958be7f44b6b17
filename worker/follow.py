"""Watching distributed work: a job's progress from the database, and which workers answer.

Progress comes from the database, never from the broker: it is the truth about what is done, and it
keeps working when the broker, or the process that submitted, is gone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from db.engine import Database
from db.queries import JobSummary, job_summary
from worker.errors import BrokerUnavailableError, WaitTimeoutError
from worker.settings import Settings


def follow_job(db: Database, job_id: int, *, interval: float = 0.5, timeout: float | None = None,
               on_change: Callable[[JobSummary], None] | None = None,
               on_tick: Callable[[JobSummary, float], None] | None = None) -> JobSummary:
    """Poll the job's counts until no study is pending, queued or running; return the final summary.

    `on_change(summary)` is called whenever the counts change (a progress bar), `on_tick(summary,
    idle)` at every poll with the seconds since they last changed (to say that nothing moves).
    Polling is one small GROUP BY per interval, cheap enough for any number of followers.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    last: dict[str, int] | None = None
    changed = time.monotonic()
    while True:
        summary = job_summary(db, job_id, with_failures=False)
        if summary.counts != last:
            last, changed = summary.counts, time.monotonic()
            if on_change is not None:
                on_change(summary)
        if on_tick is not None and not summary.finished:
            on_tick(summary, time.monotonic() - changed)
        if summary.finished:
            return job_summary(db, job_id)
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeoutError(f"job {job_id} still has {summary.waiting} studies to do after {timeout:.0f} s; "
                                   f"it goes on: `xrq status {job_id}` follows it")
        time.sleep(interval)


def waiting_note(settings: Settings, summary: JobSummary, idle: float) -> str:
    """One line on a job that does not move: where its studies are and whether any worker answers."""
    c = summary.counts
    where = (f"job {summary.job_id}: {c.get('pending', 0)} pending, {c.get('queued', 0)} queued, "
             f"{c.get('running', 0)} running; no progress for {idle:.0f} s")
    try:
        found = alive_workers(settings)
    except BrokerUnavailableError as exc:
        return f"{where}; workers: unknown ({exc})"
    if not found:
        return (f"{where}; no worker answers (none within 1 s): start one with `xrq worker` "
                "(still waiting; Ctrl-C stops waiting, the job stays queued)")
    gpu = [w for w in found if "gpu" in w.queues]
    if not gpu:
        return f"{where}; {len(found)} workers answer but none consumes the gpu queue (`xrq worker -Q gpu`)"
    return f"{where}; {len(gpu)} workers on the gpu queue (busy with other work, or loading the model)"


def finished_count(summary: JobSummary) -> int:
    return sum(summary.counts.get(s, 0) for s in ("done", "failed", "skipped"))


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    queues: list[str]


def alive_workers(settings: Settings, *, timeout: float = 1.0) -> list[WorkerInfo]:
    """The workers that answer a broadcast within `timeout` seconds, with the queues they consume.

    A worker's main process answers even while its pool processes are busy with a batch, so a
    silent worker is a dead or unreachable one (with the `solo` pool, also a busy one).
    """
    from worker.app import app_for
    from worker.enqueue import broker_errors

    if not settings.broker_url:
        return []
    app = app_for(settings)
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except broker_errors(app) as exc:
        raise BrokerUnavailableError(f"cannot reach the broker to ask for workers: {exc}") from exc
    return sorted((WorkerInfo(name, sorted(q["name"] for q in queues)) for name, queues in replies.items()),
                  key=lambda w: w.name)


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting on each xrq queue (not yet taken by a worker)."""
    from worker.app import app_for
    from worker.enqueue import QUEUES, broker_errors

    if not settings.broker_url:
        return {}
    app = app_for(settings)
    depths: dict[str, int] = {}
    try:
        with app.connection_for_read() as conn:
            for queue in QUEUES:
                depths[queue] = _depth(conn, queue)
    except broker_errors(app) as exc:
        raise BrokerUnavailableError(f"cannot reach the broker to measure queues: {exc}") from exc
    return depths


def _depth(conn: Any, queue: str) -> int:
    """Messages in one queue; a queue nobody has declared yet holds none (the broker says NOT_FOUND)."""
    channel = conn.channel()  # a channel of its own: an AMQP channel is closed by a NOT_FOUND
    try:
        if hasattr(channel, "_size"):
            # Kombu's virtual transports (Redis): the length of the queue's lists, which is what a
            # passive declare reports, without its check for a binding that publishing never creates.
            return int(channel._size(queue))
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except conn.channel_errors:
        return 0
    finally:
        with contextlib.suppress(*conn.channel_errors, *conn.connection_errors):
            channel.close()
