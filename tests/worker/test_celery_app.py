"""The Celery app's configuration, the task body without a broker, `xrq worker`'s checks, compose.

Everything here runs without Redis: the settings that make the distributed path safe are asserted
directly, and the task body is run in-process on a real SQLite file with the tiny model.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cli.main import cli
from db import jobs
from model.imaging.scan import scan_folder
from tests.conftest import REPO, service_missing
from worker import runtime
from worker.app import make_app
from worker.errors import ModelMismatchError, SettingsError
from worker.runtime import job_generation
from worker.settings import BrokerOptions, Settings
from worker.submit import to_study_in
from worker.tasks import GENERATE_TASK, backoff, run_batch


def test_the_app_accepts_json_only_acknowledges_late_and_prefetches_one() -> None:
    app = make_app(Settings(broker_url="redis://example:6379/0"),
                   BrokerOptions(visibility_timeout=7200, broker_prefix="site-a:"))
    conf = app.conf
    assert (conf.task_serializer, conf.result_serializer, conf.event_serializer) == ("json",) * 3
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 7200
    assert conf.broker_transport_options["global_keyprefix"] == "site-a:"
    assert conf.task_ignore_result and conf.result_backend is None
    assert {q.name for q in conf.task_queues} == {"gpu", "cpu"} and conf.task_default_queue == "cpu"
    assert app.amqp.router.route({}, GENERATE_TASK)["queue"].name == "gpu"
    task = app.tasks[GENERATE_TASK]
    assert task.acks_late and task.reject_on_worker_lost


def test_kombus_sqlalchemy_broker_connects_and_polls_promptly(tmp_path: Path) -> None:
    """The bench host's broker (no Redis there): a queue on a SQLite file, polled every 50 ms."""
    app = make_app(Settings(broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}"), BrokerOptions())
    with app.connection_for_write() as connection:
        with connection.SimpleQueue("probe") as queue:
            queue.put({"n": 1})
            assert queue.get(timeout=60).payload == {"n": 1}
        assert connection.transport.polling_interval == 0.05
    assert (tmp_path / "broker.db").exists()


def test_broker_options_come_from_the_environment_and_bad_values_are_named() -> None:
    assert BrokerOptions.from_env({}) == BrokerOptions()
    opts = BrokerOptions.from_env({"XRQ_VISIBILITY_TIMEOUT": "600", "XRQ_TASK_MAX_RETRIES": "0"})
    assert (opts.visibility_timeout, opts.task_max_retries) == (600, 0)
    with pytest.raises(SettingsError, match="XRQ_VISIBILITY_TIMEOUT must be a whole number"):
        BrokerOptions.from_env({"XRQ_VISIBILITY_TIMEOUT": "1h"})


def test_retries_back_off_exponentially_with_jitter_up_to_a_cap() -> None:
    for retries in range(12):
        wait = backoff(retries, 60)
        cap = min(60, 2**retries)
        assert cap / 2 <= wait <= cap


def test_a_job_is_generated_with_the_settings_it_was_submitted_with() -> None:
    stored = {"num_beams": 3, "max_new_tokens": 20, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
              "search": "beam"}
    gen = job_generation(stored)
    assert (gen.num_beams, gen.max_new_tokens) == (3, 20)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["worker"], {}, "Error: xrq worker needs a broker: set XRQ_BROKER_URL"),
    (["beat"], {}, "Error: xrq beat needs a broker: set XRQ_BROKER_URL"),
    (["worker", "--queues", "gpu,video"], {"XRQ_BROKER_URL": "redis://x"}, "Error: unknown queue video"),
    (["worker", "--device", "gpu0"], {"XRQ_BROKER_URL": "redis://x"}, "Error: device 'gpu0' is not one of"),
])
def test_xrq_worker_refuses_settings_it_cannot_use(args: list[str], env: dict[str, str], message: str) -> None:
    result = CliRunner().invoke(cli, args, env={"XRQ_BROKER_URL": None, **env})
    assert result.exit_code == 1
    assert message in result.output, result.output


def _record(url: str, folder: Path, fingerprint: str, path: str | None) -> tuple[int, list[int]]:
    db = runtime.database(url)
    model_id = jobs.upsert_model(db, name="tiny", fingerprint=fingerprint, path=path, meta={})
    record = jobs.record_job(db, source=str(folder), model_id=model_id, group_by="auto", batch_size=8,
                             settings={"num_beams": 1, "max_new_tokens": 5},
                             studies=[to_study_in(s) for s in scan_folder(folder)])
    return record.job_id, record.to_run


def test_a_worker_finds_the_jobs_model_by_its_recorded_path(
    sqlite_url: str, tiny_model: Path, iu_folder: Path
) -> None:
    fingerprint = runtime.bundle(str(tiny_model), "cpu").fingerprint
    job_id, ids = _record(sqlite_url, iu_folder, fingerprint, str(tiny_model))
    done = run_batch(Settings(database_url=sqlite_url, device="cpu"), job_id, ids)  # no XRQ_MODEL
    assert (done["claimed"], done["reported"]) == (4, 4)
    again = run_batch(Settings(database_url=sqlite_url, device="cpu"), job_id, ids)  # a redelivery
    assert (again["claimed"], again["reported"]) == (0, 0)
    assert jobs.count_by_status(runtime.database(sqlite_url), job_id) == {"done": 4}


