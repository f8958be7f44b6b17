"""Celery workers on the real Redis and PostgreSQL, as subprocesses: nothing lost, nothing duplicated.

Each test gets a fresh PostgreSQL database and its own key prefix on the shared Redis (so concurrent
test runs never see each other's messages). Faults are real: SIGKILL, a stopped redis-server, a
database refusing connections, a restarted PostgreSQL cluster of our own. Waits poll the database
or a worker's log with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import cli
from db.schema import JobStudy, Report
from testing.services import PrivatePostgres, PrivateRedis, distinct_copies, wait_for, workers
from tests.conftest import EXAMPLES, service_missing
from worker import runtime
from worker.settings import Settings

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]  # every test spawns workers

SLOW = 120  # generous deadlines on a loaded 2-core machine; a pass takes a fraction of them


def images(folder: Path, count: int) -> Path:
    distinct_copies(sorted(EXAMPLES.glob("*.png")), folder, count)
    return folder


def per_study_reports(url: str, job_id: int) -> dict[int, int]:
    """study id -> number of reports, for every study of the job (0 where none)."""
    with runtime.database(url).session() as s:
        ids = s.scalars(select(JobStudy.study_id).where(JobStudy.job_id == job_id))
        counts = dict(s.execute(select(Report.study_id, func.count()).group_by(Report.study_id)).all())
        return {sid: counts.get(sid, 0) for sid in ids}


def statuses(url: str, job_id: int) -> dict[str, int]:
    with runtime.database(url).session() as s:
        return dict(s.execute(select(JobStudy.status, func.count()).where(JobStudy.job_id == job_id)
                              .group_by(JobStudy.status)).all())


def attempts(url: str, job_id: int) -> list[int]:
    with runtime.database(url).session() as s:
        return list(s.scalars(select(JobStudy.attempts).where(JobStudy.job_id == job_id)))


def all_done(url: str, job_id: int, total: int) -> bool:
    return statuses(url, job_id) == {"done": total}


def assert_exactly_once(url: str, job_id: int, total: int) -> None:
    reports = per_study_reports(url, job_id)
    assert len(reports) == total
    assert set(reports.values()) == {1}, {sid: n for sid, n in reports.items() if n != 1}
    assert statuses(url, job_id) == {"done": total}


def submit(env: dict[str, str], folder: Path, model: Path, *, batch_size: int,
           max_new_tokens: int | None = None) -> int:
    """Record the job and queue it (in this process, as `xrq submit` does); the job id."""
    from worker.dispatch import runner_for
    from worker.submit import submit_folder

    settings = Settings(database_url=env["XRQ_DATABASE_URL"], broker_url=env["XRQ_BROKER_URL"],
                        model=str(model), batch_size=batch_size)
    if max_new_tokens:  # longer reports: a batch slow enough to be caught in the middle
        settings = replace(settings, max_new_tokens=max_new_tokens)
    return submit_folder(settings, folder, runner=runner_for(settings)).job_id


def wait_until_running(url: str, job_id: int) -> None:
    wait_for(lambda: statuses(url, job_id).get("running"), timeout=SLOW, what="a batch to be running")


def succeeded(log: str) -> int:
    return len(re.findall(r"xrq\.generate_batch\[[^]]+\] succeeded", log))


def test_several_workers_report_every_study_exactly_once(
    broker_env: dict[str, str], tiny_model: Path, iu_folder: Path, tmp_path: Path
) -> None:
    distinct_copies(sorted(EXAMPLES.glob("*.png")), iu_folder / "more", 20)  # + the 4 IU studies
    url = broker_env["XRQ_DATABASE_URL"]
    runner = CliRunner()
    with workers(tmp_path, broker_env, 2) as (first, second):
        result = runner.invoke(cli, ["submit", str(iu_folder), "--model", str(tiny_model), "--batch-size", "3",
                                     "--wait", "--json"], env=broker_env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output.strip().splitlines()[-1])
        assert summary["finished"] and summary["counts"]["done"] == 24 and summary["processed"] == 0
        assert_exactly_once(url, summary["job_id"], 24)
        # Both took messages (prefetch is one message per process, so neither can hoard the queue).
        # Two messages of 12 (four batches of 3): 12 of the 21 one-view studies, then the other nine
        # with the two 2-view studies and the 3-view one.
        assert succeeded(first.text()) >= 1 and succeeded(second.text()) >= 1
        assert succeeded(first.text()) + succeeded(second.text()) == 2

        status = runner.invoke(cli, ["status"], env=broker_env, catch_exceptions=False)
        assert status.exit_code == 0, status.output
        assert "workers: 2 alive" in status.output
        assert status.output.count("queues: gpu") == 2


def test_a_pool_process_killed_mid_batch_is_replaced_and_the_batch_redone_once(
    broker_env: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    url = broker_env["XRQ_DATABASE_URL"]
    folder = images(tmp_path / "images", 8)
    with workers(tmp_path, broker_env, 1) as (worker,):
        job = submit(broker_env, folder, tiny_model, batch_size=8, max_new_tokens=150)
        wait_until_running(url, job)
        (child,) = worker.pool_children()
        os.kill(child, 9)
        # Killed inside the batch: claimed (running), nothing written yet.
        assert statuses(url, job) == {"running": 8} and sum(per_study_reports(url, job).values()) == 0
        # Late ack + reject on worker lost: the parent puts the message back, a new child redoes it.
        wait_for(lambda: all_done(url, job, 8), timeout=SLOW, what="the batch to be redone")
        assert "WorkerLostError" in worker.text()
    assert_exactly_once(url, job, 8)
    assert attempts(url, job) == [2] * 8


def test_a_worker_killed_mid_batch_is_taken_over_by_another_after_the_visibility_timeout(
    broker_env: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    url = broker_env["XRQ_DATABASE_URL"]
    env = {**broker_env, "XRQ_VISIBILITY_TIMEOUT": "4"}
    folder = images(tmp_path / "images", 8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with workers(tmp_path / "a", env, 1) as (doomed,):
        job = submit(broker_env, folder, tiny_model, batch_size=8, max_new_tokens=150)
        wait_until_running(url, job)
        doomed.kill_all()  # the whole worker, main process and pool: a machine gone
    assert statuses(url, job) == {"running": 8} and sum(per_study_reports(url, job).values()) == 0
    with workers(tmp_path / "b", env, 1) as (rescuer,):
        # Redis hands the unacknowledged message to the new worker once the visibility timeout passed.
        wait_for(lambda: all_done(url, job, 8), timeout=SLOW, what="another worker to take the batch over")
        assert succeeded(rescuer.text()) >= 1
    assert_exactly_once(url, job, 8)
    assert min(attempts(url, job)) == 2


def test_a_message_delivered_twice_leaves_one_report(
    broker_env: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    from worker.app import app_for
    from worker.tasks import GENERATE_TASK

    url = broker_env["XRQ_DATABASE_URL"]
    folder = images(tmp_path / "images", 12)
    settings = Settings(database_url=url, broker_url=broker_env["XRQ_BROKER_URL"])
    with workers(tmp_path, broker_env, 2) as pair:
        job = submit(broker_env, folder, tiny_model, batch_size=4)
        ids = sorted(per_study_reports(url, job))
        for start in range(0, 12, 4):  # the same studies again in three messages, while the first is in flight
            app_for(settings).send_task(GENERATE_TASK, args=[job, ids[start : start + 4]])
        wait_for(lambda: sum(succeeded(w.text()) for w in pair) == 4, timeout=SLOW,
                 what="all four messages to be processed")
    assert_exactly_once(url, job, 12)


def _set_connections(admin_url: str, database: str, *, allowed: bool) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                         [database])


def test_a_batch_retried_after_a_database_error_leaves_one_report(
    broker_env: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    from tests.conftest import POSTGRES_ADMIN_URL

    url = broker_env["XRQ_DATABASE_URL"]
    database = url.rsplit("/", 1)[1]
    folder = images(tmp_path / "images", 8)
    with workers(tmp_path, broker_env, 1) as (worker,):
        job = submit(broker_env, folder, tiny_model, batch_size=8, max_new_tokens=150)
        wait_until_running(url, job)
        runtime.clear()
        # Mid-batch, the database cuts every connection and refuses new ones: the worker cannot
        # store its results, and retries with backoff until it can.
        _set_connections(POSTGRES_ADMIN_URL, database, allowed=False)
        try:
            wait_for(lambda: "retry: Retry in" in worker.text(), timeout=SLOW, what="the worker to retry")
        finally:
            _set_connections(POSTGRES_ADMIN_URL, database, allowed=True)
        wait_for(lambda: all_done(url, job, 8), timeout=SLOW, what="the retried batch to finish")
    assert_exactly_once(url, job, 8)
    assert min(attempts(url, job)) >= 2


def test_redis_stopped_during_submit_gives_a_clear_error_and_a_recoverable_job(
    postgres_url: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from db import jobs

    redis = PrivateRedis().start()
    env = {"XRQ_DATABASE_URL": postgres_url, "XRQ_BROKER_URL": redis.url}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("XRQ_BROKER_PREFIX", raising=False)
    folder = images(tmp_path / "images", 12)
    args = ["submit", str(folder), "--model", str(tiny_model), "--batch-size", "1"]
    try:
        # Redis dies after the second of three messages (four batches of one each) was accepted.
        sent = jobs.Sender.sent
        calls = []

        def then_stop(self: jobs.Sender) -> None:
            sent(self)
            calls.append(1)
            if len(calls) == 2:
                redis.stop()

        monkeypatch.setattr(jobs.Sender, "sent", then_stop)
        started = time.monotonic()
        result = CliRunner().invoke(cli, args, env=env)
        assert time.monotonic() - started < 30
        assert result.exit_code == 1
        assert f"Error: cannot reach the broker at {redis.url}" in result.output
        assert "Job 1 is recorded and 8 of the 12 studies to send were queued before that; the other 4 are " \
            "as they were" in result.output, result.output
        assert "Traceback" not in result.output
        assert statuses(postgres_url, 1) == {"queued": 8, "pending": 4}

        # Redis is still down: the same submit says so at once and changes nothing.
        monkeypatch.setattr(jobs.Sender, "sent", sent)
        again = CliRunner().invoke(cli, args, env=env)
        assert again.exit_code == 1 and "its 12 unfinished studies are as they were" in again.output, again.output
        assert statuses(postgres_url, 1) == {"queued": 8, "pending": 4}

        # Redis back (empty: the queued messages died with it, so they are sent again), a worker, and
        # the same submit again.
        redis.start()
        with workers(tmp_path, env, 1):
            final = CliRunner().invoke(cli, [*args, "--wait", "--json"], env=env, catch_exceptions=False)
            assert final.exit_code == 0, final.output
            assert json.loads(final.output.strip().splitlines()[-1])["counts"]["done"] == 12
    finally:
        redis.stop()
    assert_exactly_once(postgres_url, 1, 12)


def test_postgres_restarted_during_a_run_the_worker_retries_and_finishes(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_env: dict[str, str]
) -> None:
    try:
        pg = PrivatePostgres().init()
    except (FileNotFoundError, OSError) as exc:
        service_missing("PostgreSQL server binaries", exc)
    try:
        pg.start()
        env = {**broker_env, "XRQ_DATABASE_URL": pg.url}
        monkeypatch.setenv("XRQ_DATABASE_URL", pg.url)
        folder = images(tmp_path / "images", 16)
        with workers(tmp_path, env, 1) as pair:
            job = submit(env, folder, tiny_model, batch_size=4, max_new_tokens=100)
            wait_for(lambda: statuses(pg.url, job).get("done"), timeout=SLOW, what="a first batch to be done")
            runtime.clear()
            pg.stop()  # fast shutdown: every open connection is cut, mid-batch or not
            wait_for(lambda: any("retry: Retry in" in w.text() for w in pair), timeout=SLOW,
                     what="a worker to retry")
            pg.start()
            wait_for(lambda: all_done(pg.url, job, 16), timeout=SLOW, what="the worker to finish the job")
        assert_exactly_once(pg.url, job, 16)
    finally:
        runtime.clear()
        pg.destroy()


def test_a_cpu_worker_runs_evaluations_and_the_backlog(
    broker_env: dict[str, str], tiny_model: Path, iu_folder: Path, tmp_path: Path
) -> None:
    """The cpu queue: `xrq evaluate` and the nightly backlog as Celery tasks, as beat sends them."""
    from db import jobs
    from db.schema import Evaluation
    from model.imaging.scan import scan_folder
    from tests.conftest import IU_CSV
    from worker.app import app_for
    from worker.evaluate import import_iu
    from worker.follow import queue_depths
    from worker.submit import to_study_in
    from worker.tasks import BACKLOG_TASK, EVALUATE_TASK

    url = broker_env["XRQ_DATABASE_URL"]
    settings = Settings.from_env()
    import_iu(settings, IU_CSV / "indiana_reports.csv", None, split_file=IU_CSV / "r2gen_split.csv")
    db = runtime.database(url)
    model_id = runtime.model_id(db, runtime.bundle(str(tiny_model)))
    job = jobs.record_job(db, source=str(iu_folder), model_id=model_id, group_by="auto", batch_size=2,
                          settings={}, studies=[to_study_in(s) for s in scan_folder(iu_folder)]).job_id
    app = app_for(settings)
    with workers(tmp_path, broker_env, 1, "--queues", "cpu"):
        app.send_task(EVALUATE_TASK, kwargs={"baseline": "most-frequent", "split": "test", "with_meteor": False})

        def stored() -> Evaluation | None:
            with db.session() as s:
                return s.scalars(select(Evaluation)).first()

        evaluation = wait_for(stored, timeout=SLOW, what="the evaluation task to store its run")
        assert evaluation.n_studies == 590 and round(evaluation.bleu_4, 3) == 0.081

        app.send_task(BACKLOG_TASK)  # the pending job goes to the gpu queue, where no worker listens
        wait_for(lambda: statuses(url, job) == {"queued": 4}, timeout=SLOW, what="the backlog to queue the job")
        assert queue_depths(settings)["gpu"] == 1  # four studies: one message (two batches of two)
