"""Messages know their deployment: two databases sharing one Redis database never swap work.

Deployment A (PostgreSQL) and deployment B (a SQLite file) on the same broker, same key prefix, a mistake
operators make. B's worker takes A's message, leaves it for A and says so in its log and in `xrq health`;
A's worker then reports the study, once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import cli
from db.deployment import deployment_id
from db.schema import JobStudy, Report
from testing.services import wait_for, workers
from tests.conftest import EXAMPLES
from worker import runtime
from worker.settings import Settings

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SLOW = 120


def statuses(url: str, job_id: int) -> dict[str, int]:
    with runtime.database(url).session() as s:
        return dict(s.execute(select(JobStudy.status, func.count()).where(JobStudy.job_id == job_id)
                              .group_by(JobStudy.status)).all())


def test_each_database_has_its_own_deployment_id(tmp_path: Path) -> None:
    first, second = (runtime.database(f"sqlite:///{tmp_path / name}") for name in ("a.db", "b.db"))
    ids = {deployment_id(first), deployment_id(second)}
    assert len(ids) == 2 and all(len(i) == 32 for i in ids)
    assert deployment_id(first) == deployment_id(first)  # stored, not made again


def test_a_worker_of_another_database_leaves_the_message_for_its_owner(
    broker_env: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    from worker.dispatch import runner_for
    from worker.submit import submit_folder

    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", folder)
    url_a = broker_env["XRQ_DATABASE_URL"]
    env_b = {**broker_env, "XRQ_DATABASE_URL": f"sqlite:///{tmp_path / 'other.db'}"}
    settings_a = Settings(database_url=url_a, broker_url=broker_env["XRQ_BROKER_URL"], model=str(tiny_model),
                          batch_size=1, max_new_tokens=2)
    job = submit_folder(settings_a, folder, runner=runner_for(settings_a)).job_id
    own_a = runtime.deployment(url_a)
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    with workers(tmp_path / "b", env_b, 1, "--queues", "gpu") as (worker_b,):
        wait_for(lambda: "left message" in worker_b.text(), timeout=SLOW, what="B's worker to leave A's message")
        assert statuses(url_a, job) == {"queued": 1}  # not done, not failed: waiting for its owner
        health = CliRunner().invoke(cli, ["health"], env=env_b)
        assert health.exit_code == 1
        words = " ".join(health.output.split())
        assert "deployment FAIL" in words and f"take messages of deployment {own_a} and leave them" in words
        assert "another database shares this broker" in words
        with workers(tmp_path / "a", broker_env, 1, "--queues", "gpu") as (worker_a,):
            wait_for(lambda: statuses(url_a, job) == {"done": 1}, timeout=SLOW, what="A's worker to report it")
            log_a = worker_a.text()
        log_b = worker_b.text()
    with runtime.database(url_a).session() as s:
        assert s.scalar(select(func.count()).select_from(Report)) == 1
    left = [line for line in log_b.splitlines() if "left message" in line]
    assert len(left) == 1, left  # logged once a minute per deployment, however often it comes back
    assert f"it belongs to deployment {own_a}" in left[0] and "XRQ_BROKER_PREFIX" in left[0]
    assert "Traceback" not in log_b and "Traceback" not in log_a
    with runtime.database(env_b["XRQ_DATABASE_URL"]).session() as s:
        assert s.scalar(select(func.count()).select_from(Report)) == 0
    ok_a = CliRunner().invoke(cli, ["health"], env=broker_env)
    assert ok_a.exit_code == 0 and "no worker of it has taken a message of another deployment" in ok_a.output