def test_a_worker_with_other_weights_refuses_the_job_instead_of_reporting_with_them(
    sqlite_url: str, tiny_model: Path, iu_folder: Path
) -> None:
    job_id, ids = _record(sqlite_url, iu_folder, "f" * 64, None)
    with pytest.raises(ModelMismatchError, match=r"no copy of model tiny \(fingerprint ffffffffffff\)"):
        run_batch(Settings(database_url=sqlite_url, model=str(tiny_model), device="cpu"), job_id, ids)
    assert jobs.count_by_status(runtime.database(sqlite_url), job_id) == {"pending": 4}


def test_docker_compose_has_the_services_and_shared_volumes() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "worker", "beat", "cli"} <= set(services)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert services["cli"]["profiles"] == ["cli"]
    for name in ("worker", "beat", "cli", "cpu-worker"):
        volumes = services[name]["volumes"]  # HOST:/data/...[:ro]; HOST may hold ${VAR:-default}
        for path in ("/data/images", "/data/models"):
            assert any(f":{path}" in v for v in volumes), (name, path)
    assert (REPO / ".env.example").is_file() and (REPO / "Dockerfile").is_file()


COMPOSE_ENV = {"POSTGRES_PASSWORD": "p", "REDIS_PASSWORD": "r", "FLOWER_BASIC_AUTH": "ops:secret",
               "XRQ_SECRET_KEY": "k",
               "XRQ_DATABASE_URL": "postgresql://xrq:p@postgres:5432/xrq", "XRQ_BROKER_URL": "redis://:r@redis:6379/0"}


def test_docker_compose_is_fit_for_a_real_site() -> None:
    """Passwords without defaults, ports on 127.0.0.1, healthchecks by `xrq health`, Flower on xrq's app."""
    text = (REPO / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    assert "--requirepass" in services["redis"]["command"]
    assert ":-xrq}" not in text and "${POSTGRES_PASSWORD:?" in text  # no default password anywhere
    for name in ("redis", "postgres", "flower", "review"):
        assert all(p.startswith("${XRQ_BIND:-127.0.0.1}:") for p in services[name]["ports"]), name
    for name, queue in (("worker", "gpu"), ("cpu-worker", "cpu")):
        assert f"{queue}@%h" in services[name]["command"]
        assert f"xrq health --worker {queue}@$$HOSTNAME" in services[name]["healthcheck"]["test"][1]
    assert services["flower"]["command"][:3] == ["celery", "--app", "worker.app"]
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert any(v.startswith("beat-data:") for v in services["beat"]["volumes"])
    assert "/var/lib/xrq/celerybeat-schedule" in services["beat"]["command"]
    listener = services["listener"]  # the DICOM listener shares the inbox with the workers
    assert listener["command"][:2] == ["xrq", "listen"] and listener["profiles"] == ["dicom"]
    assert all(p.startswith("${XRQ_BIND:-127.0.0.1}:") for p in listener["ports"])
    for name in ("worker", "cpu-worker", "listener"):
        assert "inbox:/data/inbox" in services[name]["volumes"], name


def _compose() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file_and_refuses_it_without_passwords() -> None:
    """`docker compose config` where the plugin is installed, else Debian's docker-compose (CI installs it)."""
    import os

    cmd = _compose()
    if cmd is None:
        service_missing("docker compose", FileNotFoundError("neither `docker compose` nor `docker-compose`"))
        return
    args = [*cmd, "-f", str(REPO / "docker-compose.yml"), "--profile", "cli", "config", "-q"]
    bare = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO, env={**bare, **COMPOSE_ENV})
    assert done.returncode == 0, done.stderr
    refused = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO, env=bare)
    assert refused.returncode != 0 and "in .env" in refused.stderr + refused.stdout


def test_the_app_for_command_line_tools_has_no_connection_pool_limit() -> None:
    """Flower runs `worker.app`; a pool of 4 deadlocks its eight parallel inspections (see worker/app.py)."""
    from worker.app import app

    assert app.conf.broker_pool_limit is None
    assert make_app(Settings(broker_url="redis://x")).conf.broker_pool_limit == 4  # `xrq submit`'s stays small


@pytest.mark.redis
def test_queue_depth_counts_what_no_worker_has_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the real Redis, under a key prefix of its own; a queue never used counts as empty."""
    import uuid

    import redis

    from worker.app import app_for
    from worker.follow import queue_depths

    prefix = f"xrq-test-{uuid.uuid4().hex[:8]}:"
    monkeypatch.setenv("XRQ_BROKER_PREFIX", prefix)
    settings = Settings(broker_url="redis://127.0.0.1:6379/0")
    try:
        redis.Redis(socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        service_missing("Redis", exc)
    try:
        assert queue_depths(settings) == {"gpu": 0, "cpu": 0}
        app = app_for(settings)
        for _ in range(3):
            app.send_task(GENERATE_TASK, args=[1, [1]])
        assert queue_depths(settings) == {"gpu": 3, "cpu": 0}
    finally:
        client = redis.Redis()
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
