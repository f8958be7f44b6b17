"""Submitting the same folder again: it does what it says, and with a broker it sends what may be lost, once.

- The settings a resubmission is given are the ones the rest of the job uses (and the change is said).
- Studies that failed for a transient reason are tried again.
- With a broker: queued studies are sent again only when their message may be lost (queued longer
  than XRQ_STUCK_AFTER, or the broker holds no message at all), and two submitters at once send
  each study once. Real Redis, under a key prefix of each test's own.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import select, update

from db import jobs
from db.schema import JobStudy, Report, utcnow
from model.errors import ModelError
from model.inference.engine import Engine
from testing.services import distinct_copies
from tests.conftest import EXAMPLES
from worker import runtime
from worker.settings import Settings
from worker.submit import submit_folder


def test_a_resubmission_uses_its_own_settings_and_says_what_changed(sqlite_url: str, tiny_model: Path,
                                                                    iu_folder: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    first_settings = Settings(database_url=sqlite_url, model=str(tiny_model), num_beams=2, max_new_tokens=3,
                              batch_size=2)
    # The first run breaks on its first batch (out of memory: its two studies fail, retryably).
    real, calls = Engine.drafts, []

    def out_of_memory_once(self: Engine, *args: object, **kwargs: object) -> list[object]:
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Engine, "drafts", out_of_memory_once)
    first = submit_folder(first_settings, iu_folder)
    assert first.summary.counts == {"failed": 2, "done": 2}

    again = submit_folder(Settings(database_url=sqlite_url, model=str(tiny_model), num_beams=1, max_new_tokens=3,
                                   batch_size=4), iu_folder)
    assert (again.job_id, again.created, again.retried, again.ran) == (first.job_id, False, 2, 2)
    assert again.changed == {"batch_size": (2, 4), "num_beams": (2, 1), "search": ("beam", "greedy")}
    assert again.summary.counts == {"done": 4}
    job = jobs.get_job(runtime.database(sqlite_url), first.job_id)
    assert (job.settings["num_beams"], job.batch_size) == (1, 4)  # what the backlog will use from now on
    with runtime.database(sqlite_url).session() as s:
        beams = sorted(settings["num_beams"] for settings in s.scalars(select(Report.settings)))
    assert beams == [1, 1, 2, 2]  # the two retried studies were reported with the new settings

    unchanged = submit_folder(Settings(database_url=sqlite_url, model=str(tiny_model), num_beams=1, max_new_tokens=3,
                                       batch_size=4), iu_folder)
    assert (unchanged.changed, unchanged.retried, unchanged.ran) == ({}, 0, 0)


@pytest.mark.parametrize(("settings", "message"), [
    ({"num_beams": 100_000}, "num_beams must be at most 32, got 100000"),
    ({"num_beams": 32, "batch_size": 1000}, "a batch of 1000 studies with 32 beams is 32000 sequences at once"),
])
def test_settings_that_would_exhaust_memory_are_refused_before_any_work(
    settings: dict[str, int], message: str, sqlite_url: str, tiny_model: Path, iu_folder: Path
) -> None:
    with pytest.raises(ModelError, match=message):
        submit_folder(Settings(database_url=sqlite_url, model=str(tiny_model), max_new_tokens=3, **settings),
                      iu_folder)
    with runtime.database(sqlite_url).session() as s:
        assert s.scalars(select(JobStudy)).first() is None  # nothing recorded, nothing scanned


# ---- with a broker ---------------------------------------------------------------------------------

@pytest.fixture
def broker(broker_env: dict[str, str]) -> Settings:
    return Settings(database_url=broker_env["XRQ_DATABASE_URL"], broker_url=broker_env["XRQ_BROKER_URL"],
                    stuck_after=3600, batch_size=2)


def queued_messages(settings: Settings) -> int:
    from worker.follow import queue_depths

    return queue_depths(settings)["gpu"]


def send(settings: Settings, folder: Path) -> int:
    from worker.dispatch import runner_for

    return submit_folder(settings, folder, runner=runner_for(settings)).job_id


@pytest.mark.redis
@pytest.mark.postgres
def test_a_resubmission_sends_only_what_may_be_lost(broker: Settings, tiny_model: Path, tmp_path: Path) -> None:
    settings = broker.replace(model=str(tiny_model))
    distinct_copies(sorted(EXAMPLES.glob("*.png")), tmp_path / "images", 16)
    job = send(settings, tmp_path / "images")  # no worker listens: 16 studies, 2 messages of 8
    assert queued_messages(settings) == 2
    send(settings, tmp_path / "images")  # the broker holds them: nothing is sent again
    send(settings, tmp_path / "images")
    assert queued_messages(settings) == 2

    db = runtime.database(settings.database_url)
    with db.session() as s:  # half of them queued for longer than XRQ_STUCK_AFTER: their messages may be lost
        old = list(s.scalars(select(JobStudy.study_id).where(JobStudy.job_id == job).order_by(JobStudy.study_id)
                             .limit(8)))
        s.execute(update(JobStudy).where(JobStudy.study_id.in_(old))
                  .values(updated_at=utcnow() - timedelta(hours=2)))
    send(settings, tmp_path / "images")
    assert queued_messages(settings) == 3  # those eight again, in one message


@pytest.mark.redis
@pytest.mark.postgres
def test_a_broker_that_lost_every_message_gets_them_again(broker: Settings, tiny_model: Path,
                                                           tmp_path: Path) -> None:
    import redis

    settings = broker.replace(model=str(tiny_model))
    distinct_copies(sorted(EXAMPLES.glob("*.png")), tmp_path / "images", 8)
    job = send(settings, tmp_path / "images")
    client = redis.Redis.from_url(str(settings.broker_url))
    for key in client.scan_iter(match=f"{os.environ['XRQ_BROKER_PREFIX']}*"):  # Redis restarted, empty
        client.delete(key)
    assert queued_messages(settings) == 0
    send(settings, tmp_path / "images")
    assert queued_messages(settings) == 1
    assert jobs.count_by_status(runtime.database(settings.database_url), job) == {"queued": 8}


@pytest.mark.redis
@pytest.mark.postgres
def test_two_submitters_at_once_send_each_study_once(broker: Settings, tiny_model: Path, tmp_path: Path) -> None:
    settings = broker.replace(model=str(tiny_model), batch_size=1)
    distinct_copies(sorted(EXAMPLES.glob("*.png")), tmp_path / "images", 24)
    runtime.bundle(str(tiny_model), settings.device)  # loaded once, before the race
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def submitter() -> None:
        try:
            barrier.wait(timeout=30)
            send(settings, tmp_path / "images")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submitter) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert queued_messages(settings) == 6  # 24 studies, 4 to a message, each sent once


def test_a_resubmission_that_queued_studies_says_so_even_once_they_are_done() -> None:
    """`submit --wait` again on a job with pending studies: they are queued, workers finish them, and the
    final summary has nothing waiting; it used to read "nothing new to do"."""
    from datetime import datetime

    from cli.output import submission_json, submission_text
    from db.queries import JobSummary
    from worker.pipeline import RunResult, Timings
    from worker.submit import Submission

    final = JobSummary(3, "/data", "tiny", datetime(2026, 1, 1, tzinfo=UTC), {"done": 5})
    again = Submission(3, False, 0, final, Timings(), 5, RunResult(queued=2), local=False)
    text = submission_text(again, 1.0)
    assert text.splitlines()[:2] == [
        "Submitted again as job 3: what is left is done with this submission's settings.",
        "  queued 2 studies that were still to do (never sent, or their message lost)"]
    assert submission_json(again, 1.0)["queued"] == 2
    idle = Submission(3, False, 0, final, Timings(), 5, RunResult(), local=False)
    assert submission_text(idle, 1.0).startswith("Already submitted as job 3: nothing new to do.")
