"""Is this deployment working? The database, the broker and the workers of a queue, each asked once
with a deadline, never waited on forever: what `xrq health` prints and the compose healthchecks run.

A worker answers a broadcast from its main process even while its pool processes are busy with a
batch (prefork), so a worker that does not answer is dead, hung or cut off from the broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from worker.settings import BrokerOptions, Settings


@dataclass(frozen=True)
class Check:
    name: str  # database, broker, queue gpu, worker gpu@host
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_database(url: str) -> Check:
    """Connect, and compare the schema with this xrq's (nothing is migrated)."""
    from db.engine import create, schema_state
    from db.errors import DatabaseError

    try:
        engine = create(url)
    except DatabaseError as exc:
        return Check("database", False, str(exc))
    try:
        state = schema_state(engine)
    finally:
        engine.dispose()
    shown = engine.url.render_as_string(hide_password=True)
    if state.state == "up-to-date":
        return Check("database", True, f"{shown} answers, schema revision {state.current}")
    return Check("database", False, f"{shown} answers, but its schema is {state.state} "
                                    f"({state.current or 'no tables'}; this xrq: {state.head}): run `xrq db upgrade`")


FOREIGN_WINDOW = 3600  # seconds: a message of another deployment taken this recently makes health fail


def check_deployment(url: str) -> Check:
    """This database's deployment id, and whether its workers took messages of another deployment lately
    (two deployments on one broker: each leaves the other's messages, but both lose time)."""
    from datetime import timedelta

    from db.deployment import deployment_id, last_foreign
    from db.engine import Database, create
    from db.schema import utcnow

    engine = create(url)
    try:
        db = Database(engine)
        own, foreign = deployment_id(db), last_foreign(db)
    finally:
        engine.dispose()
    if foreign is None:
        return Check("deployment", True, f"{own}; no worker of it has taken a message of another deployment")
    seen = f"last at {foreign.at.isoformat(timespec='seconds')}, by {foreign.worker}, {foreign.count} in all"
    if utcnow() - foreign.at > timedelta(seconds=FOREIGN_WINDOW):
        return Check("deployment", True, f"{own}; a message of deployment {foreign.deployment} was left for its "
                                         f"owner over an hour ago ({seen})")
    return Check("deployment", False, f"{own}, but its workers take messages of deployment {foreign.deployment} "
                                      f"and leave them ({seen}): another database shares this broker. Give each "
                                      "deployment its own Redis database (XRQ_BROKER_URL) or XRQ_BROKER_PREFIX")


def check_broker(settings: Settings, options: BrokerOptions, timeout: float) -> Check:
    from worker.app import app_for
    from worker.enqueue import broker_errors

    if not settings.broker_url:
        return Check("broker", True, "none configured: work runs in-process")
    app = app_for(settings, options)
    shown = _hide(str(app.conf.broker_url))
    errors: tuple[type[BaseException], ...] = (*broker_errors(app), OSError)
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except errors as exc:
        return Check("broker", False, f"{shown} does not answer: {exc}")
    return Check("broker", True, f"{shown} answers")


def check_workers(settings: Settings, options: BrokerOptions, *, queues: Iterable[str] = (),
                  workers: Iterable[str] = (), timeout: float = 2.0) -> list[Check]:
    """One check for each queue (some worker of it answers) and each worker named (it answers)."""
    from worker.app import app_for
    from worker.enqueue import broker_errors

    queues, workers = list(queues), list(workers)
    if not queues and not workers:
        return []
    if not settings.broker_url:
        return [Check(f"queue {q}", False, "no broker configured: there are no workers") for q in queues] + \
               [Check(f"worker {w}", False, "no broker configured: there are no workers") for w in workers]
    app = app_for(settings, options)
    errors: tuple[type[BaseException], ...] = (*broker_errors(app), OSError)
    try:
        replies = app.control.inspect(timeout=timeout, destination=workers or None).active_queues() or {}
    except errors as exc:
        replies, error = {}, f"cannot ask the broker: {exc}"
    else:
        error = f"none answered within {timeout:g} s"
    found = {name: sorted(q["name"] for q in consumed) for name, consumed in replies.items()}
    checks = []
    for queue in queues:
        names = sorted(name for name, consumed in found.items() if queue in consumed)
        checks.append(Check(f"queue {queue}", bool(names),
                            f"{len(names)} worker(s) answer: {', '.join(names)}" if names else error))
    for worker in workers:
        checks.append(Check(f"worker {worker}", worker in found,
                            f"answers, consuming {', '.join(found[worker])}" if worker in found else error))
    return checks


def run_checks(settings: Settings, options: BrokerOptions, *, queues: Iterable[str] = (),
               workers: Iterable[str] = (), timeout: float = 2.0, database: bool = True) -> list[Check]:
    """Every check asked for, in order: database, broker, then queues and workers (if the broker answers)."""
    checks = [check_database(settings.database_url)] if database else []
    if checks and checks[0].ok:
        checks.append(check_deployment(settings.database_url))
    broker = check_broker(settings, options, timeout)
    checks.append(broker)
    if broker.ok:
        checks += check_workers(settings, options, queues=queues, workers=workers, timeout=timeout)
    else:
        checks += [Check(f"queue {q}", False, "the broker does not answer") for q in queues]
        checks += [Check(f"worker {w}", False, "the broker does not answer") for w in workers]
    return checks


def _hide(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))
