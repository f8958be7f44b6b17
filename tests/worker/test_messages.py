"""Task messages carry ids, checked against a schema: forged messages are rejected in one log line, never run.

The schema itself (worker/messages.py) without services, then a real worker on the real Redis and
PostgreSQL fed forged messages: a file to read, a folder to write, a job id of 1.5, 200,000 made-up ids.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from testing.services import wait_for, workers
from worker import runtime
from worker.messages import (
    MAX_STUDIES_PER_MESSAGE,
    InvalidMessageError,
    parse_backlog,
    parse_evaluate,
    parse_generate,
)
from worker.settings import Settings

DEPLOYMENT = "0123456789abcdef0123456789abcdef"
SLOW = 120


def test_a_generate_message_is_a_job_id_and_study_ids() -> None:
    message = parse_generate([3, [5, 6]], {"deployment": DEPLOYMENT})
    assert (message.job_id, message.study_ids, message.deployment) == (3, [5, 6], DEPLOYMENT)
    assert parse_generate([], {"job_id": 3, "study_ids": [5]}).deployment is None  # an older sender's


@pytest.mark.parametrize(("args", "kwargs", "reason"), [
    ([1.5, [1]], {}, "job_id 1.5 is not an integer id"),
    ([2.0, [1]], {}, "job_id 2.0 is not an integer id"),
    ([True, [1]], {}, "job_id True is not an integer id"),
    (["2", [1]], {}, "job_id '2' is not an integer id"),
    ([0, [1]], {}, "job_id 0 is out of range"),
    ([2**31, [1]], {}, "job_id 2147483648 is out of range"),
    ([1, [1, 1.5]], {}, "study_ids[] 1.5 is not an integer id"),
    ([1, "1,2"], {}, "study_ids '1,2' is not a list of study ids"),
    ([1, []], {}, "study_ids holds 0 ids"),
    ([1, [4, 4]], {}, "study_ids names a study more than once"),
    ([1, [1], 3], {}, "takes 2 positional argument(s), the message has 3"),
    ([1], {}, "xrq.generate_batch needs study_ids"),
    ([1, [1]], {"job_id": 2}, "got job_id twice"),
    ([1, [1]], {"options": {"max_new_tokens": 9}}, "takes no argument 'options'"),
    ([1, [1]], {"deployment": "../../etc"}, "deployment '../../etc' is not a deployment id"),
])
def test_a_generate_message_that_does_not_fit_is_refused(args: list[Any], kwargs: dict[str, Any],
                                                         reason: str) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        parse_generate(args, kwargs)
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_more_ids_than_submit_sends_are_refused_at_once() -> None:
    start = time.perf_counter()
    with pytest.raises(InvalidMessageError, match="study_ids holds 200,000 ids; a message holds 1 to 32,768"):
        parse_generate([1, list(range(1, 200_001))], {})
    assert time.perf_counter() - start < 0.05
    assert len(parse_generate([1, list(range(1, MAX_STUDIES_PER_MESSAGE + 1))], {}).study_ids) == 32768


def test_submit_never_sends_more_than_a_worker_takes() -> None:
    from worker.pipeline import MAX_STUDIES_PER_MESSAGE as SENT
    from worker.pipeline import message_size
    from worker.settings import MAX_BATCH_SIZE

    assert SENT == MAX_STUDIES_PER_MESSAGE
    assert message_size(MAX_BATCH_SIZE) == message_size(8192) == MAX_STUDIES_PER_MESSAGE
    assert message_size(None) <= MAX_STUDIES_PER_MESSAGE


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"predictions": "/etc/passwd"}, "xrq.evaluate takes no argument 'predictions'"),
    ({"baseline": "most-frequent", "out_dir": "/tmp/x"}, "takes no argument 'out_dir'"),
    ({"baseline": "most-frequent", "id_column": "uid"}, "takes no argument 'id_column'"),
    ({"model": "../models/demo"}, "model '../models/demo' is not a name"),
    ({"job_id": 1.5}, "job_id 1.5 is not an integer id"),
    ({"baseline": "most-frequent", "with_meteor": 1}, "with_meteor 1 is not true or false"),
    ({"baseline": "most-frequent", "split": "train'; drop table"}, "is not one of train, val, test"),
    ({"baseline": "most-frequent", "text": "all"}, "text 'all' is not one of findings, impression, both"),
    ({}, "names exactly one of job_id, model, baseline; this one names none"),
    ({"job_id": 1, "baseline": "most-frequent"}, "this one names job_id, baseline"),
])
def test_an_evaluate_message_takes_no_paths(kwargs: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        parse_evaluate([], kwargs)
    assert reason in str(caught.value)


def test_an_evaluate_and_a_backlog_message_that_fit() -> None:
    message = parse_evaluate([], {"baseline": "most-frequent", "split": "test", "with_meteor": False,
                                  "collection": "iu", "deployment": DEPLOYMENT})
    assert message.options == {"baseline": "most-frequent", "split": "test", "with_meteor": False,
                               "collection": "iu"}
    assert parse_backlog([], {"deployment": DEPLOYMENT}).deployment == DEPLOYMENT
    with pytest.raises(InvalidMessageError, match=r"xrq\.backlog takes 0 positional"):
        parse_backlog([1], {})


def test_a_bad_value_is_quoted_short_and_on_one_line() -> None:
    with pytest.raises(InvalidMessageError) as caught:
        parse_generate(["x" * 1000 + "\n\x1b[31m", [1]], {})
    text = str(caught.value)
    assert "\n" not in text and "\x1b" not in text and len(text) < 120


@pytest.mark.postgres
@pytest.mark.redis
def test_a_worker_rejects_forged_messages_in_one_line_each(
    broker_env: dict[str, str], tiny_model: Path, iu_folder: Path, tmp_path: Path
) -> None:
    """The issue's examples against a real worker: nothing read, nothing written, job 2 untouched, no retry."""
    from db import jobs
    from model.imaging.scan import scan_folder
    from worker.app import app_for
    from worker.enqueue import EVALUATE_TASK, GENERATE_TASK
    from worker.follow import queue_depths
    from worker.submit import to_study_in

    url = broker_env["XRQ_DATABASE_URL"]
    settings = Settings.from_env()
    db = runtime.database(url)
    model_id = runtime.model_id(db, runtime.bundle(str(tiny_model)))
    for job in (1, 2):
        folder = tmp_path / f"job{job}"
        folder.mkdir()
        shutil.copy(sorted(iu_folder.iterdir())[job], folder)
        recorded = jobs.record_job(db, source=str(folder), model_id=model_id, group_by="auto", batch_size=1,
                                   settings={}, studies=[to_study_in(s) for s in scan_folder(folder)])
        assert recorded.job_id == job
    secret = tmp_path / "secret.csv"
    secret.write_text("uid,report\nroot:x:0:0:root,never quoted\n")
    forged = [
        (EVALUATE_TASK, [], {"predictions": str(secret), "split": "test"}),
        (EVALUATE_TASK, [], {"baseline": "most-frequent", "out_dir": str(tmp_path / "written")}),
        (GENERATE_TASK, [1.5, recorded.to_run], {}),
        (GENERATE_TASK, [True, recorded.to_run], {}),
        (GENERATE_TASK, [2, list(range(1, 200_001))], {}),
        (GENERATE_TASK, [2, recorded.to_run], {"max_new_tokens": 1}),
    ]
    app = app_for(settings)
    with workers(tmp_path, broker_env, 1, "--queues", "gpu,cpu") as (worker,):
        start = time.monotonic()
        for name, args, kwargs in forged:
            app.send_task(name, args=args, kwargs=kwargs)
        wait_for(lambda: worker.text().count("rejected message") >= len(forged), timeout=SLOW,
                 what="the worker to reject every forged message")
        elapsed = time.monotonic() - start
        log = worker.text()
        assert queue_depths(settings) == {"gpu": 0, "cpu": 0}  # taken and not put back
    rejections = [line for line in log.splitlines() if "rejected message" in line]
    assert len(rejections) == len(forged), rejections
    assert "Traceback" not in log and "root:x" not in log and "sqlalchemy" not in log.lower()
    assert not (tmp_path / "written").exists()
    assert "retry" not in log.lower()
    assert any("job_id 1.5 is not an integer id" in line for line in rejections)
    assert any("study_ids holds 200,000 ids" in line for line in rejections)
    assert elapsed < 60, elapsed
    with db.session() as s:
        from sqlalchemy import select

        from db.schema import JobStudy
        assert set(s.scalars(select(JobStudy.status))) == {"pending"}  # job 2 (and 1) untouched


def test_made_up_ids_cost_one_query_not_one_claim_per_batch(tmp_path: Path, tiny_model: Path) -> None:
    """The most ids a message may hold, none of them the job's: no batch is planned, nothing claimed."""
    from click.testing import CliRunner
    from sqlalchemy import event

    from cli.main import cli
    from tests.conftest import EXAMPLES
    from worker.tasks import run_batch

    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", folder)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    done = CliRunner().invoke(cli, ["--database-url", url, "submit", str(folder), "--model", str(tiny_model),
                                    "--max-new-tokens", "2", "--batch-size", "1"])
    assert done.exit_code == 0, done.output
    engine = runtime.database(url).engine
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    made_up = list(range(2, MAX_STUDIES_PER_MESSAGE + 2))  # the job's own study is 1 (and done)
    start = time.perf_counter()
    result = run_batch(Settings.from_env({}, database_url=url, model=str(tiny_model)), 1, made_up)
    assert result["claimed"] == 0 and time.perf_counter() - start < 10
    assert sum("job_studies" in s for s in statements) <= 2, statements  # the job's row, one query for the ids
